"""The offload engine: runs any torch ``nn.Module`` under one of PinStream's modes.

``offload(module, mode=...)`` discovers the model's repeated blocks, packs every
weight into pinned host memory (one copy: the original storage is released), and
drives the native runtime from forward hooks (:mod:`pinstream.hooks`); the
:class:`~pinstream.handle.OffloadHandle` it returns loads, unloads, replans, reports
and detaches. It never imports ComfyUI.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from . import calibrate
from . import modes as _modes
from . import pin_cap
from .discovery import BlockDiscovery, discover_blocks, format_bytes, storage_tensors
from .handle import OffloadHandle
from .modes import ResolvedMode
from .native import load_native
from .paths import exact_cache_dir  # noqa: F401 (part of the engine's API)
from .paths import spill_dir as _spill_dir
from .wrappers import wrapper_slots

GIB = 1024**3

# Default emulated link of the host engine when none is given: a PCIe 4.0 x16
# link's typical pinned host-to-device rate.
DEFAULT_HOST_LINK_GBPS = 25.0

# offload() policy per mode
_POLICY = {"full_load": "all_resident", "model_offload": "all_resident", "sequential": "stream_all",
           "budget": "budget"}


spill_dir = _spill_dir  # offload()'s argument of the same name shadows it there

_CACHE_WARNED: set = set()  # cache directories already reported as not writable


def _host_budget(host_budget_gb, *, pin_cap: int, model_bytes: int, largest_block: int, prefetch: int) -> int:
    """Host bytes of weights the model may hold (-1: no limit). Explicit, or else what the
    pinning cap leaves, less the pinned read ring, when the model is larger than that."""
    if host_budget_gb is not None:
        return int(_modes.check_host_budget_gb(host_budget_gb) * GIB)
    if pin_cap < 0 or model_bytes <= pin_cap:
        return -1  # RAM will do: nothing goes to disk
    return max(0, pin_cap - _modes.read_ring_bytes(prefetch, largest_block))


def _file_sources(paths: Sequence[str], units: list, name_of: dict) -> list:
    """Per unit, per tensor: (file index, byte offset) where a weight of that name, dtype and
    shape is stored in one of the model's own safetensors ``paths``, else (-1, 0). Names
    match whole (a file key equal to the weight's name, or ending in "." + it, when only one
    key does). The runtime checks the bytes before it reads from there."""
    from .safetensors_header import read_tensors

    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
              torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
    by_suffix: dict = {}
    for i, path in enumerate(paths):
        for t in read_tensors(path)[0]:
            parts = t.name.split(".")
            for k in range(len(parts)):
                by_suffix.setdefault(".".join(parts[k:]), []).append((i, t))
    out = []
    for ts in units:
        row = []
        for t in ts:
            found = by_suffix.get(name_of.get(id(t), ""), [])
            exact = [f for f in found if f[1].name == name_of.get(id(t))]
            found = exact or found
            if len(found) == 1 and found[0][1].dtype == dtypes.get(t.dtype) and found[0][1].shape == tuple(t.shape):
                row.append((found[0][0], found[0][1].offset))
            else:
                row.append((-1, 0))
        out.append(row)
    return out


def handle_of(module: nn.Module) -> OffloadHandle | None:
    """The live handle of a module offloaded by PinStream, else None."""
    h = getattr(module, "_pinstream_handle", None)
    return h if h is not None and not h.detached else None


def _tensors_of(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of ``module`` (recursively), each once."""
    out, seen = [], set()
    for t in list(module.parameters(recurse=True)) + list(module.buffers(recurse=True)):
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        out.append(t)
    return out


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _storage_of(tensors) -> list[torch.Tensor]:
    """The plain tensors PinStream registers for ``tensors``: each tensor itself, or the
    inner tensors of a wrapper subclass (ComfyUI's QuantizedTensor), each once."""
    out, seen = [], set()
    for t in tensors:
        for x in storage_tensors(t):
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


def _model_device(module: nn.Module) -> torch.device:
    for t in _tensors_of(module):
        return t.device
    return torch.device("cpu")


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise _modes.ModeError(f"device {device!r} is not a torch device ({e}); use 'cuda', 'cuda:N' or 'cpu'") from None
    if dev.type not in ("cuda", "cpu"):
        raise _modes.ModeError(f"device {device!r} is not supported; use 'cuda', 'cuda:N' or 'cpu'")
    return dev


def _free_device_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return 8 * GIB


