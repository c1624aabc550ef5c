"""PinStream's ModelPatcher: ComfyUI's memory manager sees true figures, PinStream moves the weights.

A PinStream patcher wraps the same nn.Module as the core patcher it replaces. What it
changes:

* ``model_size()``      the bytes this model will hold on the device under its mode
                        (the whole model for full_load/model_offload; non-block part +
                        resident blocks + ring for sequential/budget), so
                        ``load_models_gpu``/``free_memory`` free the right amount;
* ``loaded_size()``     the bytes it holds on the device now;
* ``load``/``partially_load``   apply weight patches (LoRA) to the pinned host copy when
                        they changed, then load the PinStream plan;
* ``partially_unload``/``detach``/``unpatch_model``   free the device copy by re-pointing
                        weights at the pinned host copy: no device-to-host copy;
* pinning is PinStream's: ComfyUI's ``pin_weight_to_device`` is a no-op here.

State shared by all clones (the handle, the config, which weight patches are applied)
lives on the nn.Module, like ComfyUI's own per-module bookkeeping. ``clone()`` keeps
the class (ComfyUI builds clones with ``self.__class__``).
"""

from __future__ import annotations

import logging
import sys
import weakref
from dataclasses import dataclass, field

import torch

log = logging.getLogger("PinStream")

GIB = 1024**3

_MANAGED: weakref.WeakSet[PinStreamState] = weakref.WeakSet()


@dataclass
class OffloadConfig:
    mode: str = "auto"
    vram_budget_gb: float = 0.0  # 0 = none (auto decides from free VRAM)
    prefetch_blocks: int = 1
    pin_memory: bool = True
    transfer_dtype: str = "auto"
    label: str = "model"
    ram_budget_gb: float = 0.0  # host RAM for the weights (the disk tier); 0 = automatic
    # the safetensors file(s) a loader read the weights from: blocks on disk whose weights are
    # there as stored are read from there (no spill copy written)
    source_files: tuple = ()

    def host_budget_gb(self) -> float | None:
        """pinstream.offload's host_budget_gb: None (automatic: what the pinning cap leaves) for 0."""
        return float(self.ram_budget_gb) if self.ram_budget_gb and self.ram_budget_gb > 0 else None


@dataclass(eq=False)
class PinStreamState:
    """Per nn.Module: shared by every clone of a PinStream patcher."""

    config: OffloadConfig
    handle: object = None
    applied_patches: str | None = None  # patches_uuid whose LoRA is in the host copy
    backups: dict = field(default_factory=dict)  # key -> original host values
    owner: object = None  # weakref to the patcher that loaded it
    last_stats: dict = field(default_factory=dict)
    error: str | None = None
    engine: str = "auto"  # the engine the handle was made with (an fp8 handle is rebuilt with it)

    def __hash__(self):
        return id(self)


class UnsupportedModel(ValueError):
    """Weights PinStream cannot manage (the node passes the model through and says why)."""


def managed_states() -> list:
    return [s for s in list(_MANAGED) if s.handle is not None]


def target_module(model: torch.nn.Module) -> torch.nn.Module:
    """The part PinStream manages: the diffusion model of a BaseModel, else the module."""
    return getattr(model, "diffusion_model", None) or model


