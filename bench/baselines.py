"""The systems PinStream is measured against, applied to a torch model as their users
apply them. Each one is a context manager: on entry the model runs under that
system, on exit the system is removed again where it can be (accelerate and
diffusers consume the model: build a new one afterwards). Timing and
bookkeeping live in :mod:`bench.baseline_runs`; nothing here measures.

* :func:`naive_swap`       WanVideoWrapper-style block swap (block.to() per block)
* :func:`accelerate_cpu_offload`  accelerate.cpu_offload (diffusers' sequential offload)
* :func:`diffusers_group_offload` diffusers group offloading, block_level or leaf_level
* :func:`comfyui_lowvram`  ComfyUI core's legacy lowvram path (ModelPatcher + comfy.ops)

All of them import their library lazily: a missing one raises ImportError, which
the benchmark records as "skipped".
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path


def swap_plan(budget_bytes: int, nonblock_bytes: int, block_bytes: int, num_blocks: int) -> int:
    """Blocks a naive swap must swap to fit ``budget_bytes``: everything outside the
    blocks and the resident blocks stay on the device, plus room for the one block
    being swapped in. 0 when the whole model fits."""
    fit = int((budget_bytes - nonblock_bytes) // max(1, block_bytes))
    if fit >= num_blocks:
        return 0
    return num_blocks - max(0, fit - 1)


@contextlib.contextmanager
def naive_swap(model, device, blocks_to_swap: int, blocks_attr: str = "blocks", non_blocking: bool = False):
    """WanVideoWrapper's block swap (``WanVideoBlockSwap``): the first ``blocks_to_swap``
    blocks are moved to ``device`` right before they run and back to the host right
    after (``block.to()``: synchronous and pageable unless ``non_blocking``; no side
    stream, no look-ahead); the rest of the model stays on the device."""
    import torch

    dev = torch.device(device)
    blocks = getattr(model, blocks_attr)
    for name, child in model.named_children():
        if name != blocks_attr:
            child.to(dev)
    for blk in blocks[blocks_to_swap:]:
        blk.to(dev)

    def to_device(m, _args):
        m.to(dev, non_blocking=non_blocking)  # returns None: a pre-hook's return value replaces the args

    def to_host(m, _args, _out):
        m.to("cpu", non_blocking=non_blocking)

    hooks = []
    try:
        for blk in blocks[:blocks_to_swap]:
            hooks.append(blk.register_forward_pre_hook(to_device))
            hooks.append(blk.register_forward_hook(to_host, always_call=True))
        yield {"blocks_to_swap": blocks_to_swap, "non_blocking": non_blocking}
    finally:
        for h in hooks:
            h.remove()
        model.to("cpu")


@contextlib.contextmanager
def accelerate_cpu_offload(model, device):
    """``accelerate.cpu_offload``: every leaf's weights copied to the device right before
    it runs (pageable, synchronous) and dropped right after. Consumes the model: its
    parameters end on the meta device."""
    import accelerate
    import torch
    from accelerate.hooks import remove_hook_from_module

    accelerate.cpu_offload(model, execution_device=torch.device(device))
    try:
        yield {"version": getattr(accelerate, "__version__", "?")}
    finally:
        remove_hook_from_module(model, recurse=True)


@contextlib.contextmanager
def diffusers_group_offload(model, device, offload_type: str, use_stream: bool):
    """``diffusers.hooks.apply_group_offloading``: ``block_level`` (one block per group)
    or ``leaf_level``, with a side stream and non-blocking copies when ``use_stream``
    (its fastest setting; streams need a CUDA device). diffusers keeps a pinned copy
    of every tensor. There is no public removal: the model is consumed."""
    import diffusers
    import torch
    from diffusers.hooks import apply_group_offloading

    kw = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    apply_group_offloading(model, onload_device=torch.device(device), offload_device=torch.device("cpu"),
                           offload_type=offload_type, use_stream=use_stream, non_blocking=use_stream, **kw)
    yield {"use_stream": use_stream, "non_blocking": use_stream, "version": getattr(diffusers, "__version__", "?"),
           **kw}


def import_comfyui(root, cpu: bool) -> types.SimpleNamespace:
    """Import ComfyUI's memory manager from the source tree ``root`` (once per process:
    ComfyUI keeps global state). ``cpu``: ComfyUI's --cpu (it queries the device at
    import). Dynamic VRAM (newest ComfyUI) is switched off: this is the legacy path."""
    root_s = str(root)
    if root_s not in sys.path:
        sys.path.insert(0, root_s)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    args = comfy.cli_args.args
    if cpu:
        args.cpu = True
    if hasattr(args, "disable_dynamic_vram"):
        args.disable_dynamic_vram = True
    import comfy.model_management as mm
    from comfy import model_patcher, ops

    version = "unknown"
    vf = Path(root) / "comfyui_version.py"
    if vf.is_file():
        for line in vf.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    return types.SimpleNamespace(mm=mm, model_patcher=model_patcher, ops=ops, version=version)


def to_comfy_ops(model, ops) -> set:
    """Switch the model's Linear, LayerNorm and Conv3d layers to ComfyUI's op classes
    (``comfy.ops.disable_weight_init``: the same layers plus per-forward weight
    casting when lowvram); returns the op classes used."""
    from torch import nn

    swaps = {nn.Linear: ops.disable_weight_init.Linear, nn.LayerNorm: ops.disable_weight_init.LayerNorm,
             nn.Conv3d: ops.disable_weight_init.Conv3d}
    for m in model.modules():
        new = swaps.get(type(m))
        if new is not None:
            m.__class__ = new
    return set(swaps.values())


def keep_on_device(model, device, op_classes: set) -> int:
    """Parameters ComfyUI's ModelPatcher would not move or cast (those of modules that
    are not comfy ops: RMSNorm weights, a block's own modulation) go to the device
    for good, as ComfyUI's own Wan casts them; returns their bytes."""
    total = 0
    for m in model.modules():
        if type(m) in op_classes:
            continue
        for p in m.parameters(recurse=False):
            p.data = p.data.to(device)
            total += p.numel() * p.element_size()
    return total