def _resolve_mode(mode, budget_gb, *, free_device_bytes, model_bytes, discovery: BlockDiscovery,
                  host_ram_bytes, prefetch, coding=None) -> ResolvedMode:
    """``coding``: called when auto streams with transfer_dtype auto, returns whether to
    send the weights compressed and why (pinstream.calibrate.choose_compressed)."""
    requested = mode
    name, transfer = _modes.normalize_mode(mode)
    if name == "auto":
        env = _modes.env_default_mode()
        if env is not None:
            env_name, env_transfer = env
            if env_name != "auto":
                budget = None
                if env_name == "budget":
                    if budget_gb is None:
                        raise _modes.ModeError("GPU_MEMORY_MODE=budget needs a budget (budget_gb)")
                    budget = int(budget_gb * GIB)
                import os

                return ResolvedMode(env_name, requested, f"GPU_MEMORY_MODE={os.environ['GPU_MEMORY_MODE']}",
                                    budget, env_transfer)
        choice = _modes.choose_auto(
            free_device_bytes=free_device_bytes if budget_gb is None else int(budget_gb * GIB),
            model_bytes=model_bytes,
            largest_block_bytes=discovery.largest_block_bytes,
            nonblock_bytes=discovery.nonblock_bytes,
            host_ram_bytes=host_ram_bytes,
            prefetch=prefetch,
            has_blocks=discovery.has_blocks,
        )
        reason = "auto: " + choice.reason
        if transfer == "auto" and choice.mode in ("sequential", "budget") and coding is not None:
            # compressed moves about a third fewer bytes but decodes on the copy queue: auto
            # codes only where the measured rates make the copy queue faster with it
            use, why = coding()
            reason += "; " + why
            if use:
                transfer = "compressed"
        return ResolvedMode(choice.mode, requested, reason, choice.budget_bytes, transfer)
    if name == "budget":
        if budget_gb is None:
            raise _modes.ModeError("mode 'budget' needs budget_gb (the VRAM budget in GiB, > 0)")
        budget = int(budget_gb * GIB)
        return ResolvedMode("budget", requested, f"budget {format_bytes(budget)} requested", budget, transfer)
    if name in ("sequential", "budget") and not discovery.has_blocks:
        return ResolvedMode("model_offload", requested, discovery.message or "no repeated blocks", None, transfer)
    return ResolvedMode(name, requested, f"{name} requested", None, transfer)


def _units(module: nn.Module, discovery: BlockDiscovery, all_tensors: list):
    """The units registered with the runtime: each block's tensors, then everything else
    (non-block and tied tensors) as one always-resident unit; and each tensor's name for
    error messages (a wrapper subclass's inner tensors: its name and theirs)."""
    shared = set()
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(dict(module.named_buffers(remove_duplicate=False)))
    for name in discovery.shared_params:
        for alias in discovery.shared_aliases.get(name, [name]):
            if alias in named:
                shared.update(id(x) for x in storage_tensors(named[alias]))
    unit_tensors: list[list[torch.Tensor]] = []
    in_block = set()
    for _name, block in discovery.blocks:
        ts = [t for t in _storage_of(_tensors_of(block)) if id(t) not in shared and id(t) not in in_block]
        in_block.update(id(t) for t in ts)
        unit_tensors.append(ts)
    rest = [t for t in all_tensors if id(t) not in in_block]
    name_of: dict[int, str] = {}
    for name, t in named.items():
        if t is None:
            continue
        for x in storage_tensors(t):
            name_of.setdefault(id(x), name if x is t else f"{name} (inner tensor)")
    return unit_tensors, rest, name_of


def _engine_kind(engine: str, dev: torch.device) -> str:
    if engine not in ("auto", "cuda", "host"):
        raise _modes.ModeError(f"engine must be auto, cuda or host; got {engine!r}")
    kind = engine if engine != "auto" else ("cuda" if dev.type == "cuda" else "host")
    if kind == "cuda" and dev.type != "cuda":
        raise _modes.ModeError(f"engine 'cuda' needs a cuda device, got {dev}")
    return kind


def _wrappers_by_unit(module: nn.Module, unit_tensors: list) -> dict:
    """Wrapper-subclass weights by the unit their inner tensors are in (None: the rest)."""
    unit_of = {id(t): i for i, ts in enumerate(unit_tensors) for t in ts}
    wrappers: dict = {}
    for slot in wrapper_slots(module):
        units = {unit_of.get(x) for x in slot.inner_ids}
        wrappers.setdefault(units.pop() if len(units) == 1 else None, []).append(slot)
    return wrappers


