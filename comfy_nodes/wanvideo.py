"""PinStream Offload (WanVideo Model): ComfyUI-WanVideoWrapper's WANVIDEOMODEL under PinStream.

A WANVIDEOMODEL is a ComfyUI ModelPatcher around the wrapper's WanVideoModel (a
comfy.model_base.BaseModel whose ``diffusion_model`` is the wrapper's WanModel, and whose
item access holds the loader's settings: ``manual_offloading``, ``block_swap_args``, ...).
The wrapper's sampler calls the transformer itself, moving it with ``.to()`` (manual
offloading) or moving blocks tensor by tensor on the compute stream (block swap). Under
PinStream the transformer's weights live in pinned RAM and its blocks stream on the copy
stream, so both of the wrapper's own mechanisms are turned off for this model; LoRA
patches of the WANVIDEOMODEL are applied into PinStream's host copies, as for core models.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("pinstream")

# the wrapper's own ways of moving the transformer, which PinStream replaces
_OWN_OFFLOAD = ("block_swap_args", "manual_offloading")


def wanvideo_parts(model):
    """The WanVideoModel and its transformer, or a ValueError saying what was given."""
    inner = getattr(model, "model", None)
    transformer = getattr(inner, "diffusion_model", None)
    settings = getattr(inner, "pipeline", None)
    if not (hasattr(model, "clone") and isinstance(transformer, torch.nn.Module) and isinstance(settings, dict)):
        raise ValueError("PinStream Offload (WanVideo Model) takes the WANVIDEOMODEL output of ComfyUI-WanVideoWrapper's "
                         f"WanVideo Model Loader (a ModelPatcher with .model.diffusion_model); got "
                         f"{type(model).__name__}. For core MODEL outputs use PinStream Offload (Model).")
    if settings.get("vram_management_args") or settings.get("auto_cpu_offload"):
        raise ValueError("this WANVIDEOMODEL was loaded with vram_management_args, whose wrapped modules move their "
                         "own weights; load it without them (PinStream streams the blocks instead)")
    return inner, transformer


def offload_wanvideo_model(model, cfg, apply_offload, load_models_gpu=None):
    """The PinStream clone of ``model`` and the node's text. ``apply_offload`` is the node
    pack's (patcher, config) -> (clone or the patcher unchanged, message)."""
    inner, transformer = wanvideo_parts(model)
    before = {k: inner.pipeline.get(k) for k in _OWN_OFFLOAD}
    new, msg = apply_offload(model, cfg)
    if new is model:  # passed through: the wrapper keeps moving it itself
        return new, msg
    notes = []
    if before.get("block_swap_args"):
        notes.append("the wrapper's block swap is off for this model (PinStream streams its blocks)")
    if before.get("manual_offloading"):
        notes.append("the wrapper's manual offloading (.to() of the whole transformer) is off")
    inner.pipeline["block_swap_args"] = None
    inner.pipeline["manual_offloading"] = False
    if new.patches and load_models_gpu is not None:
        # The wrapper's sampler never asks ComfyUI to load the model: apply the LoRA patches
        # now, as the wrapper's loader did, into the weights PinStream holds.
        load_models_gpu([new])
        notes.append(f"{len(new.patches)} patched weights (LoRA) applied into PinStream's host copies")
    log.info("PinStream WanVideo model: %s", "; ".join(notes) or "no wrapper offloading to turn off")
    return new, msg + "".join(f"\n{n}" for n in notes)
