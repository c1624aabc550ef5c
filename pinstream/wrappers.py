"""Weights that are wrapper tensor subclasses (ComfyUI's QuantizedTensor for scaled fp8 /
fp4 files), and moving a module back without changing what kind of tensors it holds."""

from __future__ import annotations

from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

import torch

from .discovery import storage_tensors


class WrapperSlot:
    """A weight that is a wrapper tensor subclass. PinStream moves its inner tensors
    (set_data, as for any weight); the wrapper's own device is fixed when it is built, so
    while the weight is on the device the module holds a second wrapper, built once around
    the same inner tensor objects, that says so. ``show(True)`` puts that one in,
    ``show(False)`` the original."""

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


def wrapper_slots(module: nn.Module) -> list[WrapperSlot]:
    out, seen = [], set()
    for m in module.modules():
        for owner in (m._parameters, m._buffers):
            for name, t in owner.items():
                if t is not None and is_traceable_wrapper_subclass(t) and (id(owner), name) not in seen:
                    seen.add((id(owner), name))
                    out.append(WrapperSlot(owner, name, t))
    return out


def show_all(slots, on_device: bool) -> None:
    for slot in slots:
        slot.show(on_device)


def to_keeping_inference(module: nn.Module, *to_args) -> nn.Module:
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