def _warn_about_host_memory(st: dict, model_bytes: int) -> None:
    if st.get("cache_error") and st["cache_dir"] not in _CACHE_WARNED:
        _CACHE_WARNED.add(st["cache_dir"])
        warnings.warn(f"PinStream: the coded-weights cache cannot be written ({st['cache_error']}); coding goes on in "
                      f"memory and is done again at the next offload. Set PINSTREAM_CACHE_DIR to a writable local "
                      f"directory, or to an empty value to turn the cache off.", RuntimeWarning, stacklevel=3)
    if st.get("spill_error"):
        warnings.warn(f"PinStream: blocks meant for disk stay in RAM: {st['spill_error']}. Free space in the spill "
                      f"directory or point PINSTREAM_SPILL_DIR at a local disk with room.", RuntimeWarning,
                      stacklevel=3)
    if st.get("disk_blocks"):
        warnings.warn(
            f"PinStream: {st['disk_block_bytes'] / GIB:.2f} GiB of {model_bytes / GIB:.2f} GiB live on disk "
            f"({st['disk_blocks']} blocks beyond the host budget of {st['host_budget_bytes'] / GIB:.2f} GiB, in "
            f"{st['spill_path']}, read {st['disk_how']}); they stream from there each time they are needed.",
            RuntimeWarning, stacklevel=3)
    if st["pageable_bytes"] > 0:
        warnings.warn(
            f"PinStream: {st['pageable_bytes'] / GIB:.2f} GiB of {model_bytes / GIB:.2f} GiB could not be pinned "
            f"({', '.join(st['pin_how'])}); those uploads are synchronous and slower. Raise the pinning cap "
            f"(PINSTREAM_PIN_CAP_GB) or the memlock limit (ulimit -l) to pin it all.",
            RuntimeWarning, stacklevel=3)


