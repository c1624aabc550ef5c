"""FlashPortrait Loader (PinStream): ComfyUI-FlashPortrait's pipe built on the host, each
component then put under its PinStream mode.

FlashPortrait's own loader moves every component to the GPU as it builds them (about 40 GB
in bf16) before its memory mode applies, so on a 12-24 GB GPU it runs out of memory before
any offloading. This node runs that same loader (FlashPortrait's code, its files, its
classes) with ComfyUI's device redirected to the CPU for the duration of the build, in its
``default`` mode: every component is built in host RAM and nothing reaches the GPU. The pipe
is then told its compute device, and PinStream Offload (Pipeline)'s machinery takes each
component into pinned memory under its mode (the transformer streams within the budget, the
encoders and the VAE are model-offloaded). The pipe and the face-alignment models it returns
are FlashPortrait's own types, for its Feature Extractor and Sampler.
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch

LOADER = "FlashPortraitLoader"  # the node FlashPortrait registers


class _HostDevice(types.ModuleType):
    """comfy.model_management as FlashPortrait's loader sees it during the build: the torch
    device it builds on is the CPU; everything else is ComfyUI's."""

    def __init__(self, mm):
        super().__init__(mm.__name__)
        self._mm = mm

    def __getattr__(self, name):
        return getattr(self._mm, name)

    def get_torch_device(self):
        return torch.device("cpu")


def compute_device() -> torch.device:
    """Where the pipe computes: ComfyUI's torch device."""
    import comfy.model_management

    return torch.device(comfy.model_management.get_torch_device())


def flashportrait_loader_class(node_classes: dict):
    cls = node_classes.get(LOADER)
    if cls is None:
        raise ValueError("FlashPortrait Loader (PinStream) needs ComfyUI-FlashPortrait installed in custom_nodes (its "
                         "'FlashPortrait Loader' node is not registered in this ComfyUI); install it, restart ComfyUI, "
                         "and use this node in its place")
    return cls


@contextlib.contextmanager
def built_on_the_host(loader_cls):
    """While active, FlashPortrait's loader module sees the CPU as ComfyUI's torch device."""
    module = sys.modules.get(loader_cls.__module__)
    mm = getattr(module, "mm", None)
    if module is None or mm is None or not hasattr(mm, "get_torch_device"):
        raise ValueError(f"FlashPortrait's loader ({loader_cls.__module__}) does not reach ComfyUI's device through "
                         "comfy.model_management as 'mm'; this FlashPortrait version is not supported by FlashPortrait "
                         "Loader (PinStream): use its own loader in sequential_cpu_offload mode with PinStream Offload "
                         "(Pipeline)")
    module.mm = _HostDevice(mm)
    try:
        yield
    finally:
        module.mm = mm


def load_flashportrait(node_classes: dict, precision: str, download_missing: bool, offload, device):
    """(pipe, face_align_models, lines): FlashPortrait's loader run on the host, then
    ``offload(pipe)`` (which returns the node's text lines) with ``device`` as the pipe's
    compute device."""
    cls = flashportrait_loader_class(node_classes)
    with built_on_the_host(cls):
        pipe, face_align_models = cls().load_models(precision, "default", download_missing)
    on_gpu = [name for name, m in pipe.items() if isinstance(m, torch.nn.Module)
              and any(t.device.type != "cpu" for t in list(m.parameters()) + list(m.buffers()))]
    if on_gpu:
        raise ValueError(f"FlashPortrait's loader put {', '.join(on_gpu)} on the GPU although ComfyUI's device was "
                         "the CPU during the build; this FlashPortrait version is not supported by this node")
    pipe["device"] = torch.device(device)  # its sampler computes (and seeds its generator) there
    lines = offload(pipe)
    return pipe, face_align_models, lines