class ComfyLowvram:
    """ComfyUI core's lowvram path on a model whose layers are comfy ops:
    ``ModelPatcher.patch_model(device, lowvram_model_memory=budget)`` loads weights
    largest first while they fit; the rest are cast to the device per forward by
    comfy.ops on the offload streams (--async-offload, 2 on NVIDIA) from host memory
    pinned in place (cudaHostRegister, up to 95% of RAM on Linux)."""

    def __init__(self, ns, model, device):
        import torch

        self.ns = ns
        self.model = model
        self.device = torch.device(device)
        self.op_classes = to_comfy_ops(model, ns.ops)
        self.patcher = ns.model_patcher.ModelPatcher(model, load_device=self.device,
                                                     offload_device=torch.device("cpu"))

    def info(self) -> dict:
        mm = self.ns.mm
        return {"comfyui_version": self.ns.version, "async_offload_streams": int(getattr(mm, "NUM_STREAMS", 0)),
                "max_pinned_bytes": int(max(0, getattr(mm, "MAX_PINNED_MEMORY", 0))),
                "pinned_bytes": int(getattr(mm, "TOTAL_PINNED_MEMORY", 0)),
                "loaded_bytes": int(getattr(self.model, "model_loaded_weight_memory", 0))}

    @contextlib.contextmanager
    def budget(self, budget_bytes: int):
        import torch

        pre = keep_on_device(self.model, self.device, self.op_classes)
        self.patcher.patch_model(device_to=self.device, lowvram_model_memory=max(1, int(budget_bytes) - pre),
                                 load_weights=True, force_patch_weights=False)
        try:
            yield {**self.info(), "kept_on_device_bytes": pre}
        finally:
            self.patcher.unpatch_model(device_to=torch.device("cpu"), unpatch_weights=True)