def offload(
    module: nn.Module,
    mode: str = "auto",
    budget_gb: float | None = None,
    prefetch: int = 1,
    device=None,
    engine: str = "auto",
    *,
    blocks: Sequence[str] | None = None,
    transfer_dtype: str = "auto",  # "fp8_e4m3" (lossy) or "compressed" (exact coded form)
    pin_memory: bool = True,
    link_gbps: float | None = None,
    latency_us: float = 0.0,
    free_device_bytes: int | None = None,
    host_ram_bytes: int | None = None,
    device_capacity_bytes: int = 0,
    chunk_bytes: int = 256 << 20,
    progress: Callable[[int, int], None] | None = None,
    timing: bool = True,
    pin_cap_bytes: int | None = None,
    load: bool = True,
    cache_dir: str | None = None,
    host_budget_gb: float | None = None,
    spill_dir: str | None = None,
    source_files: Sequence[str] | str | None = None,
    adaptive_prefetch: bool = True,
) -> OffloadHandle:
    """Run ``module`` under a PinStream mode; returns an :class:`OffloadHandle`.

    mode          auto | full_load | model_offload | sequential | budget (or a
                  GPU_MEMORY_MODE alias: model_full_load, model_cpu_offload,
                  sequential_cpu_offload)
    budget_gb     VRAM budget in GiB for ``budget`` (and a cap for ``auto``)
    prefetch      blocks uploaded ahead of the one running (>= 0)
    device        'cuda', 'cuda:N' or 'cpu' (default: cuda when available)
    engine        auto | cuda | host; ``host`` emulates the device in host memory
                  (CPU machines, tests) with a link of ``link_gbps`` GB/s
    blocks        explicit block module names, overriding discovery
    free_device_bytes, host_ram_bytes
                  override what ``auto`` sees (planning for another machine, tests)
    pin_cap_bytes most host bytes this model may pin; the rest stays pageable. Default:
                  what the process-wide cap leaves (:func:`pinstream.pin_cap.available_pin_bytes`),
                  i.e. PINSTREAM_PIN_CAP_GB, else 95% of RAM on Linux and 45% on Windows (like
                  ComfyUI), less what the other live PinStream models have pinned
    load          full_load: upload the model now (False: at its first use, or load())
    cache_dir     compressed: where coded tensors are cached on local disk, so offloading the
                  same weights again codes nothing (default: PINSTREAM_CACHE_DIR, else
                  $XDG_CACHE_HOME/pinstream/exact or ~/.cache/pinstream/exact; "" turns it off)
    host_budget_gb
                  most GiB of this model's weights held in host RAM (the disk tier): blocks beyond
                  it live in a spill file and stream disk -> pinned read ring -> device, the
                  blocks kept resident on the device first (they need no host copy). Default: no
                  limit while the model fits in the pinning cap left for it (``pin_cap_bytes``,
                  else what the process's cap leaves), else that share less the read ring; an
                  explicit budget above the cap keeps the rest in RAM, unpinned
    adaptive_prefetch
                  the look-ahead of a streaming model follows the measured per-block upload (and
                  disk read) time against its compute, at each load, at most ``prefetch`` (the
                  cap): fewer slots where uploads keep up, so a VRAM budget keeps more blocks
                  resident. False keeps exactly ``prefetch``
    source_files  the safetensors file(s) the module's weights were loaded from: a block on disk
                  whose weights are there as stored (same name, dtype, shape and bytes, checked
                  once) is read from there, with no copy written; others go to a spill file
    spill_dir     where spill files go (default: PINSTREAM_SPILL_DIR, else
                  $XDG_CACHE_HOME/pinstream/spill or ~/.cache/pinstream/spill); local disk
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"PinStream: offload() needs a torch nn.Module, got {type(module).__name__}")
    settings = {k: v for k, v in locals().items() if k not in ("module", "progress")}
    prefetch = _modes.check_prefetch(prefetch)
    budget_gb = _modes.check_budget_gb(budget_gb)
    if transfer_dtype not in _modes.TRANSFER_DTYPES:
        raise _modes.ModeError(f"transfer_dtype must be one of {', '.join(_modes.TRANSFER_DTYPES)}; got {transfer_dtype!r}")
    dev = _resolve_device(device)
    engine_kind = _engine_kind(engine, dev)
    _C = load_native()
    if handle_of(module) is not None:
        raise RuntimeError("PinStream: this module is already offloaded; call handle.detach() first")

    # Blocks holding at least a fifth of the weights are worth streaming.
    discovery = discover_blocks(module, names=list(blocks) if blocks is not None else None, min_fraction=0.2)
    outer_tensors = _tensors_of(module)
    all_tensors = _storage_of(outer_tensors)  # wrapper subclasses: their inner tensors
    model_bytes = sum(_tensor_bytes(t) for t in all_tensors)
    original_device = _model_device(module)
    if free_device_bytes is None:
        free_device_bytes = _free_device_bytes(dev)
    if host_ram_bytes is None:
        host_ram_bytes = pin_cap.host_ram_bytes()
    link = float(link_gbps if link_gbps is not None else (DEFAULT_HOST_LINK_GBPS if engine_kind == "host" else 0.0))

    def coding():
        ratio = calibrate.coded_ratio(all_tensors)
        if ratio is None:  # nothing to code: no need to measure
            return calibrate.choose_compressed(None, None)
        return calibrate.choose_compressed(ratio, calibrate.rates(dev, engine_kind, link))

    resolved = _resolve_mode(mode, budget_gb, free_device_bytes=free_device_bytes, model_bytes=model_bytes,
                             discovery=discovery, host_ram_bytes=host_ram_bytes, prefetch=prefetch, coding=coding)
    if transfer_dtype != "auto":
        resolved.transfer_dtype = transfer_dtype
    fp8 = resolved.transfer_dtype == "fp8_e4m3"
    coded = resolved.transfer_dtype == "compressed"
    if fp8 and not discovery.has_blocks:
        raise _modes.ModeError("transfer_dtype 'fp8_e4m3' applies to a model's blocks, and this model has none; "
                               "use transfer_dtype 'auto'")
    unit_tensors, rest, name_of = _units(module, discovery, all_tensors)
    wrapped = {id(x) for t in outer_tensors if is_traceable_wrapper_subclass(t) for x in storage_tensors(t)}
    requires_grad = {t: t.requires_grad for t in outer_tensors if isinstance(t, nn.Parameter)}

    cap = int(pin_cap_bytes if pin_cap_bytes is not None else pin_cap.available_pin_bytes())
    # the pinning cap left for this model also bounds its RAM, unless a budget is given;
    # what the other models hold counts whether they could pin it or not
    left = [v for v in (cap, pin_cap.available_host_bytes()) if v >= 0]  # -1: no cap
    host_budget = _host_budget(host_budget_gb, pin_cap=min(left) if left else -1, model_bytes=model_bytes,
                               largest_block=discovery.largest_block_bytes, prefetch=prefetch)
    # with a known pinning cap, blocks may go to disk later too (when another model runs:
    # see OffloadHandle._follow_ram), so the spill directory is known; it is measured for
    # the way to read it only once blocks live on disk from the start
    spill = _spill_dir(spill_dir) if host_budget >= 0 or cap >= 0 else ""
    try:
        reads = calibrate.disk_reads(spill) if spill and host_budget >= 0 else None
    except OSError:
        reads = None  # a directory that cannot be used: the runtime says why and keeps the model in RAM
    rt = _C.Runtime(
        pin_cap_bytes=cap,
        disk_direct=reads.direct if reads else True,
        disk_why=reads.why if reads else "",
        disk_io_uring=reads.io_uring if reads else False,
        host_budget_bytes=host_budget,
        spill_dir=spill,
        read_ahead=_modes.READ_AHEAD,
        adaptive_prefetch=bool(adaptive_prefetch),
        device=str(dev),
        engine=engine_kind,
        prefetch=prefetch,
        link_gbps=link,
        latency_us=float(latency_us),
        device_capacity_bytes=int(device_capacity_bytes),
        pin_mode="auto" if pin_memory else "pageable",
        chunk_bytes=int(chunk_bytes),
        timing=timing,
        cache_dir=exact_cache_dir(cache_dir) if coded else "",
    )
    handle = None
    try:
        # Layout -> plan -> pack: the runtime plans from the packed layout, then pins
        # (within the cap) what that plan uploads most often first: streamed blocks every
        # pass, then resident blocks and the non-block part (once). All or nothing: a
        # failure leaves every weight where it was. fp8 transfer (opt-in, lossy): blocks
        # cross the link as e4m3 codes with per-row scales and are dequantized on the device.
        # compressed (exact): every unit, the non-block part too, is held and sent in the
        # exact coded form only; wrapper-subclass weights (their inner tensors) stay as stored.
        coded_units = [coded and not any(id(t) in wrapped for t in ts) for ts in unit_tensors + [rest]]
        one = isinstance(source_files, (str, bytes, os.PathLike))
        files = [os.fspath(f) for f in ([source_files] if one else source_files or [])] if spill else []
        sources = _file_sources(files, unit_tensors + [rest], name_of) if files else []
        ids = rt.register_blocks(unit_tensors + [rest], [True] * len(unit_tensors) + [False], progress,
                                 [fp8] * len(unit_tensors) + [False],
                                 [[name_of.get(id(t), "") for t in ts] for ts in unit_tensors + [rest]],
                                 policy=_POLICY[resolved.name],
                                 budget_bytes=int(resolved.budget_bytes) if resolved.name == "budget" else -1,
                                 prefetch=prefetch, exact=coded_units, source_files=files, sources=sources)
        where = {id(t): (ids[u], k) for u, ts in enumerate(unit_tensors + [rest]) for k, t in enumerate(ts)}
        handle = OffloadHandle(
            module, mode=resolved, runtime=rt, discovery=discovery, block_ids=ids[:-1], fixed_id=ids[-1],
            wrappers=_wrappers_by_unit(module, unit_tensors), device=dev, original_device=original_device, prefetch=prefetch,
            model_bytes=model_bytes, plan=rt.current_plan(), original_requires_grad=requires_grad,
            settings=settings,
        )
        handle._where = where
        handle._coded_units = {ids[u] for u, c in enumerate(coded_units) if c}
        handle._host_budget_given = None if host_budget_gb is None else host_budget
        handle._refresh_apart()
        # the units that may be held apart: coded ones, and with a spill directory any (the disk tier)
        units = set(ids) if spill else handle._coded_units
        if units:
            handle._install_apart_state_dict(units)
        if resolved.name == "full_load" and load:
            handle._load_with_retry()
    except BaseException:
        if handle is not None:
            handle._hooks.remove()
        rt.close(restore_pageable=True)
        raise
    _warn_about_host_memory(rt.stats(), model_bytes)
    try:
        module._pinstream_handle = handle  # the module owns its handle
    except Exception:  # noqa: BLE001 - a module that refuses attributes still works
        pass
    pin_cap.track(handle)
    return handle


def stall_percent(stall_ms: float, wall_ms: float) -> float:
    import math

    if wall_ms <= 0 or not math.isfinite(wall_ms):
        return 0.0
    return max(0.0, min(100.0, 100.0 * stall_ms / wall_ms))
