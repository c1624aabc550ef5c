"""The offload engine: runs any torch ``nn.Module`` under one of PinStream's modes.

``offload(module, mode=...)`` discovers the model's repeated blocks, packs every
weight into pinned host memory (one copy: the original storage is released), and
drives the native runtime from forward hooks:

* root pre-hook        ``begin_pass``  (learning the block order on the first pass)
* block pre-hook       ``acquire(i)``  compute waits for block i's upload; the next
                                         ``prefetch`` blocks are queued on the copy queue
* block post-hook      ``release(i)``  (runs even when the block raises)
* root post-hook       ``end_pass``    (runs even when the forward raises)

It never imports ComfyUI.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from . import modes as _modes
from .discovery import BlockDiscovery, discover_blocks, format_bytes, storage_tensors
from .native import load_native

GIB = 1024**3

# Default emulated link of the host engine when none is given: a PCIe 4.0 x16
# link's typical pinned host-to-device rate.
DEFAULT_HOST_LINK_GBPS = 25.0


@dataclass
class ResolvedMode:
    """What mode a handle runs, and why (for auto: the decision and its inputs)."""

    name: str
    requested: str
    reason: str
    budget_bytes: int | None = None
    transfer_dtype: str = "auto"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:  # handle.mode == "sequential"
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, ResolvedMode) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)


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


class _WrapperSlot:
    """A weight that is a wrapper tensor subclass (ComfyUI's QuantizedTensor for scaled
    fp8 / fp4 files). PinStream moves its inner tensors (set_data, as for any weight);
    the wrapper's own device is fixed when it is built, so while the weight is on the
    device the module holds a second wrapper, built once around the same inner tensor
    objects, that says so. ``show(True)`` puts that one in, ``show(False)`` the original."""

    __slots__ = ("owner", "name", "host", "dev", "inner_ids")

    def __init__(self, owner: dict, name: str, host: torch.Tensor):
        self.owner, self.name, self.host, self.dev = owner, name, host, None
        self.inner_ids = {id(x) for x in storage_tensors(host)}

    def show(self, on_device: bool) -> None:
        if on_device:
            if self.dev is None:
                names, ctx = self.host.__tensor_flatten__()
                inner = {n: getattr(self.host, n) for n in names}
                self.dev = type(self.host).__tensor_unflatten__(inner, ctx, self.host.size(), self.host.stride())
            self.owner[self.name] = self.dev
        else:
            self.owner[self.name] = self.host

    def follow_outer_device(self) -> None:
        """Put the inner tensors back on the device the original wrapper says it is on.
        ``Module.to(device)`` cannot do it when the wrapper already says that device (a
        model offloaded from the GPU: its wrappers say cuda, their codes came back to host
        memory): ``.to`` is a no-op there, and Module._apply then swaps in a copy rebuilt
        from the inner tensors, which says where they are (cpu)."""
        want = self.host.device
        for x in storage_tensors(self.host):
            if x.device != want:
                x.data = x.data.to(want)


def _wrapper_slots(module: nn.Module) -> list[_WrapperSlot]:
    out, seen = [], set()
    for m in module.modules():
        for owner in (m._parameters, m._buffers):
            for name, t in owner.items():
                if t is not None and is_traceable_wrapper_subclass(t) and (id(owner), name) not in seen:
                    seen.add((id(owner), name))
                    out.append(_WrapperSlot(owner, name, t))
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


def _host_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil is optional here
        return None


def _free_device_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001
        return 8 * GIB


# Model-offload handles currently holding device memory, per device: loading one
# offloads the others (one large model on the device at a time), like
# diffusers' model CPU offload but without device-to-host copies.
_LOADED_MODEL_OFFLOAD: dict[str, list] = {}
_REGISTRY_LOCK = threading.Lock()
# Every handle not yet detached: the pinning cap is shared by all the models of a process.
_LIVE_HANDLES: "weakref.WeakSet[OffloadHandle]" = weakref.WeakSet()


class OffloadHandle:
    """A model under PinStream. Created by :func:`offload`."""

    def __init__(self, module: nn.Module, *, mode: ResolvedMode, runtime, discovery: BlockDiscovery,
                 block_ids: list[int], fixed_id: int | None, device: torch.device,
                 original_device: torch.device, prefetch: int, model_bytes: int, stream_hooks: bool,
                 plan: dict, original_requires_grad: dict, wrappers: dict | None = None):
        self.module = module
        self.mode = mode
        self.device = device
        self.prefetch = prefetch
        self.discovery = discovery
        self.model_bytes = model_bytes
        self.plan = plan
        self._rt = runtime
        self._block_ids = block_ids
        self._fixed_id = fixed_id
        self._original_device = original_device
        self._hooks: list = []
        self._detached = False
        self._requires_grad = original_requires_grad
        self.oom_retries = 0
        # wrapper-subclass weights by unit: block index, or None for the resident rest
        self._wrappers: dict = wrappers or {}
        self._block_hooks = False
        # The thread whose forward pass is open (one forward at a time per offloaded
        # model: the slots and the learned order are the model's, not the thread's).
        self._pass_owner: threading.Thread | None = None
        self._pass_lock = threading.Lock()
        self._params = list(original_requires_grad)
        # The plan offload() made: fit_device_bytes() never plans above it.
        self._first = (mode, plan, prefetch)
        self._fit_target: int | None = None  # the allowance the plan was last fitted to
        self._install_hooks(stream_hooks)

    # ---- wrapper-subclass weights (see _WrapperSlot) ---------------------------
    def _show(self, key, on_device: bool) -> None:
        for slot in self._wrappers.get(key, ()):
            slot.show(on_device)

    def _after_load(self) -> None:
        """The resident part's wrappers (all of them when no block hooks run) say device."""
        for key in self._wrappers:
            self._show(key, key is None or not self._block_hooks)

    def _hide_all(self) -> None:
        for key in self._wrappers:
            self._show(key, False)

    # ---- hooks --------------------------------------------------------------
    def _install_hooks(self, stream_hooks: bool) -> None:
        rt = self._rt
        # load_state_dict() (on the model or any of its modules) writes into the host
        # copy: the device copies and prefetched slots are dropped first.
        for sub in self.module.modules():
            if hasattr(sub, "register_load_state_dict_pre_hook"):
                self._hooks.append(sub.register_load_state_dict_pre_hook(self._before_load_state_dict))
            else:  # torch before its public form
                self._hooks.append(sub._register_load_state_dict_pre_hook(self._before_load_state_dict,
                                                                          with_module=True))
        if self.mode.name in ("model_offload", "full_load") and self.mode.transfer_dtype == "auto":
            # Reload on use after an unload (e.g. the host application freed VRAM).
            self._hooks.append(self.module.register_forward_pre_hook(self._model_offload_pre_hook))
            return
        if not stream_hooks:
            return

        def begin(_mod, args, kwargs):
            me = threading.current_thread()
            with self._pass_lock:
                owner = self._pass_owner
                if owner is not None and owner is not me and owner.is_alive():
                    raise RuntimeError(
                        f"PinStream: a forward of this offloaded model is already running in thread "
                        f"{owner.name!r}; one forward at a time per offloaded model (its device slots "
                        f"are shared). Run the forwards one after another (e.g. under a lock), or "
                        f"offload a separate copy of the model per thread")
                # Same thread (or a thread that died): a pass left open by a forward that a
                # BaseException (KeyboardInterrupt) interrupted; begin_pass() ends it.
                self._pass_owner = me
            if torch.is_grad_enabled():
                self._check_no_grad(args, kwargs)
            if not rt.loaded:
                self.load()
            rt.begin_pass()

        wrapped_blocks = [k for k in self._wrappers if k is not None]

        def end(_mod, _args, _out):
            owner = self._pass_owner
            if owner is not None and owner is not threading.current_thread():
                return  # this thread's begin was refused: the open pass is another thread's
            try:
                rt.end_pass()
            finally:
                self._pass_owner = None
            for k in wrapped_blocks:
                self._show(k, False)

        begin_handle = self.module.register_forward_pre_hook(begin, with_kwargs=True)
        begin_handle._pinstream_stream = True
        self._hooks.append(begin_handle)
        self._hooks.append(self.module.register_forward_hook(end, always_call=True))
        self._block_hooks = True
        for index, (bid, (_name, block)) in enumerate(zip(self._block_ids, self.discovery.blocks)):
            wrapped = index in self._wrappers
            if isinstance(block, nn.Sequential):
                # A Sequential block may be iterated without being called (ComfyUI's
                # UNet runs a TimestepEmbedSequential's children itself): hook every
                # child that holds weights; touch() acquires on first use and
                # releases the block used before.
                touch, release = rt.touch, rt.release_touched
                if wrapped:
                    def touch(_id, _touch=rt.touch, _index=index):
                        _touch(_id)  # releases the block touched before: its wrappers go back
                        for k in wrapped_blocks:
                            self._show(k, k == _index)

                for sub in block.modules():
                    if sub is not block and (any(True for _ in sub.parameters(recurse=False))
                                             or any(True for _ in sub.buffers(recurse=False))):
                        self._hooks.append(sub.register_forward_pre_hook(
                            lambda _m, _a, _t=touch, _id=bid: _t(_id)))
            else:
                touch, release = rt.acquire, rt.release_if_acquired
                if wrapped:
                    def touch(_id, _touch=touch, _index=index):
                        _touch(_id)
                        self._show(_index, True)
            if wrapped:
                def release(_id, _release=release, _index=index):
                    _release(_id)
                    self._show(_index, False)

            def pre(_mod, _args, _acquire=touch, _id=bid):
                _acquire(_id)

            def post(_mod, _args, _out, _release=release, _id=bid):
                _release(_id)

            self._hooks.append(block.register_forward_pre_hook(pre))
            self._hooks.append(block.register_forward_hook(post, always_call=True))

    def _model_offload_pre_hook(self, _mod, _args):
        if not self._rt.loaded:
            self.load()

    def _check_no_grad(self, args, kwargs) -> None:
        """Autograd keeps the weights a forward uses for its backward; streamed weights
        live in device slots that later blocks refill, so the gradients would be wrong.
        Called only while grad mode is on."""
        if not self.streams_blocks:
            return  # nothing streams: every weight keeps its own device memory
        if not (any(p.requires_grad for p in self._params)
                or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
                or any(isinstance(a, torch.Tensor) and a.requires_grad for a in kwargs.values())):
            return
        raise RuntimeError(
            f"PinStream: gradients cannot be computed through a model offloaded in {self.mode.name} mode: "
            "its streamed weights live in device slots that are reused by later blocks, so autograd cannot "
            "keep them for backward. Run the forward under torch.no_grad() or torch.inference_mode(), or "
            "use mode full_load or model_offload for training or gradients")

    def _before_load_state_dict(self, _module, _state_dict, _prefix, local_metadata, *_rest) -> None:
        """load_state_dict() pre-hook: the new values must land in the host copy (the
        truth between uses), so the device copies and prefetched slots go first; the next
        forward uploads the new values."""
        if self._detached:
            return
        if local_metadata.get("assign_to_params_buffers"):
            raise RuntimeError("PinStream: load_state_dict(assign=True) would replace the tensors of an "
                               "offloaded model; use assign=False, or detach() the handle, load, then offload again")
        if self.mode.transfer_dtype != "auto":
            raise RuntimeError(f"PinStream: load_state_dict() on a model offloaded with transfer_dtype "
                               f"{self.mode.transfer_dtype!r}: its transfer codes were made from the weights at "
                               "offload(); detach() the handle, load, then offload again")
        self.unload()

    # ---- model offload --------------------------------------------------------
    def load(self) -> None:
        """Upload the whole model now (model_offload/full_load); no-op if loaded."""
        self._check_open()
        if self._rt.loaded:
            return
        key = str(self.device)
        if self.mode.name == "model_offload":
            with _REGISTRY_LOCK:
                others = [h for h in (r() for r in _LOADED_MODEL_OFFLOAD.get(key, [])) if h is not None and h is not self]
                _LOADED_MODEL_OFFLOAD[key] = [weakref.ref(self)]
            for other in others:
                other.unload()
        self._load_with_retry()

    def _load_with_retry(self) -> None:
        """Load the plan; on device OOM retry smaller plans (fewer resident blocks,
        then streaming everything, then prefetch 1). Nothing stays half-loaded."""
        rt = self._rt
        try:
            rt.load()
            self._after_load()
            return
        except MemoryError as first:
            error = first
        if not self.discovery.has_blocks:
            raise MemoryError(f"{error}; the model has no blocks to stream, so no smaller plan exists") from error
        tried = [self.plan["describe"]]
        attempts = []
        budget = int(self.plan["device_bytes"])
        while True:
            budget = int(budget * 0.75)
            attempts.append(("budget", budget, self.prefetch))
            if budget < self.plan["fixed_bytes"] + (self.prefetch + 1) * max(self.discovery.block_bytes or [0]):
                break
        attempts.append(("stream_all", -1, self.prefetch))
        if self.prefetch > 1:
            attempts.append(("stream_all", -1, 1))
        for policy, budget, prefetch in attempts:
            try:
                plan = rt.plan(policy, budget, prefetch)
            except ValueError:
                continue  # below this plan's minimum: try the next one
            tried.append(plan["describe"])
            try:
                rt.load()
            except MemoryError as e:
                error = e
                self.oom_retries += 1
                continue
            self.oom_retries += 1
            self._use_streaming_plan(plan, prefetch, self.mode,
                                     f"device out of memory while loading, fell back to {plan['describe']}")
            self._after_load()
            warnings.warn(f"PinStream: device out of memory while loading; running with a smaller plan: "
                          f"{plan['describe']}", RuntimeWarning, stacklevel=3)
            return
        raise MemoryError("PinStream: the model could not be loaded: device out of memory for every plan tried ("
                          + "; ".join(tried) + f"). Last error: {error}. Nothing is left on the device; free VRAM "
                          "(other models, --reserve-vram) or lower prefetch.") from error

    def fit_device_bytes(self, allowed: int | None) -> bool:
        """Re-plan to hold at most ``allowed`` device bytes (what a host application's
        memory manager lets this model have for the coming run, e.g. ComfyUI's, which
        leaves room for a larger latent's activations), but never more than the plan
        offload() made; ``None`` asks for that plan again. Shrinks whenever ``allowed``
        is below the current plan, to 2% of the model below it; grows back only by at
        least 5% of the model: an allowance that varies a little from run to run does
        not cost a reload each time. Full-load and budget plans of models with blocks
        only (model_offload and sequential have nothing to give or take). Unloads when
        the plan changes; the next use loads the new one. Returns whether it changed."""
        self._check_open()
        first_mode, first_plan, first_prefetch = self._first
        if first_mode.name not in ("full_load", "budget") or not self.discovery.has_blocks:
            return False
        full = int(first_plan["device_bytes"])
        current = int(self.plan["device_bytes"])
        want = full if allowed is None else max(0, min(int(allowed), full))
        last = self._fit_target if self._fit_target is not None else full
        if want < current:
            pass  # over the allowance: shrink
        elif current >= full or (want < last + 0.05 * self.model_bytes and allowed is not None):
            return False  # already the node's plan, or not enough more room to be worth a reload
        # 2% of the model below the allowance: the next run's allowance, a few MB either
        # way, then fits without another reload
        target = want if want >= full else max(0, want - int(0.02 * self.model_bytes))
        self._fit_target = want
        self.unload()
        rt = self._rt
        if target >= full:  # the node's plan again
            budget = first_mode.budget_bytes if first_plan["policy"] == "budget" else -1
            self.plan = rt.plan(first_plan["policy"], budget, first_prefetch)
            self.mode, self.prefetch = first_mode, first_prefetch
            return True
        try:
            plan = rt.plan("budget", target, self.prefetch)
        except ValueError:  # below the streaming minimum: stream every block
            plan = rt.plan("stream_all", -1, self.prefetch)
        self._use_streaming_plan(plan, self.prefetch, first_mode,
                                 f"fitted to {format_bytes(target)} of device memory allowed for this run: "
                                 f"{plan['describe']}")
        return True

    def _use_streaming_plan(self, plan: dict, prefetch: int, base: ResolvedMode, why: str) -> None:
        """Run under ``plan`` (budget or stream_all) from now on, made instead of the plan
        ``base`` chose: the mode follows the plan and says why; streaming needs the
        per-block hooks, which full_load and model_offload did not install."""
        name = "budget" if plan["policy"] == "budget" else "sequential"
        self.plan, self.prefetch = plan, prefetch
        self.mode = ResolvedMode(name, base.requested, f"{base.reason}; {why}",
                                 plan["device_bytes"] if name == "budget" else None, base.transfer_dtype)
        if not any(getattr(h, "_pinstream_stream", False) for h in self._hooks):
            for h in self._hooks:
                h.remove()
            self._hooks.clear()
            self._install_hooks(True)

    @property
    def streams_blocks(self) -> bool:
        """Whether the plan sends any block (or the rest of a split one) through the
        ring of reused device slots."""
        return bool(self.plan.get("streamed_blocks") or self.plan.get("split_blocks"))

    def unload(self) -> None:
        """Free the device copy. Weights point at the pinned host copy again; no
        device-to-host copy happens unless weights were modified on the device."""
        if self._detached:
            return
        self._end_open_pass("unload()")
        self._hide_all()
        self._rt.unload()

    def _end_open_pass(self, what: str) -> None:
        """Ends a pass left open (a forward interrupted by KeyboardInterrupt skips the
        hooks that end it); a forward running in another thread is an error."""
        me = threading.current_thread()
        with self._pass_lock:
            owner = self._pass_owner
            if owner is not None and owner is not me and owner.is_alive():
                raise RuntimeError(f"PinStream: {what} while a forward of this offloaded model is running in "
                                   f"thread {owner.name!r}; call it after that forward returns")
            self._pass_owner = None
        self._rt.end_pass()

    # ---- info -----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return not self._detached and self._rt.loaded

    @property
    def runtime(self):
        return self._rt

    def stats(self) -> dict:
        """Runtime counters plus what this handle is: mode (and why), sizes, plan."""
        s = self._rt.stats() if not self._detached else {}
        s.update(
            mode=self.mode.name,
            mode_reason=self.mode.reason,
            requested_mode=self.mode.requested,
            prefetch=self.prefetch,
            model_bytes=self.model_bytes,
            num_blocks=len(self.discovery.blocks),
            largest_block_bytes=self.discovery.largest_block_bytes,
            nonblock_bytes=self.discovery.nonblock_bytes,
            detached=self._detached,
        )
        plan = s.get("plan") or self.plan
        if plan:
            s["resident_bytes"] = int(plan["fixed_bytes"] + plan["resident_block_bytes"])
            s["streamed_bytes"] = int(plan["streamed_block_bytes"])
        s["stall_pct"] = 0.0
        return s

    def reset_stats(self) -> None:
        if not self._detached:
            self._rt.reset_stats()

    def _check_open(self) -> None:
        if self._detached:
            raise RuntimeError("PinStream: this handle was detached; call pinstream.offload() again")

    # ---- detach -----------------------------------------------------------------
    def detach(self) -> nn.Module:
        """Remove PinStream: hooks off, device and pinned memory freed, weights back
        in ordinary memory on the device the module was on, with the same values."""
        if self._detached:
            return self.module
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._hide_all()
        self._rt.close(restore_pageable=True)
        self._detached = True
        with _REGISTRY_LOCK:
            _LIVE_HANDLES.discard(self)
        self._pass_owner = None
        if getattr(self.module, "_pinstream_handle", None) is self:
            try:
                del self.module._pinstream_handle
            except AttributeError:
                pass
        with _REGISTRY_LOCK:
            for key, refs in list(_LOADED_MODEL_OFFLOAD.items()):
                _LOADED_MODEL_OFFLOAD[key] = [r for r in refs if r() is not None and r() is not self]
        # Wrappers first: Module.to() rebuilds a wrapper that already says the target
        # device from its inner tensors, so those must be there before it runs.
        for slots in self._wrappers.values():
            for slot in slots:
                slot.follow_outer_device()
        if self._original_device.type != "cpu":
            _to_keeping_inference(self.module, self._original_device)
        for p, rg in self._requires_grad.items():
            if p.requires_grad != rg:  # (an inference tensor refuses even a no-op requires_grad_(True))
                p.requires_grad_(rg)
        return self.module

    def __repr__(self) -> str:
        return (f"OffloadHandle(mode={self.mode.name}, device={self.device}, blocks={len(self._block_ids)}, "
                f"model={self.model_bytes / GIB:.2f} GiB, detached={self._detached})")


