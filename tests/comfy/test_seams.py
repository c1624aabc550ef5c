"""Where PinStream meets ComfyUI's memory manager and patchers, against real ComfyUI
source: memory comes back when a model is dropped (reference counting only, the cycle
collector off), loaders upload nothing at node time, partially_unload takes hook weight
patches out as ComfyUI's own does, and a re-offload that fails leaves the model managed
as it was."""

import gc
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # files, sampling, references

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P
from pinstream import _C, pin_cap

ns, pl, mm = T.ns, T.pl, T.mm
KIND = "wan21_t2v"


@pytest.fixture
def no_gc():
    mm.unload_all_models()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        mm.unload_all_models()


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_dropping_the_loader_output_frees_its_memory_at_once(mode, no_gc):
    T._ref(KIND)
    base = _C.live_bytes()
    (model,), _ = T._ps_unet(KIND, mode)
    T._sample(KIND, model)
    assert _C.live_bytes()["host"] > base["host"]
    assert model.loaded_size() > 0  # still loaded: ComfyUI holds it only weakly
    del model
    live = _C.live_bytes()
    assert live["host"] == base["host"] and live["pinned"] == base["pinned"], (live, base)
    assert live["device"] == base["device"] and live["runtimes"] == base["runtimes"]
    mm.cleanup_models()
    assert not any(lm.real_model() is not None and hasattr(lm.real_model(), "pinstream_state")
                   for lm in mm.current_loaded_models)


def test_loaders_upload_nothing_at_node_time():
    (model,), _ = T._ps_unet(KIND, "full_load")
    h = model.pinstream.handle
    assert h.mode.name == "full_load" and not h.loaded
    assert h.stats()["bytes_uploaded"] == 0 and h.device_bytes == 0
    assert torch.equal(T._sample(KIND, model), T._ref(KIND))
    assert h.mode.name == "full_load" and h.stats()["bytes_uploaded"] > 0
    mm.unload_all_models()


def _hooked_on_both(model):
    """A hook LoRA on both conditionings: the hooks stay patched from one batch (and
    step) to the next, so ComfyUI re-patches only when something took them out."""
    from comfy_extras.nodes_hooks import CreateHookLoraModelOnly, SetModelHooksOnCond

    name = T.name_of("loras", T.f("wan_lora"))
    hooks = CreateHookLoraModelOnly().create_hook_model_only(name, 0.8)[0]
    pos, neg = pl.wan_conditioning()
    pos = SetModelHooksOnCond().attach_hook(pos, hooks)[0]
    neg = SetModelHooksOnCond().attach_hook(neg, hooks)[0]
    return pl.sample_latent(ns, model, pos, neg, latent=pl.wan_latent(32, 32, 5))


@pytest.mark.parametrize("mode", ["full_load", "model_offload", "sequential"])
def test_partially_unload_takes_hook_patches_out(mode, monkeypatch):
    """Hooked sampling, with ComfyUI's memory manager freeing a little of the model
    between two batches (what free_memory does when another model needs room): the
    result equals core's, and the hooked weights are not left in the host copy."""
    T.f("wan_lora")
    ns.folder_paths.filename_list_cache.clear()
    core = T._core_unet(KIND)
    ref = _hooked_on_both(core)
    mm.unload_all_models()
    del core
    assert not torch.equal(ref, T._ref(KIND))
    (model,), _ = T._ps_unet(KIND, mode)
    orig = ns.model_patcher.ModelPatcher.apply_hooks
    freed = []

    def apply_hooks(self, *args, **kwargs):
        if self.hook_backup and len(freed) < 2:
            freed.append(self.partially_unload(self.offload_device, memory_to_free=1))
            assert not self.hook_backup and self.current_hooks is None  # taken out, as core does
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(P.PinStreamPatcherMixin, "apply_hooks", apply_hooks, raising=False)
    assert torch.equal(_hooked_on_both(model), ref)
    assert freed  # it ran with the hooks patched
    monkeypatch.undo()
    mm.unload_all_models()
    assert torch.equal(T._sample(KIND, model), T._ref(KIND))  # nothing hooked stayed in the host copy
    mm.unload_all_models()


def test_a_reoffload_that_fails_leaves_the_model_managed_as_it_was():
    ref = T._ref(KIND)
    (model,), _ = T._ps_unet(KIND, "sequential")
    old = model.pinstream.handle
    assert torch.equal(T._sample(KIND, model), ref)
    # a budget far below the ring's minimum: the new plan cannot be made
    with pytest.raises(ValueError, match="minimum"):
        N.run_offload_model(model, "budget", 1e-6, 1, True)
    st = model.pinstream
    h = st.handle
    assert h is not None and not h.detached and h is not old
    assert h.mode.name == "sequential"
    assert st in P.managed_states() and any(r["mode"] == "sequential" for r in map(P.collect_stats, [st]))
    assert pin_cap.pinned_bytes_in_use() >= h.pinned_bytes > 0
    assert torch.equal(T._sample(KIND, model), ref)
    mm.unload_all_models()


def test_adopted_patchers_are_tracked_on_the_model():
    base = T._core_unet(KIND)
    (ps,), _ = N.run_offload_model(base, "sequential", 0.0, 1, True)
    lora, _ = pl.apply_lora(ns, ps, T.f("wan_lora"), strength_model=0.8)
    adopted = P.adopted_patchers(base.model)
    assert base in adopted and ps in adopted and lora in adopted
    assert all(isinstance(p, P.PinStreamPatcherMixin) for p in adopted)
    n = len(adopted)
    del lora
    assert len(adopted) == n - 1  # weakly: a patcher ComfyUI drops leaves the set
    mm.unload_all_models()
