"""Clones, branches and patches around a PinStream model, against real ComfyUI source:
object patches of one clone, hook LoRA, a mode changed on a LoRA'd model, the loader's
output used on a second branch, LoRA with fp8 transfer, and the RAM figure. Each
result is compared with ComfyUI's own patcher on the same file, bit for bit."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # its helpers: files, sampling, references

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm = T.ns, T.pl, T.mm
tiny_text_encoder_configs = T.tiny_text_encoder_configs  # a fixture of test_nodes, used here too
KIND = "wan21_t2v"


def _shift(model, shift):
    """A clone with an object patch (its model_sampling replaced), as ModelSamplingSD3 /
    AuraFlow nodes make on every Wan and FLUX workflow."""
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    return ModelSamplingAuraFlow().patch_aura(model, shift)[0]


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload"])
def test_object_patches_of_one_clone_do_not_reach_another(mode):
    core = T._core_unet(KIND)
    ref_a = T._sample(KIND, _shift(core, 2.0))
    mm.unload_all_models()
    ref_b = T._ref(KIND)
    assert not torch.equal(ref_a, ref_b)  # the object patch matters
    (base,), _ = T._ps_unet(KIND, mode)
    a = _shift(base, 2.0)
    assert torch.equal(T._sample(KIND, a), ref_a)
    assert torch.equal(T._sample(KIND, base), ref_b)  # A's model_sampling put back
    assert torch.equal(T._sample(KIND, a), ref_a)
    mm.unload_all_models()


def _hooked_sample(model):
    from comfy_extras.nodes_hooks import CreateHookLoraModelOnly, SetModelHooksOnCond

    name = T.name_of("loras", T.f("wan_lora"))
    hooks = CreateHookLoraModelOnly().create_hook_model_only(name, 0.8)[0]
    pos, neg = pl.wan_conditioning()
    pos = SetModelHooksOnCond().attach_hook(pos, hooks)[0]  # the LoRA on the positive only
    return pl.sample_latent(ns, model, pos, neg, latent=pl.wan_latent(32, 32, 5))


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_hook_lora_equals_core_and_leaves_the_weights_as_loaded(mode):
    T.f("wan_lora")
    ns.folder_paths.filename_list_cache.clear()
    core = T._core_unet(KIND)
    ref = _hooked_sample(core)
    mm.unload_all_models()
    del core
    plain = T._ref(KIND)
    assert not torch.equal(ref, plain)
    (model,), _ = T._ps_unet(KIND, mode)
    h = model.pinstream.handle
    uploaded = h.stats()["bytes_uploaded"]
    assert torch.equal(_hooked_sample(model), ref)
    if mode in ("full_load", "model_offload"):
        # every weight has its own device memory: patched there, no reload per hook change
        assert h.stats()["bytes_uploaded"] - uploaded <= h.plan["device_bytes"]
    assert torch.equal(T._sample(KIND, model), plain)  # hook patches taken out again
    mm.unload_all_models()
    assert torch.equal(T._sample(KIND, model), plain)  # and not left in the host copy
    assert torch.equal(_hooked_sample(model), ref)
    mm.unload_all_models()


def _lora_ref():
    core = T._core_unet(KIND)
    ref = T._sample(KIND, pl.apply_lora(ns, core, T.f("wan_lora"), strength_model=0.8)[0])
    mm.unload_all_models()
    return ref


def test_changing_the_mode_of_a_lora_model_applies_the_lora_once():
    """LoRA, then "PinStream Offload (Model)"; the user changes its mode and runs again:
    the node runs again on the same LoRA'd patcher."""
    ref, plain = _lora_ref(), T._ref(KIND)
    base = T._core_unet(KIND)
    base_l, _ = pl.apply_lora(ns, base, T.f("wan_lora"), strength_model=0.8)
    for mode in ("sequential", "model_offload", "budget"):
        budget = T._budget_for(KIND) if mode == "budget" else 0.0
        (m,), _ = N.run_offload_model(base_l, mode, budget, 1, True)
        assert m.pinstream.handle.mode.name == mode
        assert torch.equal(T._sample(KIND, m), ref), mode
    mm.unload_all_models()
    assert torch.equal(T._sample(KIND, base), plain)  # the loader's own output stays plain
    mm.unload_all_models()