def unsupported_reason(module: torch.nn.Module) -> str | None:
    """Why PinStream cannot manage these weights (None when it can). Managed: plain
    tensors (fp8 included), wrapper subclasses that flatten to plain tensors (ComfyUI
    0.8+'s QuantizedTensor for scaled fp8 / fp4 files) and subclasses that keep their data
    in an ordinary storage (ComfyUI-GGUF's GGMLTensor: the quantized bytes, with the
    format as Python attributes, which PinStream leaves on the same object). Not managed:
    tensors without storage (meta, or a subclass that hides it)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if is_traceable_wrapper_subclass(p):
            continue
        if p.device.type == "meta":
            return f"weight {name} is on the meta device (not loaded); load the model's weights first"
        if type(p) in (torch.Tensor, torch.nn.Parameter):
            continue
        try:
            storage = torch.Tensor.untyped_storage(p)
            real = p.numel() == 0 or (storage.data_ptr() != 0
                                      and storage.nbytes() >= p.numel() * p.element_size())
        except Exception:  # noqa: BLE001 - any subclass that cannot show its storage
            real = False
        if not real:
            return (f"weight {name} is a {type(p).__name__}, a tensor subclass whose data is not in an ordinary "
                    "storage; PinStream manages plain tensors (fp8 included), ComfyUI's QuantizedTensor and "
                    "GGUF's GGMLTensor")
    return None


def _is_ggml(weight) -> bool:
    """A ComfyUI-GGUF quantized weight (GGMLTensor with a quantized tensor_type):
    its LoRA patches ride along as ``weight.patches`` and apply at dequantization."""
    try:
        import gguf
    except ImportError:
        return False
    tt = getattr(weight, "tensor_type", None)
    return tt is not None and tt not in (None, gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)


def _module_function(cls, name: str):
    """``name`` from the module of the first class in ``cls``'s MRO whose module has it
    (a custom node's helper beside its patcher class), else None."""
    for c in cls.__mro__:
        fn = getattr(sys.modules.get(c.__module__), name, None)
        if fn is not None:
            return fn
    return None


def _comfy():
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    return mm, mp


_PATCHING = "pinstream:patching"  # applied_patches while weight patches are being written


def restore_host_originals(st: PinStreamState, model) -> bool:
    """Unload and put the original values back into the host copy of every weight a
    weight patch (LoRA) changed; the host copy then holds the weights as loaded.
    Returns whether any weight was put back."""
    from comfy.model_patcher import get_key_weight

    h = st.handle
    h.unload()
    restored = bool(st.backups)
    coded = {}
    with torch.no_grad():
        for key, original in st.backups.items():
            weight, _set, _conv = get_key_weight(model, key)
            if original is None:  # a GGUF weight: its patches were attached, not written
                weight.patches = []
                continue
            if h.stored_apart(weight):
                coded[weight] = original  # its only host copy is coded: coded again below
                continue
            weight.copy_(original)  # a QuantizedTensor copies its data and scale in place
    if coded:
        h.write_host_values(coded)
    st.backups.clear()
    st.applied_patches = None
    return restored


def _offload_args(config: OffloadConfig, *, mode: str, budget_gb, free=None) -> dict:
    """How a node's configuration calls pinstream.offload (besides module, device, engine)."""
    # host_budget_gb is always given, None included: a rebuilt handle must not keep an earlier one
    return dict(mode=mode, budget_gb=budget_gb, prefetch=int(config.prefetch_blocks),
                pin_memory=bool(config.pin_memory), transfer_dtype=config.transfer_dtype, free_device_bytes=free,
                host_budget_gb=config.host_budget_gb())


def _offload(module, config: OffloadConfig, *, mode: str, budget_gb, load_device, engine: str,
             free=None, progress=None):
    """A new handle; nothing goes to the device until ComfyUI asks for it."""
    import pinstream
    from pinstream.pin_cap import available_pin_bytes

    handle = pinstream.offload(
        module,
        device=str(torch.device(load_device)),
        engine=engine,
        link_gbps=0.0 if engine == "host" else None,
        progress=progress,
        pin_cap_bytes=available_pin_bytes(comfy_pinned_bytes()),
        load=False,
        # (a new handle only: a rebuild keeps the files of the handle it replaces)
        **({"source_files": [str(f) for f in config.source_files]} if config.source_files else {}),
        **_offload_args(config, mode=mode, budget_gb=budget_gb, free=free),
    )
    handle._settings["pinned_elsewhere"] = comfy_pinned_bytes()
    return handle


def comfy_pinned_bytes() -> int:
    """Host memory ComfyUI itself has pinned for its own models (model_management's
    TOTAL_PINNED_MEMORY, 0.3.7x and newer): PinStream's pinning cap leaves room for it, so
    the two together stay within one cap."""
    mm = sys.modules.get("comfy.model_management")
    if mm is None or getattr(mm, "MAX_PINNED_MEMORY", 0) <= 0:
        return 0
    try:
        return max(0, int(getattr(mm, "TOTAL_PINNED_MEMORY", 0)))
    except (TypeError, ValueError):
        return 0


class PinStreamPatcherMixin:
    """Methods that turn a ModelPatcher (or a subclass of it) into a PinStream patcher."""

    # ---- state -------------------------------------------------------------------
    @property
    def pinstream(self) -> PinStreamState:
        return self.model.pinstream_state

    def _handle(self):
        return self.pinstream.handle

    def clone(self, *args, **kwargs):
        # Some patchers (ComfyUI-GGUF's) force their own class onto the clone; keep ours.
        n = super().clone(*args, **kwargs)
        adopt(n)
        return n

    def _extra_modules(self):
        """Parameters/buffers of the wrapped model outside the PinStream target."""
        target = target_module(self.model)
        if target is self.model:
            return []
        inside = {id(t) for t in list(target.parameters()) + list(target.buffers())}
        return [t for t in list(self.model.parameters()) + list(self.model.buffers()) if id(t) not in inside]

    def _extra_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._extra_modules())

    # ---- sizes the memory manager sees -----------------------------------------------
    def model_size(self):
        h = self._handle()
        if h is None:
            return super().model_size()
        plan = h.plan
        return int(plan["device_bytes"]) + self._extra_bytes()

    def loaded_size(self):
        h = self._handle()
        if h is None:
            return super().loaded_size()
        if not h.loaded:
            return 0
        return h.device_bytes + (self._extra_bytes() if self.model.device == self.load_device else 0)

    def current_loaded_device(self):
        return self.model.device

    # ---- host memory, for releases whose memory manager budgets RAM and pins ----------
    def pinned_memory_size(self):
        h = self._handle()
        return h.pinned_bytes if h is not None else 0

    def loaded_ram_size(self):
        h = self._handle()
        return h.host_bytes if h is not None else 0

    def get_ram_usage(self):
        # What the model holds in host memory (the RAM cache weighs it): PinStream keeps a
        # host copy of every weight, plus the non-block part while it is unloaded.
        h = self._handle()
        if h is None or h.detached:
            return super().get_ram_usage()
        return h.host_bytes + self._extra_bytes()

    def partially_unload_ram(self, *args, **kwargs):
        # The pinned copy is the model's only host copy: it is released with the model.
        return 0

    def is_dynamic(self):
        return False

    # ---- pinning is PinStream's --------------------------------------------------------
    def pin_weight_to_device(self, *args, **kwargs):
        return None

    def unpin_weight(self, *args, **kwargs):
        return None

    def unpin_all_weights(self, *args, **kwargs):
        return None

    # ---- weight patches (LoRA) into the pinned host copy ------------------------------
    def _patch_state(self):
        return self.patches_uuid if self.patches else None

    def _apply_weight_patches(self):
        """Bring the host copy to this patcher's weight patches: restore the previous
        originals, then compute each patched weight exactly as ComfyUI's
        patch_weight_to_device does (fp32 on the load device, stochastic rounding
        seeded by the key) and write it into the pinned host copy."""
        st = self.pinstream
        want = self._patch_state()
        if st.applied_patches == want:
            return
        import comfy.float
        import comfy.lora
        import comfy.utils
        from comfy.model_patcher import get_key_weight, string_to_seed

        mm, _ = _comfy()
        changed = restore_host_originals(st, self.model)  # unloads: weights point at their host copy
        # until every patch is written the host copy matches no patcher (a failure half
        # way must not pass for the plain weights or for another clone's)
        st.applied_patches = _PATCHING
        h = st.handle
        coded = {}  # weights held in the exact coded form: their new values, coded at the end
        with torch.no_grad():
            move_patches = _module_function(type(self), "move_patch_to_device")  # ComfyUI-GGUF's
            for key in self.patches:
                try:
                    weight, set_func, convert_func = get_key_weight(self.model, key)
                except AttributeError:
                    continue
                if _is_ggml(weight):
                    # as ComfyUI-GGUF's patcher does: the patches (on the offload device unless
                    # patch_on_device) travel with the weight and apply when it is dequantized
                    patches = self.patches[key]
                    if move_patches is not None:
                        patches = move_patches(patches, self.load_device if getattr(self, "patch_on_device", False)
                                               else self.offload_device)
                    weight.patches = [(patches, key)]
                    st.backups[key] = None
                    continue
                apart = h.stored_apart(weight)
                # a coded weight's values, decoded on the host (a new tensor): its backup too
                current = h.host_value(weight) if apart else weight
                st.backups[key] = current if apart else weight.detach().clone()
                temp_dtype = (mm.lora_compute_dtype(self.load_device) if hasattr(mm, "lora_compute_dtype")
                              else torch.float32)
                temp = mm.cast_to_device(current, self.load_device, temp_dtype, copy=True)
                if convert_func is not None:
                    temp = convert_func(temp, inplace=True)
                out = comfy.lora.calculate_weight(self.patches[key], temp, key)
                new = None
                if set_func is not None:
                    # the op stores weights its own way (scaled fp8, QuantizedTensor): let it
                    # make the stored form, as ComfyUI does, and copy that in place
                    try:
                        new = set_func(out, seed=string_to_seed(key), return_weight=True)
                    except TypeError:  # an op whose set_weight cannot return the weight
                        new = None
                if new is None:
                    new = comfy.float.stochastic_rounding(out, weight.dtype, seed=string_to_seed(key))
                if apart:
                    coded[weight] = new
                else:
                    weight.copy_(new.to(weight.device))
            if coded:
                h.write_host_values(coded)
        if st.handle.mode.transfer_dtype == "fp8_e4m3" and (changed or st.backups):
            # The fp8 transfer codes are made from the host copy when a handle is built:
            # rebuild it, so the blocks stream the patched weights.
            st.handle = st.handle.rebuild()
        st.applied_patches = want

    # ---- hook weight patches (CreateHookLora, scheduled LoRA) -------------------------
    # ComfyUI writes them into the weights in place and restores them from its own
    # backup. Where every weight has its own device memory (full_load, model_offload) it
    # does so on the device, as without PinStream. Streamed weights live in reused device
    # slots (and fp8-transfer blocks show the host copy between uses), so there PinStream
    # drops its device copy first: the writes land in the host copy, and the next forward
    # uploads them.
    def _host_copy_for_hooks(self, hooks=None):
        h = self._handle()
        if h is None or not h.loaded:
            return
        if not h.streams_blocks and h.mode.transfer_dtype == "auto":
            return
        if self.hook_backup or (hooks is not None and self.get_combined_hook_patches(hooks=hooks)):
            h.unload()

    def _device_copy_for_hooks(self, hooks) -> None:
        """Where every weight has its own device memory, hook patches go to the device copy
        as ComfyUI writes them (and come out of it again): a model ComfyUI unloaded between
        two batches is loaded first, so the patches never land in the host copy, which the
        later unpatch on the device copy would not restore."""
        h = self._handle()
        if (h is not None and not h.loaded and hooks is not None and not h.streams_blocks
                and h.mode.transfer_dtype == "auto" and self.get_combined_hook_patches(hooks=hooks)):
            h.load()

    def _refuse_hooks_on_coded(self, hooks) -> None:
        h = self._handle()
        if (h is not None and h.mode.transfer_dtype == "compressed" and hooks is not None
                and self.get_combined_hook_patches(hooks=hooks)):
            raise ValueError("PinStream: hook LoRA (Create Hook LoRA, scheduled LoRA) on a model held in the exact "
                             "coded form (transfer_dtype compressed) is not supported: its weights have no plain host "
                             "copy for ComfyUI to patch in place. Use transfer_dtype auto for this model, or a LoRA "
                             "loader (LoraLoader), which works with compressed")

    def patch_hooks(self, hooks):
        self._refuse_hooks_on_coded(hooks)
        self._device_copy_for_hooks(hooks)
        self._host_copy_for_hooks(hooks)
        return super().patch_hooks(hooks)

    def unpatch_hooks(self, *args, **kwargs):
        self._host_copy_for_hooks()
        return super().unpatch_hooks(*args, **kwargs)

    # ---- loading ------------------------------------------------------------------------
    def _load_pinstream(self, device_to=None):
        st = self.pinstream
        self._apply_weight_patches()  # may rebuild the handle (fp8 transfer)
        h = st.handle
        device_to = device_to or self.load_device
        for t in self._extra_modules():
            t.data = t.data.to(device_to)
        h.load()
        st.owner = weakref.ref(self)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = self.loaded_size()
        self.model.model_lowvram = False
        self.model.lowvram_patch_counter = 0
        self.model.current_weight_patches_uuid = self.patches_uuid
        return self.model.model_loaded_weight_memory

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if self._handle() is None:
            return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load)
        with self.use_ejected():
            self._load_pinstream(device_to)
        try:
            from comfy.patcher_extension import CallbacksMP

            for cb in self.get_all_callbacks(CallbacksMP.ON_LOAD):
                cb(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
        except ImportError:
            pass

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        if self._handle() is None:
            return super().partially_load(device_to, extra_memory, force_patch_weights)
        before = self.loaded_size() if self._handle().loaded else 0
        # Object patches and injections as ComfyUI applies them, weights by PinStream.
        # First put back the object patches another clone of this model applied (they
        # share one backup), as ComfyUI's own partially_load does; weights stay loaded.
        super().unpatch_model(self.offload_device, unpatch_weights=False)
        self.patch_model(device_to, load_weights=False)
        self._fit_to_allowance(before, extra_memory)
        try:
            with self.use_ejected():
                self._load_pinstream(device_to)
        except Exception:
            self.detach()  # as ComfyUI does: nothing stays half loaded on the device
            raise
        return max(0, self.loaded_size() - before)

    def _fit_to_allowance(self, loaded: int, extra_memory) -> None:
        """ComfyUI's memory manager lets a model hold ``loaded + extra_memory`` bytes for
        the coming run (less when a larger latent needs room for activations; 1e32 for no
        limit). A full_load or budget plan shrinks to that, and grows back to the plan the
        node made when the room is there again."""
        h = self._handle()
        allowed = None if extra_memory >= 1e30 else max(0, int(loaded + extra_memory) - self._extra_bytes())
        if h.fit_device_bytes(allowed):
            log.info("PinStream %s: %s", self.pinstream.config.label, h.mode.reason)
            self.model.model_loaded_weight_memory = 0

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        h = self._handle()
        if h is None:
            return super().partially_unload(device_to, memory_to_free, force_patch_weights)
        freed = self.loaded_size()
        # As ComfyUI's own does when it moves patched weights: hook weight patches come
        # out first (their backups go back in), so the next run applies them again
        # instead of finding current_hooks still set on weights that no longer have them.
        if self.hook_backup:
            self.unpatch_hooks()
        h.unload()
        for t in self._extra_modules():
            t.data = t.data.to(self.offload_device)
        self.model.device = self.offload_device
        self.model.model_loaded_weight_memory = 0
        return freed

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        h = self._handle()
        if h is None:
            return super().unpatch_model(device_to, unpatch_weights)
        if unpatch_weights and self.hook_backup:
            self.unpatch_hooks()  # hook weight patches out of the host copy
        owner = self.pinstream.owner() if self.pinstream.owner is not None else None
        if owner is None or owner is self:
            h.unload()
            for t in self._extra_modules():
                t.data = t.data.to(device_to or self.offload_device)
            self.model.device = device_to or self.offload_device
            self.model.model_loaded_weight_memory = 0
        # Object patches are restored by ComfyUI's own code; weights stay PinStream's.
        return super().unpatch_model(device_to, unpatch_weights=False)

    def pinstream_stats(self) -> dict:
        return collect_stats(self.pinstream)


def disk_note(handle) -> str:
    """The disk tier in a node's one-line plan: "; N blocks (X GiB) on disk ..." when some
    of the model lives in its spill file, what kept blocks meant for disk in RAM, else ""."""
    s = handle.stats()
    note = ""
    if s.get("disk_blocks"):
        src, total = s.get("source_block_bytes", 0), s["disk_block_bytes"]
        where = ("read from the model's own file" if src >= total else
                 f"{src / GIB:.2f} GiB read from the model's own file, the rest in a spill file" if src else
                 "in a spill file")
        note = (f"; {s['disk_blocks']} blocks ({total / GIB:.2f} GiB) on disk beyond the host budget "
                f"of {s['host_budget_bytes'] / GIB:.2f} GiB, {where}")
    if s.get("spill_error"):
        note += f"; blocks meant for disk stay in RAM: {s['spill_error']}"
    return note


def _since(s: dict, run: dict, key: str):
    """A counter's growth since the last report (all of it when the handle was made since)."""
    now, then = s.get(key, 0), run.get(key, 0)
    return now - then if now >= then else now


def collect_stats(st: PinStreamState) -> dict:
    h = st.handle
    if h is None:
        return {"label": st.config.label, "mode": "passthrough", "reason": st.error or "not managed"}
    s = h.stats()
    run = st.last_stats or {}
    upload_ms = s.get("upload_ms", 0.0) - run.get("upload_ms", 0.0)
    uploaded = s.get("bytes_uploaded", 0) - run.get("bytes_uploaded", 0)
    timed = s.get("timed_upload_bytes", 0) - run.get("timed_upload_bytes", 0)
    stall = s.get("stall_ms", 0.0) - run.get("stall_ms", 0.0)
    # disk reads of the last run: those of loads and forward passes (disk_bytes), per pass;
    # the rate is every byte read (host_value reads too) over the reader's busy time
    disk_bytes, passes = _since(s, run, "disk_bytes"), _since(s, run, "passes")
    busy_ms = _since(s, run, "disk_busy_ms")
    disk_gbps = _since(s, run, "disk_bytes_total") / (busy_ms * 1e6) if busy_ms > 0 else s.get("disk_gbps", 0.0)
    return {
        "label": st.config.label,
        "mode": h.mode.name,
        "reason": h.mode.reason,
        "resident_bytes": s.get("resident_bytes", 0),
        "streamed_bytes": s.get("streamed_bytes", 0),
        "bytes_streamed_last_run": uploaded,
        "upload_gbps": (timed / (upload_ms * 1e6)) if upload_ms > 0 else 0.0,
        "stall_ms_last_run": stall,
        "pinned_bytes": s.get("pinned_bytes", 0),
        "pageable_bytes": s.get("pageable_bytes", 0),
        "device_bytes": s.get("device_bytes", 0),
        "engine": s.get("engine", "?"),
        "transfer_dtype": h.mode.transfer_dtype,
        "fp8_max_abs_error": s.get("fp8_max_abs_error", 0.0),
        "fp8_mean_abs_error": s.get("fp8_mean_abs_error", 0.0),
        "coded_ratio": s.get("exact_ratio", 1.0),
        "resident_coded_bytes": s.get("resident_coded_bytes", 0),
        "coded_tensors": s.get("exact_coded_tensors", 0),
        "stored_tensors": s.get("exact_stored_tensors", 0),
        "stored_why": dict(s.get("exact_skips", {})),
        "decode_ms_last_run": s.get("transform_ms", 0.0) - run.get("transform_ms", 0.0),
        "decode_gbps": s.get("decode_gbps", 0.0),
        "cache_dir": s.get("cache_dir", ""),
        "cache_hits": s.get("cache_hits", 0),
        "cache_stored": s.get("cache_stored", 0),
        "cache_rebuilt": s.get("cache_rebuilt", 0),
        "cache_error": s.get("cache_error", ""),
        # the disk tier: blocks beyond the host budget live in a spill file
        "host_budget_bytes": s.get("host_budget_bytes", -1),
        "disk_blocks": s.get("disk_blocks", 0),
        "disk_block_bytes": s.get("disk_block_bytes", 0),
        "disk_over_bytes": s.get("disk_over_bytes", 0),
        "source_block_bytes": s.get("source_block_bytes", 0),
        "source_note": s.get("source_note", ""),
        "spill_path": s.get("spill_path", ""),
        "spill_bytes": s.get("spill_bytes", 0),
        "spill_error": s.get("spill_error", ""),
        "disk_how": s.get("disk_how", ""),
        "read_ring_bytes": s.get("read_ring_bytes", 0),
        "disk_bytes_last_run": disk_bytes,
        "disk_steps_last_run": passes,
        "disk_bytes_per_step": disk_bytes / passes if passes else 0.0,
        "disk_wait_ms_last_run": _since(s, run, "disk_wait_ms"),
        "disk_gbps": disk_gbps,
        # blocks moved between RAM and disk in the last run (RAM follows the model that runs)
        "ram_moves_last_run": _since(s, run, "ram_moves"),
        "ram_to_disk_bytes_last_run": _since(s, run, "ram_to_disk_bytes"),
        "ram_to_ram_bytes_last_run": _since(s, run, "ram_to_ram_bytes"),
        "ram_move_ms_last_run": _since(s, run, "ram_move_ms"),
    }


_CLASS_CACHE: dict = {}


def pinstream_class(base_cls):
    """A subclass of ``base_cls`` (ModelPatcher or a custom-node subclass of it) with
    PinStream's overrides first in the MRO."""
    if issubclass(base_cls, PinStreamPatcherMixin):
        return base_cls
    cls = _CLASS_CACHE.get(base_cls)
    if cls is None:
        cls = type(f"PinStream{base_cls.__name__}", (PinStreamPatcherMixin, base_cls), {})
        _CLASS_CACHE[base_cls] = cls
    return cls


def adopted_patchers(model) -> weakref.WeakSet:
    """The patchers of ``model`` that go through PinStream (weakly: a patcher ComfyUI drops
    leaves by itself): the one handed to PinStream, the ones ComfyUI held loaded then, and
    every clone made of them since."""
    s = model.__dict__.get("pinstream_patchers")
    if s is None:
        s = weakref.WeakSet()
        model.__dict__["pinstream_patchers"] = s
    return s


def adopt(patcher) -> None:
    """``patcher`` goes through PinStream from now on (its class gains PinStream's methods;
    clones keep them)."""
    if not isinstance(patcher, PinStreamPatcherMixin):
        patcher.__class__ = pinstream_class(type(patcher))
    adopted_patchers(patcher.model).add(patcher)


def make_pinstream(patcher, config: OffloadConfig, *, progress=None, engine: str = "auto"):
    """Return a PinStream clone of ``patcher`` (patches, options and callbacks kept).

    Raises ValueError (with what to do) when the weights cannot be managed; callers
    turn that into a pass-through with a message. A model PinStream already manages gets
    the new configuration by replacing its handle; if that fails, it keeps running as it
    was (the error is raised).
    """
    mm, _mp_mod = _comfy()
    if hasattr(patcher, "is_dynamic") and patcher.is_dynamic():
        delegate = getattr(patcher, "get_non_dynamic_delegate", None)
        if delegate is None:
            raise UnsupportedModel("this model is managed by ComfyUI's Dynamic VRAM and offers no non-dynamic delegate; "
                                   "load it with a PinStream loader or start ComfyUI with --disable-dynamic-vram")
        try:
            patcher = delegate()
        except Exception as e:  # noqa: BLE001 - e.g. a model built without the recipe to rebuild it
            raise UnsupportedModel(f"this model is managed by ComfyUI's Dynamic VRAM and its non-dynamic copy "
                                   f"could not be made ({e}); load it with a PinStream loader or start ComfyUI "
                                   "with --disable-dynamic-vram") from None
    from pinstream.modes import normalize_mode

    module = target_module(patcher.model)
    reason = unsupported_reason(module)
    if reason:
        raise UnsupportedModel(reason)
    # ComfyUI may hold this model loaded, through this patcher or a clone, with its weight
    # patches applied in place: unload it, so the weights PinStream takes are the file's.
    held = _unload_from_memory_manager(mm, patcher.model)
    mode, _transfer = normalize_mode(config.mode)
    load_device = patcher.load_device
    dev = torch.device(load_device)
    if engine == "auto":
        engine = "cuda" if dev.type == "cuda" else "host"
    budget = config.vram_budget_gb if config.vram_budget_gb and config.vram_budget_gb > 0 else None
    free = None
    if mode == "auto":
        if budget is not None:
            free = int(budget * GIB)
        elif dev.type == "cuda":
            free = int(mm.get_free_memory(dev)) - int(mm.minimum_inference_memory())
    budget_gb = budget if mode in ("budget", "auto") else None
    state = getattr(patcher.model, "pinstream_state", None)
    if state is not None and state.handle is not None and not state.handle.detached:
        # Already managed: the new configuration replaces the old one, starting from the
        # weights as loaded (the previous clone's LoRA must not stay in them). The old
        # handle stays until the new one is made; if that fails, the model is offloaded
        # again as it was, and stays managed.
        restore_host_originals(state, patcher.model)
        from pinstream import handle_of

        try:
            handle = state.handle.rebuild(progress=progress,
                                          **_offload_args(config, mode=mode, budget_gb=budget_gb, free=free))
        except BaseException:
            state.handle = handle_of(module)
            state.error = None if state.handle is not None else "re-offload failed"
            raise
    else:
        handle = _offload(module, config, mode=mode, budget_gb=budget_gb, load_device=load_device,
                          engine=engine, free=free, progress=progress)
    state = PinStreamState(config=config, handle=handle, engine=engine)
    patcher.model.pinstream_state = state
    # Every patcher of this model PinStream can name goes through it from now on: the
    # clone returned, the one passed in (its other uses in the workflow), the patchers it
    # was cloned from (the loader's output, on other branches), and the ones ComfyUI held
    # loaded. A clone made before of one of these and idle since cannot be named: if it
    # is used, the forward finds the weights moved and says so.
    for p in [*_lineage(patcher), *held]:
        adopt(p)
    new = patcher.clone()
    _MANAGED.add(state)
    plan = handle.plan
    log.info("PinStream %s: mode %s (%s); %s", config.label, handle.mode.name, handle.mode.reason, plan["describe"])
    return new


def _lineage(patcher) -> list:
    """``patcher`` and the patchers it was cloned from (ComfyUI's ``parent``), of the same
    model."""
    out, seen = [], set()
    while patcher is not None and id(patcher) not in seen and getattr(patcher, "model", None) is not None:
        seen.add(id(patcher))
        out.append(patcher)
        parent = getattr(patcher, "parent", None)
        patcher = parent if getattr(parent, "model", None) is patcher.model else None
    return out


def _unload_from_memory_manager(mm, model) -> list:
    """Unload every entry of ComfyUI's loaded-model list that holds ``model`` (its
    patcher puts the weights it patched in place back as they were loaded); returns those
    patchers."""
    loaded = getattr(mm, "current_loaded_models", None)
    held = []
    if not loaded:
        return held
    for i in reversed(range(len(loaded))):
        entry = loaded[i]
        p = entry.model
        if p is not None and getattr(p, "model", None) is model:
            entry.model_unload()
            loaded.pop(i)
            held.append(p)
    return held
