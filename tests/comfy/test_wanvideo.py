"""PinStream Offload (WanVideo Model) against real ComfyUI source, on a stand-in of
ComfyUI-WanVideoWrapper's WANVIDEOMODEL with the same structure: a comfy ModelPatcher around
a comfy.model_base.BaseModel subclass whose item access holds the loader's settings
(``manual_offloading``, ``block_swap_args``) and whose ``diffusion_model`` is a Wan
transformer (ComfyUI's own Wan class here, tiny, random weights from a real-format file),
run by a sampler that, like the wrapper's, calls the transformer itself and moves it with
``.to()`` or swaps blocks. The wrapper's real code is checked locally with
WANVIDEOWRAPPER_PATH (tests/comfy/test_wanvideo_real.py)."""

import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # files, references

import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.sd
import comfy.utils

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm = T.ns, T.pl, T.mm


class WanVideoModel(comfy.model_base.BaseModel):
    """As the wrapper defines it: a BaseModel with a settings dict behind item access."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pipeline = {}

    def __getitem__(self, k):
        return self.pipeline[k]

    def __setitem__(self, k, v):
        self.pipeline[k] = v


class WanVideoModelConfig:
    def __init__(self, dtype):
        self.unet_config = {"disable_unet_model_creation": True}  # the transformer is set afterwards
        self.unet_extra_config = {}
        self.latent_format = comfy.latent_formats.Wan21
        self.manual_cast_dtype = dtype
        self.sampling_settings = {"multiplier": 1.0}
        self.memory_usage_factor = 2.0
        self.custom_operations = None
        self.optimizations = {}
        self.scaled_fp8 = None


def wanvideo_model(lora_strength=None, block_swap=True):
    """A WANVIDEOMODEL as the wrapper's loader returns it (its LoRA applied the way the
    loader applies it: load_lora_for_models, then load_models_gpu)."""
    core = T._core_unet("wan21_t2v")
    transformer = core.model.diffusion_model
    cm = WanVideoModel(WanVideoModelConfig(torch.float32), model_type=comfy.model_base.ModelType.FLOW,
                       device=torch.device("cpu"))
    cm.diffusion_model = transformer
    patcher = comfy.model_patcher.ModelPatcher(cm, torch.device("cpu"), torch.device("cpu"))
    del core
    if lora_strength is not None:
        lora_sd = comfy.utils.load_torch_file(str(T.f("wan_lora")), safe_load=True)
        patcher, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, lora_strength, 0)
        mm.load_models_gpu([patcher])
    patcher.model["manual_offloading"] = True
    patcher.model["block_swap_args"] = {"blocks_to_swap": 2} if block_swap else None
    return patcher


def wrapper_sampler(patcher, steps=2, seed=3):
    """What the wrapper's sampler does around the transformer: block swap or .to() of the
    whole transformer, then its own loop calling the transformer."""
    model = patcher.model
    transformer = model.diffusion_model
    device, offload = mm.get_torch_device(), mm.unet_offload_device()
    if model["block_swap_args"]:
        for block in transformer.blocks[: model["block_swap_args"]["blocks_to_swap"]]:
            for p in block.parameters():  # tensor by tensor, as the wrapper moves them
                p.data = p.data.to(offload)
    elif model["manual_offloading"]:
        transformer.to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 1, 8, 8, generator=g)
    context = torch.randn(1, 16, transformer.text_embedding[0].in_features, generator=g) * 0.1
    with torch.inference_mode():
        for i in range(steps):
            t = torch.full((1,), 900.0 - 400.0 * i)
            x = x - 0.25 * transformer(x, t, context)
    if model["manual_offloading"]:
        transformer.to(offload)
    return x


def _ps(model, mode, budget=0.0):
    return N.run_offload_wanvideo_model(model, mode, budget, 1, True)


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_the_wrapper_s_sampler_gives_the_same_output_under_pinstream(mode):
    ref = wrapper_sampler(wanvideo_model())
    mm.unload_all_models()
    model = wanvideo_model()
    budget = T._budget_for("wan21_t2v") if mode == "budget" else 0.0
    (new,), msg = _ps(model, mode, budget)
    h = new.model.pinstream_state.handle
    assert h.mode.name == mode, msg
    # the wrapper's own offloading is off for this model; PinStream streams its blocks
    assert new.model["block_swap_args"] is None and new.model["manual_offloading"] is False
    assert "block swap is off" in msg and "manual offloading" in msg
    for _ in range(2):
        assert torch.equal(wrapper_sampler(new), ref)
    st = h.stats()
    if mode in ("sequential", "budget"):
        assert st["acquires"] > 0 and st["plan"]["streamed_blocks"] > 0
    assert "WanVideo" in N.run_stats()[1]


def test_a_lora_from_the_wrapper_s_loader_is_applied_into_pinstream_s_copies():
    ref = wrapper_sampler(wanvideo_model(lora_strength=0.8))
    plain = wrapper_sampler(wanvideo_model())
    assert not torch.equal(ref, plain)  # the LoRA changes the output
    mm.unload_all_models()
    model = wanvideo_model(lora_strength=0.8)
    (new,), msg = _ps(model, "sequential")
    assert "LoRA" in msg, msg
    assert torch.equal(wrapper_sampler(new), ref)
    assert torch.equal(wrapper_sampler(new), ref)


def test_a_core_model_or_a_wrapped_vram_management_model_is_refused_with_what_to_use():
    core = T._core_unet("wan21_t2v")
    with pytest.raises(ValueError, match="PinStream Offload \\(Model\\)"):
        _ps(object(), "sequential")
    model = wanvideo_model()
    model.model["vram_management_args"] = {"offload_percent": 0.5}
    with pytest.raises(ValueError, match="without them"):
        _ps(model, "sequential")
    del core


def test_memory_comes_back_when_the_model_is_dropped():
    import weakref

    model = wanvideo_model(block_swap=False)
    (new,), _ = _ps(model, "sequential")
    h = new.model.pinstream_state.handle
    assert h.stats()["pinned_bytes"] > 0
    rt = weakref.ref(h.runtime)
    states = len(P.managed_states())
    del new, model, h
    mm.unload_all_models()
    gc.collect()
    assert rt() is None or rt().closed
    assert len(P.managed_states()) < states