def _to_keeping_inference(module: nn.Module, *to_args) -> nn.Module:
    """``module.to(*to_args)`` that keeps inference tensors inference tensors.

    Outside ``torch.inference_mode()``, ``Module.to`` gives every parameter and buffer it
    moves a normal tensor, so a model built under inference mode would come back from
    :meth:`OffloadHandle.detach` with a different kind of weight than it went in with.
    Those tensors are converted first, inside inference mode (their ``.data`` is set, so
    the Parameter objects users hold stay the same); ``Module.to`` then finds them done
    and converts the rest as usual.
    """
    pending = [t for t in (*module.parameters(), *module.buffers())
               if t.is_inference() and not is_traceable_wrapper_subclass(t)]
    if pending:
        with torch.inference_mode():
            for t in pending:
                t.data = t.data.to(*to_args)
    return module.to(*to_args)


def _resolve_mode(mode, budget_gb, *, free_device_bytes, model_bytes, discovery: BlockDiscovery,
                  host_ram_bytes, prefetch) -> ResolvedMode:
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
        return ResolvedMode(choice.mode, requested, "auto: " + choice.reason, choice.budget_bytes, transfer)
    if name == "budget":
        if budget_gb is None:
            raise _modes.ModeError("mode 'budget' needs budget_gb (the VRAM budget in GiB, > 0)")
        budget = int(budget_gb * GIB)
        return ResolvedMode("budget", requested, f"budget {format_bytes(budget)} requested", budget, transfer)
    if name in ("sequential", "budget") and not discovery.has_blocks:
        return ResolvedMode("model_offload", requested, discovery.message or "no repeated blocks", None, transfer)
    return ResolvedMode(name, requested, f"{name} requested", None, transfer)


