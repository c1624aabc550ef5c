"""transfer_dtype "compressed" through the ComfyUI nodes, against real ComfyUI source: the
weights held in pinned RAM and sent in the exact coded form give core's latent bit for bit,
with and without LoRA, for every loader. ComfyUI is asked to keep the weights in bf16
(--bf16-unet, --bf16-text-enc, --bf16-vae, as a user on a GPU would run), so there is
something to code; the references are core's loaders under the same flags."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # files, sampling, references

from comfy_nodes import nodes as N

ns, pl, mm = T.ns, T.pl, T.mm
KINDS = ["wan21_t2v", "flux", "sd15_unet"]


@pytest.fixture(autouse=True)
def bf16_weights(monkeypatch):
    for flag in ("bf16_unet", "bf16_text_enc", "bf16_vae"):
        monkeypatch.setattr(ns.args, flag, True, raising=False)
    T._REFS.clear()
    T._BUDGETS.clear()
    yield
    mm.unload_all_models()
    T._REFS.clear()  # references and budgets made with bf16 weights
    T._BUDGETS.clear()


def _ps(kind, mode):
    # the as-stored test budget, plus room for the staging buffer of the coded uploads
    budget = T._budget_for(kind) * 1.25 if mode == "budget" else 0.0
    name = T.name_of("diffusion_models", T.f(kind))
    run = lambda: N.run_load_diffusion_model(name, "default", mode, budget, 1, True, "compressed")  # noqa: E731
    if kind == "flux":
        with pl.tiny_flux_detection(ns):
            return run()
    return run()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_diffusion_loader_compressed_equals_core(kind, mode):
    ref = T._ref(kind)
    (model,), msg = _ps(kind, mode)
    h = model.pinstream.handle
    assert h.mode.transfer_dtype == "compressed", msg
    core = T._core_unet(kind)
    assert any(p.dtype == torch.bfloat16 for p in core.model.diffusion_model.parameters())  # the flag took
    del core
    st = h.stats()
    assert st["exact_coded_tensors"] > 0 and st["exact_ratio"] < 0.75, (st["exact_ratio"], st["exact_skips"])
    assert torch.equal(T._sample(kind, model), ref)
    assert torch.equal(T._sample(kind, model), ref)
    text = N.run_stats()[1]
    assert "compressed (exact)" in text and "tensors coded" in text
    if mode == "budget" and kind == "wan21_t2v":
        # equal blocks: the budget holds some coded on the device, decoded into a slot per use (the
        # other kinds' blocks differ in size: their budgets leave no room for a large block coded)
        assert h.plan["coded_blocks"] > 0 and "held coded on the device" in text, (h.plan["describe"], h.mode.reason)
        assert h.stats()["coded_refills"] > 0


@pytest.mark.parametrize("mode", ["sequential", "model_offload"])
def test_lora_on_a_compressed_model_equals_core(mode):
    kind = "wan21_t2v"
    core = T._core_unet(kind)
    ref = T._sample(kind, pl.apply_lora(ns, core, T.f("wan_lora"), strength_model=0.8)[0])
    mm.unload_all_models()
    del core
    plain = T._ref(kind)
    (model,), _ = _ps(kind, mode)
    lora, _ = pl.apply_lora(ns, model, T.f("wan_lora"), strength_model=0.8)
    assert torch.equal(T._sample(kind, lora), ref)
    assert torch.equal(T._sample(kind, model), plain)  # the LoRA came out of the coded copy again
    assert torch.equal(T._sample(kind, lora), ref)
    st = model.pinstream.handle.stats()
    assert st["exact_ratio"] < 0.75  # still held coded


def test_text_encoder_loader_compressed_equals_core(tiny_text_encoder_configs):
    core = ns.sd.load_clip(ckpt_paths=[str(T.f("umt5"))], clip_type=ns.sd.CLIPType.WAN)
    ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    mm.unload_all_models()
    del core
    (clip,), msg = N.run_load_clip(T.name_of("text_encoders", T.f("umt5")), "wan", "sequential", 0.0, 1, True,
                                   "compressed")
    h = clip.patcher.pinstream.handle
    assert h.mode.transfer_dtype == "compressed", msg
    st = h.stats()
    # ComfyUI keeps this tiny encoder's weights in fp32 on the CPU: sent as stored, and said why
    assert st["exact_coded_tensors"] > 0 or any("16- or 8-bit" in why for why in st["exact_skips"]), st
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], ref)


tiny_text_encoder_configs = T.tiny_text_encoder_configs


@pytest.mark.parametrize("kind", ["taesd", "wan_vae"])
def test_vae_loader_compressed_equals_core(kind):
    core, lat = T.core_vae_and_latent(kind)
    ref = pl.vae_decode(ns, core, lat)
    (vae,), msg = N.run_load_vae(T.name_of("vae", T.f(kind)), "model_offload", 0.0, 1, True, "compressed")
    assert vae.patcher.pinstream.handle.mode.transfer_dtype == "compressed", msg
    assert torch.equal(pl.vae_decode(ns, vae, lat), ref)


def test_hook_lora_on_a_compressed_model_is_refused_clearly():
    import test_clones as C

    (model,), _ = _ps("wan21_t2v", "sequential")
    with pytest.raises(ValueError, match="hook LoRA .* compressed"):
        C._hooked_sample(model)
    mm.unload_all_models()
