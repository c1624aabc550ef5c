"""Dynamic VRAM (ComfyUI 0.1x and newer: ``comfy.model_patcher.ModelPatcherDynamic``).

ComfyUI switches it on in main.py by rebinding ``comfy.model_patcher.CoreModelPatcher`` to
``ModelPatcherDynamic`` (and only on CUDA with comfy-aimdo). The PinStream loaders must opt
out for the models they manage, and "PinStream Offload" on a model the switch made dynamic
must manage ComfyUI's non-dynamic copy of it, or say why it cannot; never a silent no-op.

This machine has no GPU, so ``ModelPatcherDynamic`` itself cannot be built (it reserves a
virtual VRAM range through comfy-aimdo). The switch is thrown with a stand-in instead: a
``ModelPatcher`` that says ``is_dynamic()`` and carries ComfyUI's own
``ModelPatcherDynamic.get_non_dynamic_delegate``. Everything else, the loaders reading the
switch, ``disable_dynamic``, ``cached_patcher_init`` and the clone that rebuilds the
non-dynamic copy, is the running ComfyUI's code. Skipped where ComfyUI has no Dynamic VRAM.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # its helpers: files, names, references, ComfyUI

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm = T.ns, T.pl, T.mm
tiny_text_encoder_configs = T.tiny_text_encoder_configs  # a fixture of test_nodes, used here too

pytestmark = [
    pytest.mark.skipif(not ns.has_dynamic_vram,
                       reason=f"ComfyUI {ns.version} has no Dynamic VRAM (ModelPatcherDynamic)"),
    pytest.mark.skipif(ns.features.get("device", "cpu") != "cpu",
                       reason="the stand-in is for the CPU; on a GPU test_dynamic_vram_cuda.py runs the real one"),
]


def _stand_in():
    mp = ns.model_patcher

    class DynamicStandIn(mp.ModelPatcher):
        built = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.non_dynamic_delegate_model = None
            DynamicStandIn.built.append(self)

        def is_dynamic(self):
            return True

        get_non_dynamic_delegate = mp.ModelPatcherDynamic.get_non_dynamic_delegate

    return DynamicStandIn


@pytest.fixture
def dynamic_switch(monkeypatch):
    """Returns a function that throws ComfyUI's switch (as main.py does) and the stand-in class."""
    cls = _stand_in()

    def on():
        monkeypatch.setattr(ns.model_patcher, "CoreModelPatcher", cls)
        return cls

    yield on
    mm.unload_all_models()


def test_the_switch_makes_core_loaders_dynamic(dynamic_switch):
    """The simulation engages this ComfyUI's own switch: core's loader builds the stand-in."""
    Dyn = dynamic_switch()
    core = pl.load_unet(ns, T.f("wan21_t2v"))
    assert isinstance(core, Dyn) and core.is_dynamic()
    assert core.cached_patcher_init is not None  # what ComfyUI rebuilds the non-dynamic copy from


@pytest.mark.parametrize("mode", ["model_offload", "sequential", "budget"])
def test_diffusion_loader_opts_out_and_matches_core(mode, dynamic_switch):
    ref = T._ref("wan21_t2v")  # core, without Dynamic VRAM
    budget = T._budget_for("wan21_t2v") if mode == "budget" else None  # (sized from a core load)
    Dyn = dynamic_switch()
    (model,), msg = T._ps_unet("wan21_t2v", mode, budget)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    assert not model.is_dynamic() and not Dyn.built, "the PinStream loader built a dynamic patcher"
    assert torch.equal(T._sample("wan21_t2v", model), ref)


def test_checkpoint_loader_opts_out_and_matches_core(dynamic_switch, tiny_text_encoder_configs):
    core_model = ns.sd.load_checkpoint_guess_config(str(T.f("sd15_ckpt")), output_vae=True, output_clip=True)[0]
    ref = T._sample("sd15_ckpt", core_model)
    del core_model
    mm.unload_all_models()
    Dyn = dynamic_switch()
    name = T.name_of("checkpoints", T.f("sd15_ckpt"))
    (model, clip, vae), msg = N.run_load_checkpoint(name, "sequential", 0.0, 1, True)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    assert not model.is_dynamic() and not clip.patcher.is_dynamic()
    assert all(p.model is not model.model for p in Dyn.built)
    assert torch.equal(T._sample("sd15_ckpt", model), ref)


def test_clip_loader_opts_out_and_matches_core(dynamic_switch, tiny_text_encoder_configs):
    core = ns.sd.load_clip(ckpt_paths=[str(T.f("umt5"))], clip_type=ns.sd.CLIPType.WAN)
    ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    mm.unload_all_models()
    Dyn = dynamic_switch()
    (clip,), msg = N.run_load_clip(T.name_of("text_encoders", T.f("umt5")), "wan", "sequential", 0.0, 1, True)
    assert isinstance(clip.patcher, P.PinStreamPatcherMixin), msg
    assert not clip.patcher.is_dynamic() and not Dyn.built
    assert clip.cond_stage_model is clip.patcher.model
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], ref)


@pytest.mark.parametrize("kind", ["wan_vae", "taesd"])
def test_vae_loader_manages_the_non_dynamic_copy(kind, dynamic_switch):
    """ComfyUI's VAE() takes no disable_dynamic, so every VAE is built dynamic; PinStream
    manages the non-dynamic copy ComfyUI rebuilds from the recipe the loader leaves."""
    core, lat = T.core_vae_and_latent(kind)
    ref = pl.vae_decode(ns, core, lat)
    mm.unload_all_models()
    Dyn = dynamic_switch()
    (vae,), msg = N.run_load_vae(T.name_of("vae", T.f(kind)), "model_offload", 0.0, 1, True)
    assert Dyn.built, "this ComfyUI built the VAE without Dynamic VRAM; the case is not exercised"
    assert isinstance(vae.patcher, P.PinStreamPatcherMixin), msg
    assert not vae.patcher.is_dynamic()
    assert vae.first_stage_model is vae.patcher.model
    assert vae.patcher.model is not Dyn.built[0].model  # a rebuilt copy, not the dynamic VAE's model
    assert torch.equal(pl.vae_decode(ns, vae, lat), ref)


@pytest.mark.parametrize("with_lora", [False, True], ids=["plain", "lora"])
def test_offload_node_on_a_dynamic_model_manages_its_non_dynamic_copy(with_lora, dynamic_switch):
    lora = T.f("wan_lora")
    core = pl.load_unet(ns, T.f("wan21_t2v"))
    if with_lora:
        core, _ = pl.apply_lora(ns, core, lora, strength_model=0.8)
    ref = T._sample("wan21_t2v", core)
    del core
    mm.unload_all_models()
    Dyn = dynamic_switch()
    base = pl.load_unet(ns, T.f("wan21_t2v"))
    if with_lora:
        base, _ = pl.apply_lora(ns, base, lora, strength_model=0.8)
    assert base.is_dynamic()
    (model,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    assert not model.is_dynamic() and model.model is not base.model
    assert torch.equal(T._sample("wan21_t2v", model), ref)
    assert isinstance(base, Dyn)  # the user's input is left as it was


def test_dynamic_model_without_a_recipe_passes_through_and_says_why(dynamic_switch):
    Dyn = dynamic_switch()
    base = pl.load_unet(ns, T.f("wan21_t2v"))
    base.cached_patcher_init = None  # as a custom loader that registers none
    (out,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert out is base and isinstance(out, Dyn)
    assert "Dynamic VRAM" in msg and "--disable-dynamic-vram" in msg and "passed through" in msg