def test_offloading_a_model_comfyui_holds_loaded_with_a_lora():
    """A LoRA clone sampled by ComfyUI's own patcher first (weights patched in place,
    on the device), then the loader's output handed to PinStream: PinStream must take
    the file's weights, not the LoRA'd ones."""
    ref, plain = _lora_ref(), T._ref(KIND)
    base = T._core_unet(KIND)
    base_l, _ = pl.apply_lora(ns, base, T.f("wan_lora"), strength_model=0.8)
    assert torch.equal(T._sample(KIND, base_l), ref)  # core path, still loaded
    (ps,), _ = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert torch.equal(T._sample(KIND, ps), plain)
    # the older clone now runs through PinStream too, with its LoRA
    assert isinstance(base_l, P.PinStreamPatcherMixin)
    assert torch.equal(T._sample(KIND, base_l), ref)
    assert torch.equal(T._sample(KIND, ps), plain)
    mm.unload_all_models()


def test_the_loader_output_on_another_branch_stays_plain():
    """Loader -> PinStream Offload -> LoRA -> KSampler, and the same loader output to a
    second KSampler: that one must not see the LoRA (nor load the weights its own way)."""
    ref, plain = _lora_ref(), T._ref(KIND)
    base = T._core_unet(KIND)
    (ps,), _ = N.run_offload_model(base, "budget", T._budget_for(KIND), 1, True)
    ps_l, _ = pl.apply_lora(ns, ps, T.f("wan_lora"), strength_model=0.8)
    assert torch.equal(T._sample(KIND, ps_l), ref)
    assert isinstance(base, P.PinStreamPatcherMixin)
    assert torch.equal(T._sample(KIND, base), plain)
    assert torch.equal(T._sample(KIND, ps_l), ref)
    mm.unload_all_models()


def test_lora_reaches_the_blocks_with_fp8_transfer():
    ref = _lora_ref()
    name = T.name_of("diffusion_models", T.f(KIND))
    (m,), _ = N.run_load_diffusion_model(name, "default", "sequential", 0.0, 1, True, "fp8_e4m3")
    plain_fp8 = T._sample(KIND, m)
    m_l, _ = pl.apply_lora(ns, m, T.f("wan_lora"), strength_model=0.8)
    lora_fp8 = T._sample(KIND, m_l)
    assert m_l.pinstream.handle.mode.transfer_dtype == "fp8_e4m3"
    effect = (ref - T._ref(KIND)).abs().max().item()
    # the LoRA is in the fp8 blocks: much closer to the LoRA result than the plain fp8 one
    assert (lora_fp8 - ref).abs().max().item() < 0.25 * effect
    assert (plain_fp8 - ref).abs().max().item() > 0.5 * effect
    # and taken out again for the clone without it
    assert torch.equal(T._sample(KIND, m), plain_fp8)
    mm.unload_all_models()


@pytest.mark.parametrize("mode", ["sequential", "model_offload"])
def test_ram_usage_counts_the_host_copy(mode):
    (m,), _ = T._ps_unet(KIND, mode)
    h = m.pinstream.handle
    assert m.get_ram_usage() >= h.model_bytes
    assert m.get_ram_usage() == h.runtime.host_bytes + m._extra_bytes()