def offload(
    module: nn.Module,
    mode: str = "auto",
    budget_gb: float | None = None,
    prefetch: int = 1,
    device=None,
    engine: str = "auto",
    *,
    blocks: Sequence[str] | None = None,
    transfer_dtype: str = "auto",  # "fp8_e4m3": blocks sent as fp8, dequantized on the device
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
                  what the process-wide cap leaves (:func:`available_pin_bytes`), i.e.
                  PINSTREAM_PIN_CAP_GB, else 95% of RAM on Linux and 45% on Windows (like
                  ComfyUI), less what the other live PinStream models have pinned
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"PinStream: offload() needs a torch nn.Module, got {type(module).__name__}")
    prefetch = _modes.check_prefetch(prefetch)
    budget_gb = _modes.check_budget_gb(budget_gb)
    if transfer_dtype not in _modes.TRANSFER_DTYPES:
        raise _modes.ModeError(f"transfer_dtype must be one of {', '.join(_modes.TRANSFER_DTYPES)}; got {transfer_dtype!r}")
    dev = _resolve_device(device)
    if engine not in ("auto", "cuda", "host"):
        raise _modes.ModeError(f"engine must be auto, cuda or host; got {engine!r}")
    engine_kind = engine if engine != "auto" else ("cuda" if dev.type == "cuda" else "host")
    if engine_kind == "cuda" and dev.type != "cuda":
        raise _modes.ModeError(f"engine 'cuda' needs a cuda device, got {dev}")
    if engine_kind == "host" and dev.type == "cuda" and engine == "auto":
        engine_kind = "cuda"
    _C = load_native()
    if getattr(module, "_pinstream_handle", None) is not None and not module._pinstream_handle._detached:
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
        host_ram_bytes = _host_ram_bytes()
    resolved = _resolve_mode(mode, budget_gb, free_device_bytes=free_device_bytes, model_bytes=model_bytes,
                             discovery=discovery, host_ram_bytes=host_ram_bytes, prefetch=prefetch)
    if transfer_dtype != "auto":
        resolved.transfer_dtype = transfer_dtype
    fp8 = resolved.transfer_dtype == "fp8_e4m3"
    if fp8 and not discovery.has_blocks:
        raise _modes.ModeError("transfer_dtype 'fp8_e4m3' applies to a model's blocks, and this model has none; "
                               "use transfer_dtype 'auto'")

    # Units: each streamable block, then everything else (non-block and tied
    # tensors) as one always-resident unit.
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
    # names for error messages (a wrapper subclass's inner tensors: its name and theirs)
    name_of: dict[int, str] = {}
    for name, t in named.items():
        if t is None:
            continue
        for x in storage_tensors(t):
            name_of.setdefault(id(x), name if x is t else f"{name} (inner tensor)")

    requires_grad = {}
    for t in outer_tensors:
        if isinstance(t, nn.Parameter):
            requires_grad[t] = t.requires_grad

    rt = _C.Runtime(
        pin_cap_bytes=int(pin_cap_bytes if pin_cap_bytes is not None else available_pin_bytes()),
        device=str(dev),
        engine=engine_kind,
        prefetch=prefetch,
        link_gbps=float(link_gbps if link_gbps is not None else (DEFAULT_HOST_LINK_GBPS if engine_kind == "host" else 0.0)),
        latency_us=float(latency_us),
        device_capacity_bytes=int(device_capacity_bytes),
        pin_mode="auto" if pin_memory else "pageable",
        chunk_bytes=int(chunk_bytes),
        timing=timing,
    )
    try:
        streamable = [True] * len(unit_tensors)
        # fp8 transfer (opt-in, lossy): blocks cross the link as e4m3 codes with
        # per-row scales and are dequantized on the device; the non-block part as stored.
        # Over the pinning cap, the most-used bytes are pinned first: streamed blocks
        # (uploaded every pass), then resident blocks and the non-block part (once).
        pin_rank = _pin_ranks(_C, unit_tensors, rest, resolved, prefetch)
        ids = rt.register_blocks(unit_tensors + [rest], streamable + [False], progress,
                                 [fp8] * len(unit_tensors) + [False], pin_rank,
                                 [[name_of.get(id(t), "") for t in ts] for ts in unit_tensors + [rest]])
        block_ids, fixed_id = ids[:-1], ids[-1]
        policy = {"full_load": "all_resident", "model_offload": "all_resident",
                  "sequential": "stream_all", "budget": "budget"}[resolved.name]
        plan = rt.plan(policy, int(resolved.budget_bytes) if resolved.name == "budget" else -1, prefetch)
        unit_of = {id(t): i for i, ts in enumerate(unit_tensors) for t in ts}
        wrappers: dict = {}
        for slot in _wrapper_slots(module):
            units = {unit_of.get(x) for x in slot.inner_ids}
            wrappers.setdefault(units.pop() if len(units) == 1 else None, []).append(slot)
        handle = OffloadHandle(
            module, mode=resolved, runtime=rt, discovery=discovery, block_ids=block_ids, fixed_id=fixed_id,
            wrappers=wrappers,
            device=dev, original_device=original_device, prefetch=prefetch, model_bytes=model_bytes,
            # fp8 blocks point at their (dequantized) device copy only while they run.
            stream_hooks=resolved.name in ("sequential", "budget") or fp8, plan=plan,
            original_requires_grad=requires_grad,
        )
        if resolved.name == "full_load":
            handle._load_with_retry()
    except BaseException:
        if "handle" in locals():
            for hk in handle._hooks:
                hk.remove()
        rt.close(restore_pageable=True)
        raise
    st = rt.stats()
    if st["pageable_bytes"] > 0:
        warnings.warn(
            f"PinStream: {st['pageable_bytes'] / GIB:.2f} GiB of {model_bytes / GIB:.2f} GiB could not be pinned "
            f"({', '.join(st['pin_how'])}); those uploads are synchronous and slower. Raise the pinning cap "
            f"(PINSTREAM_PIN_CAP_GB) or the memlock limit (ulimit -l) to pin it all.",
            RuntimeWarning, stacklevel=2)
    try:
        module._pinstream_handle = handle
    except Exception:  # noqa: BLE001 - a module that refuses attributes still works
        pass
    with _REGISTRY_LOCK:
        _LIVE_HANDLES.add(handle)
    return handle


