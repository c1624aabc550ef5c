"""GGUF models (ComfyUI-GGUF's "Unet Loader (GGUF)") under "PinStream Offload (Model)",
in-process against real ComfyUI and a real ComfyUI-GGUF checkout named by
COMFYUI_GGUF_PATH (ComfyUI-GGUF is not on PyPI, so these run where a checkout exists;
the mechanism they rely on, a tensor subclass whose quantized bytes sit in an ordinary
storage with the format as Python attributes, is tested everywhere by
tests/py/test_storage_subclass_weights.py).

Every comparison is with ComfyUI-GGUF's own patcher on the same file and seed: the same
latent, bit for bit, with and without a LoRA.
"""

import importlib
import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GGUF_PACK = os.environ.get("COMFYUI_GGUF_PATH")
pytestmark = pytest.mark.skipif(not GGUF_PACK, reason="COMFYUI_GGUF_PATH (a ComfyUI-GGUF checkout) is not set")
pytest.importorskip("gguf", reason="the gguf package (ComfyUI-GGUF's requirement) is not installed")

import harness  # noqa: E402

ns = harness.load_comfyui()

import checkpoints as ck  # noqa: E402
import pipeline as pl  # noqa: E402
import torch  # noqa: E402

from comfy_nodes import nodes as N  # noqa: E402
from comfy_nodes import patcher as P  # noqa: E402

mm = ns.model_management


def _gguf_nodes():
    """ComfyUI-GGUF's nodes module, imported as ComfyUI imports a custom node pack."""
    name = "pinstream_test_comfyui_gguf"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(GGUF_PACK, "__init__.py"),
                                                      submodule_search_locations=[GGUF_PACK])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(name + ".nodes")


def _sample(model):
    pos, neg = pl.wan_conditioning()
    return pl.sample_latent(ns, model, pos, neg, latent=pl.wan_latent(32, 32, 5))


def _load(gg, name):
    (model,) = gg.UnetLoaderGGUF().load_unet(name)
    return model


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload"])
def test_gguf_model_offloaded_same_latent_and_lora(mode):
    gg = _gguf_nodes()
    path = ck.write_wan21_t2v_gguf()
    lora = ck.write_wan_lora()
    harness.refresh_model_lists(ns)
    name = pl._name_in(ns, "diffusion_models", path)
    core = _load(gg, name)
    quantized = [n for n, p in core.model.diffusion_model.named_parameters() if P._is_ggml(p)]
    assert len(quantized) >= 4 * ck.WAN["num_layers"], "the file was not read as quantized GGUF weights"
    ref = _sample(core)
    ref_l = _sample(pl.apply_lora(ns, core, lora, strength_model=0.8)[0])
    assert not torch.equal(ref, ref_l)  # the LoRA matters
    mm.unload_all_models()
    del core

    base = _load(gg, name)
    from pinstream.discovery import discover_blocks

    d = discover_blocks(base.model.diffusion_model, min_fraction=0.2)
    budget = (d.nonblock_bytes + 3 * d.largest_block_bytes + 8192) / 2**30 if mode == "budget" else 0.0
    (model,), msg = N.run_offload_model(base, mode, budget, 1, True)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    assert isinstance(model, gg.GGUFModelPatcher)  # ComfyUI-GGUF's patcher underneath
    h = model.pinstream.handle
    assert h.mode.name == mode, msg
    dm = model.model.diffusion_model
    # the quantized bytes as stored (not dequantized on the host); the format stays on the weight
    stored = sum(p.numel() * p.element_size() for p in dm.parameters())
    assert h.model_bytes == stored
    assert all(P._is_ggml(dict(dm.named_parameters())[n]) for n in quantized)
    assert torch.equal(_sample(model), ref)
    if mode in ("sequential", "budget"):
        st = h.stats()
        assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
    # a LoRA after the node: ComfyUI-GGUF's clone keeps the PinStream patcher
    model_l, _ = pl.apply_lora(ns, model, lora, strength_model=0.8)
    assert isinstance(model_l, P.PinStreamPatcherMixin)
    assert torch.equal(_sample(model_l), ref_l)
    mm.unload_all_models()
    assert torch.equal(_sample(model), ref)  # and the model without it is unchanged
    mm.unload_all_models()
    assert not h.loaded