def test_a_weight_patch_failing_half_way_leaves_no_clone_on_half_patched_weights(monkeypatch):
    """A LoRA whose patching fails after some weights were written: the next run of the
    plain model (or of another clone) must not take the host copy for its own."""
    plain = T._ref(KIND)
    (base,), _ = T._ps_unet(KIND, "sequential")
    assert torch.equal(T._sample(KIND, base), plain)
    lora, _ = pl.apply_lora(ns, base, T.f("wan_lora"), strength_model=0.8)
    import comfy.lora

    real, calls = comfy.lora.calculate_weight, {"n": 0}

    def fails_on_the_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("patch failed for this test")
        return real(*a, **k)

    monkeypatch.setattr(comfy.lora, "calculate_weight", fails_on_the_third)
    with pytest.raises(RuntimeError, match="patch failed for this test"):
        T._sample(KIND, lora)
    monkeypatch.setattr(comfy.lora, "calculate_weight", real)
    assert base.loaded_size() == 0 and not base.pinstream.handle.loaded  # nothing half loaded
    assert torch.equal(T._sample(KIND, base), plain)
    mm.unload_all_models()


def _clip_patches(clip):
    """Weight patches on the text encoder's blocks, as LoraLoader adds them to a CLIP
    (here "diff" patches: a delta per weight)."""
    sd = clip.patcher.model_state_dict()
    g = torch.Generator().manual_seed(5)
    keys = [k for k in sorted(sd) if k.endswith(".weight") and ".block." in k and sd[k].dim() == 2][:6]
    assert keys
    return {k: (0.05 * torch.randn(sd[k].shape, generator=g, dtype=torch.float32).to(sd[k].dtype),) for k in keys}


@pytest.mark.parametrize("mode", ["model_offload", "sequential"])
def test_text_encoder_weight_patches_equal_core(mode, tiny_text_encoder_configs):
    core = ns.sd.load_clip(ckpt_paths=[str(T.f("umt5"))], clip_type=ns.sd.CLIPType.WAN)
    plain_ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    core_p = core.clone()
    core_p.add_patches(_clip_patches(core), 0.8)
    ref = pl.encode_text(ns, core_p, "a cat on a boat")[0][0]
    assert not torch.equal(ref, plain_ref)
    mm.unload_all_models()
    (clip,), msg = N.run_load_clip(T.name_of("text_encoders", T.f("umt5")), "wan", mode, 0.0, 1, True)
    assert isinstance(clip.patcher, P.PinStreamPatcherMixin), msg
    patched = clip.clone()
    patched.add_patches(_clip_patches(clip), 0.8)
    assert torch.equal(pl.encode_text(ns, patched, "a cat on a boat")[0][0], ref)
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], plain_ref)
    mm.unload_all_models()


@pytest.mark.parametrize("mode", ["full_load", "budget"])
def test_the_plan_fits_what_comfyuis_memory_manager_allows(mode, monkeypatch):
    """load_models_gpu lets a model hold less VRAM when a larger latent needs room for
    activations: the PinStream plan shrinks to that, the result stays exact, and the plan
    the node made comes back when there is room again (here ComfyUI's allowance is set;
    on this CPU machine it is otherwise unlimited)."""
    plain = T._ref(KIND)
    (m,), _ = T._ps_unet(KIND, mode)
    h = m.pinstream.handle
    assert torch.equal(T._sample(KIND, m), plain)
    first = h.plan["device_bytes"]
    d = h.discovery
    minimum = d.nonblock_bytes + 2 * d.largest_block_bytes  # sequential, prefetch 1
    target = (minimum + first) // 2
    assert minimum < target < first
    allowance = m._extra_bytes() + target
    real = mm.LoadedModel.model_load

    def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
        return real(self, allowance, force_patch_weights=force_patch_weights)

    monkeypatch.setattr(mm.LoadedModel, "model_load", model_load)
    mm.unload_all_models()
    assert torch.equal(T._sample(KIND, m), plain)
    assert h.plan["device_bytes"] <= target and h.plan["streamed_blocks"] > 0 and h.mode.name == "budget"
    assert m.model_size() <= allowance and "fitted to" in h.mode.reason
    monkeypatch.setattr(mm.LoadedModel, "model_load", real)
    mm.unload_all_models()
    assert torch.equal(T._sample(KIND, m), plain)
    assert h.plan["device_bytes"] == first and h.mode.name == mode
    mm.unload_all_models()