def pinned_bytes_in_use() -> int:
    """Host bytes pinned by this process's PinStream models (the handles not detached)."""
    with _REGISTRY_LOCK:
        handles = list(_LIVE_HANDLES)
    return sum(int(h._rt.pinned_bytes) for h in handles if not h._detached)


def available_pin_bytes(pinned_elsewhere: int = 0) -> int:
    """What the pinning cap (:func:`default_pin_cap_bytes`, one for the whole process) leaves
    for another model: the cap less the bytes the live PinStream models have pinned and
    ``pinned_elsewhere`` (pinned memory PinStream does not own, such as ComfyUI's own
    pins). -1 when there is no cap (RAM unknown)."""
    cap = default_pin_cap_bytes()
    if cap < 0:
        return -1
    return max(0, cap - pinned_bytes_in_use() - max(0, int(pinned_elsewhere)))


def _pin_ranks(_C, unit_tensors, rest, resolved, prefetch) -> list:
    """Pin priority per unit (lower first): streamed blocks (split ones included: their
    rest crosses the link every pass), wholly resident blocks, the rest."""
    sizes = [sum(_tensor_bytes(t) for t in ts) for ts in unit_tensors]
    policy = {"sequential": "stream_all", "budget": "budget"}.get(resolved.name)
    if policy is None or not sizes:
        return list(range(len(sizes))) + [len(sizes)]
    # packed and cut as registration will (fp8 blocks are sent whole)
    layout = [] if resolved.transfer_dtype == "fp8_e4m3" else [[_tensor_bytes(t) for t in ts]
                                                               for ts in unit_tensors]
    try:
        resident = _C.plan_residency(sizes, sum(_tensor_bytes(t) for t in rest), policy,
                                     int(resolved.budget_bytes) if policy == "budget" else -1, prefetch,
                                     layout)
    except ValueError:
        resident = [False] * len(sizes)  # the real plan reports the error
    n = len(sizes)
    return [i + (n if r else 0) for i, r in enumerate(resident)] + [2 * n]


def default_pin_cap_bytes() -> int:
    """Pinning cap for all of a process's models together: PINSTREAM_PIN_CAP_GB, else 95% of
    RAM (45% on Windows)."""
    raw = os.environ.get("PINSTREAM_PIN_CAP_GB", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise _modes.ModeError(f"PINSTREAM_PIN_CAP_GB={raw!r} is not a number of GiB") from None
        if not math.isfinite(value) or value < 0:
            raise _modes.ModeError(f"PINSTREAM_PIN_CAP_GB must be a finite number >= 0, got {raw!r}")
        return int(value * GIB)
    ram = _host_ram_bytes()
    if ram is None:
        return -1
    return int(ram * (0.45 if sys.platform == "win32" else 0.95))


def stall_percent(stall_ms: float, wall_ms: float) -> float:
    if wall_ms <= 0 or not math.isfinite(wall_ms):
        return 0.0
    return max(0.0, min(100.0, 100.0 * stall_ms / wall_ms))
