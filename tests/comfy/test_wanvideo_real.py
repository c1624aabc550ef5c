"""PinStream Offload (WanVideo Model) against ComfyUI-WanVideoWrapper's REAL code: its
WanModel (a tiny config, random weights), its WanVideoModel and config classes, and its
WanVideoSampler, with and without the wrapper's block swap. Runs where WANVIDEOWRAPPER_PATH
points at a checkout of the wrapper (it is not on PyPI); CI runs the stand-in of the same
structure in test_wanvideo.py.

On the CPU the wrapper's attention casts q, k, v to bf16 (it expects CUDA autocast): the
test has it keep their dtype, and runs in float32 (CPU autocast then stays off)."""

import importlib.util
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PATH = os.environ.get("WANVIDEOWRAPPER_PATH")
pytestmark = pytest.mark.skipif(not PATH, reason="WANVIDEOWRAPPER_PATH is not set (a ComfyUI-WanVideoWrapper checkout)")

if PATH:
    import test_nodes as T  # real ComfyUI, set up

    import comfy.model_base
    import comfy.model_patcher

    from comfy_nodes import nodes as N

    spec = importlib.util.spec_from_file_location("wanvideowrapper", os.path.join(PATH, "__init__.py"),
                                                  submodule_search_locations=[PATH])
    _pkg = importlib.util.module_from_spec(spec)
    sys.modules["wanvideowrapper"] = _pkg
    spec.loader.exec_module(_pkg)
    import wanvideowrapper.nodes as W
    import wanvideowrapper.wanvideo.modules.model as WM

    _attention = WM.attention
    WM.attention = lambda q, k, v, *a, **kw: _attention(q, k, v, *a, **dict(kw, dtype=q.dtype))


def wanvideo_model(block_swap):
    """A WANVIDEOMODEL with the settings the wrapper's loader gives it."""
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    transformer = W.WanModel(model_type="t2v", dim=64, ffn_dim=128, num_heads=4, num_layers=4, text_len=16,
                             main_device=cpu, offload_device=cpu).eval()
    for p in transformer.parameters():
        p.data.normal_(0, 0.05)
    config = W.WanVideoModelConfig(torch.float32)
    for k, v in (("custom_operations", None), ("optimizations", {}), ("scaled_fp8", None)):
        if not hasattr(config, k):  # attributes newer ComfyUI releases read
            setattr(config, k, v)
    cm = W.WanVideoModel(config, model_type=comfy.model_base.ModelType.FLOW, device=cpu)
    cm.diffusion_model = transformer
    patcher = comfy.model_patcher.ModelPatcher(cm, cpu, cpu)
    for k, v in (("dtype", torch.float32), ("base_path", "tiny"), ("model_name", "tiny"),
                 ("quantization", "disabled"), ("manual_offloading", True), ("auto_cpu_offload", False),
                 ("block_swap_args", {"blocks_to_swap": 2, "offload_txt_emb": False, "offload_img_emb": False}
                  if block_swap else None)):
        patcher.model[k] = v
    return patcher


def sample(model):
    g = torch.Generator().manual_seed(5)
    text = {"prompt_embeds": [torch.randn(8, 4096, generator=g) * 0.1],
            "negative_prompt_embeds": [torch.randn(8, 4096, generator=g) * 0.1]}
    image = {"target_shape": (16, 1, 8, 8), "max_seq_len": 16}
    with torch.inference_mode():  # as ComfyUI runs a node
        out = W.WanVideoSampler().process(model, text, image, shift=5.0, steps=2, cfg=1.5, seed=1, scheduler="euler",
                                          riflex_freq_index=0, force_offload=False)
    return out[0]["samples"]


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload"])
def test_the_wrapper_s_sampler_equals_its_block_swap_under_pinstream(mode):
    ref = sample(wanvideo_model(block_swap=True))
    assert torch.equal(sample(wanvideo_model(block_swap=False)), ref)  # block swap itself is exact
    model = wanvideo_model(block_swap=True)
    size = sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters())
    budget = 0.85 * size / 1024**3 if mode == "budget" else 0.0  # the text embedding is most of this tiny model
    (new,), msg = N.run_offload_wanvideo_model(model, mode, budget, 1, True)
    h = new.model.pinstream_state.handle
    assert h.mode.name == mode and "block swap is off" in msg, msg
    for _ in range(2):
        assert torch.equal(sample(new), ref)
    if mode != "model_offload":
        assert h.stats()["acquires"] >= 2 * len(new.model.diffusion_model.blocks)
    T.mm.unload_all_models()
