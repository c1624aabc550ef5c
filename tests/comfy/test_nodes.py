"""PinStream nodes in-process against real ComfyUI source (--cpu, host engine).

Every comparison is against ComfyUI's own loader and sampler on the same tiny file,
with the same seed: PinStream must give the same latent, bit for bit.
"""

import contextlib
import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import harness

ns = harness.load_comfyui()

import checkpoints as ck
import pipeline as pl
import torch

import comfy_nodes
from comfy_nodes import nodes as N
from comfy_nodes import patcher as P
from pinstream import _C

mm = ns.model_management
GIB = 1024**3
MODES = ["full_load", "model_offload", "sequential", "budget", "auto"]


_FILES = {}


def f(kind):
    if kind not in _FILES:
        _FILES[kind] = {
            "sd15_unet": ck.write_sd15_unet, "sd15_ckpt": ck.write_sd15_checkpoint, "sdxl_unet": ck.write_sdxl_unet,
            "flux": ck.write_flux, "wan21_t2v": ck.write_wan21_t2v, "wan21_i2v": ck.write_wan21_i2v,
            "flashportrait": ck.write_flashportrait, "wan22_t2v": lambda: ck.write_wan22_a14b(kind="t2v"),
            "umt5": ck.write_umt5_xxl, "wan_vae": ck.write_wan21_vae, "taesd": ck.write_taesd_vae,
            "sd15_lora": ck.write_sd15_lora, "wan_lora": ck.write_wan_lora,
        }[kind]()
        harness.refresh_model_lists(ns)
    return _FILES[kind]


def name_of(folder, path):
    n = pl._name_in(ns, folder, path)
    assert n is not None, (folder, path)
    return n


_BUDGETS = {}


def _budget_for(kind, prefetch=1):
    """A budget (GiB) that streams part of the model: non-block part, the ring, and
    about half of the remaining blocks resident."""
    if (kind, prefetch) not in _BUDGETS:
        from pinstream.discovery import discover_blocks

        core = _core_unet(kind) if kind != "sd15_ckpt" else pl.load_checkpoint(ns, f(kind))[0]
        d = discover_blocks(core.model.diffusion_model, min_fraction=0.2)
        ring = (prefetch + 1) * d.largest_block_bytes
        rest = sum(d.block_bytes) - ring
        _BUDGETS[(kind, prefetch)] = (d.nonblock_bytes + ring + max(rest, 0) // 2 + 8192) / GIB
        del core
    return _BUDGETS[(kind, prefetch)]


def _sample(kind, model):
    if kind in ("sd15_unet", "sd15_ckpt"):
        pos, neg = pl.sd15_conditioning()
        return pl.sample_latent(ns, model, pos, neg, width=64, height=64)
    if kind == "sdxl_unet":
        pos, neg = pl.sdxl_conditioning(width=32, height=32)
        return pl.sample_latent(ns, model, pos, neg, width=32, height=32)
    if kind == "flux":
        pos, neg = pl.flux_conditioning()
        with pl.tiny_flux_detection(ns):
            return pl.sample_latent(ns, model, pos, neg, width=64, height=64)
    pos, neg = pl.wan_conditioning()
    if kind in ("wan21_i2v", "flashportrait"):
        start = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(3))
        pos, neg = pl.wan_i2v_conditioning(ns, pos, neg, start, pl.wan_frames_latent(5))
    return pl.sample_latent(ns, model, pos, neg, latent=pl.wan_latent(32, 32, 5))


def _core_unet(kind):
    if kind == "flux":
        with pl.tiny_flux_detection(ns):
            return pl.load_unet(ns, f(kind))
    return pl.load_unet(ns, f(kind))


def _ps_unet(kind, mode, budget=None, prefetch=1, ram_budget=0.0):
    budget = _budget_for(kind, prefetch) if (budget is None and mode == "budget") else (budget or 0.0)
    name = name_of("diffusion_models", f(kind))
    if kind == "flux":
        with pl.tiny_flux_detection(ns):
            return N.run_load_diffusion_model(name, "default", mode, budget, prefetch, True, ram_budget_gb=ram_budget)
    return N.run_load_diffusion_model(name, "default", mode, budget, prefetch, True, ram_budget_gb=ram_budget)


_REFS = {}


def _ref(kind):
    if kind not in _REFS:
        model = _core_unet(kind)
        _REFS[kind] = _sample(kind, model)
        del model
        mm.unload_all_models()
    return _REFS[kind]


UNET_KINDS = ["sd15_unet", "flux", "wan21_t2v", "wan21_i2v", "flashportrait", "sdxl_unet"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", UNET_KINDS)
def test_diffusion_loader_same_latent_as_core(kind, mode):
    if kind == "sdxl_unet" and mode not in ("sequential", "budget"):
        pytest.skip("SDXL's tiny model is ~0.5 GB: two modes keep the suite fast")
    ref = _ref(kind)
    (model,), msg = _ps_unet(kind, mode)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    h = model.pinstream.handle
    if mode != "auto":
        assert h.mode.name == mode, msg
    out = _sample(kind, model)
    assert torch.equal(out, ref), f"{kind} {mode}: max diff {(out - ref).abs().max().item()}"
    if mode in ("sequential", "budget"):
        st = h.stats()
        assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
    mm.unload_all_models()
    assert not h.loaded


def test_block_discovery_for_each_family():
    expected = {
        "sd15_unet": ("input_blocks", "output_blocks"), "flux": ("double_blocks", "single_blocks"),
        "wan21_t2v": ("blocks",), "wan21_i2v": ("blocks",), "flashportrait": ("blocks",),
    }
    for kind, containers in expected.items():
        (model,), _ = _ps_unet(kind, "sequential")
        names = [n for n, _ in model.pinstream.handle.discovery.blocks]
        for c in containers:
            assert any(n.startswith(c + ".") for n in names), (kind, c, names[:5])
        if kind == "sd15_unet":
            dm = model.model.diffusion_model
            mid = sum(p.numel() * p.element_size() for p in dm.middle_block.parameters()) if dm.middle_block else 0
            total = sum(p.numel() * p.element_size() for p in dm.parameters())
            # The middle block is a block of its own when it carries real weight.
            assert ("middle_block" in names) == (mid >= 0.05 * total), (mid / total, names)
        mm.unload_all_models()


@pytest.fixture
def tiny_text_encoder_configs(monkeypatch):
    """The tiny text encoders load only with a config override (their sizes are not the
    standard ones); the node calls ComfyUI's loaders, which get the override here."""
    import copy
    import functools
    import inspect

    sd = ns.sd
    monkeypatch.setattr(sd, "load_checkpoint_guess_config", functools.partial(
        sd.load_checkpoint_guess_config, te_model_options=copy.deepcopy(ck.CLIP_L_TE_OPTIONS)))
    real_load_clip = sd.load_clip
    real_sig = inspect.signature(real_load_clip)

    @functools.wraps(real_load_clip)  # callers that inspect the signature see the real one
    def load_clip(*args, **kwargs):  # the override, merged with the caller's options (positional or not)
        bound = real_sig.bind(*args, **kwargs)
        bound.arguments["model_options"] = {**copy.deepcopy(ck.UMT5_MODEL_OPTIONS),
                                            **(bound.arguments.get("model_options") or {})}
        return real_load_clip(*bound.args, **bound.kwargs)

    monkeypatch.setattr(sd, "load_clip", load_clip)


@pytest.mark.parametrize("mode", ["model_offload", "sequential", "budget"])
def test_checkpoint_loader_same_latent(mode, tiny_text_encoder_configs):
    core_model, _, _ = ns.sd.load_checkpoint_guess_config(str(f("sd15_ckpt")), output_vae=True, output_clip=True)[:3]
    ref = _sample("sd15_ckpt", core_model)
    del core_model
    mm.unload_all_models()
    name = name_of("checkpoints", f("sd15_ckpt"))
    (model, clip, vae), msg = N.run_load_checkpoint(name, mode, _budget_for("sd15_ckpt") if mode == "budget" else 0.0,
                                                    1, True)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    assert clip is not None and vae is not None
    assert torch.equal(_sample("sd15_ckpt", model), ref)
    mm.unload_all_models()


@pytest.mark.parametrize("mode", ["model_offload", "sequential"])
def test_clip_loader_umt5_same_conditioning(mode, tiny_text_encoder_configs):
    core = ns.sd.load_clip(ckpt_paths=[str(f("umt5"))], clip_type=ns.sd.CLIPType.WAN)
    ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    mm.unload_all_models()
    name = name_of("text_encoders", f("umt5"))
    (clip,), msg = N.run_load_clip(name, "wan", mode, 0.0, 1, True)
    assert isinstance(clip.patcher, P.PinStreamPatcherMixin), msg
    names = [n for n, _ in clip.patcher.pinstream.handle.discovery.blocks]
    assert any(".block." in n or n.startswith("block.") or "encoder.block" in n for n in names), names[:3]
    out = pl.encode_text(ns, clip, "a cat on a boat")[0][0]
    assert torch.equal(out, ref)
    mm.unload_all_models()


def core_vae_and_latent(kind):
    """Core's VAE for the tiny test file ``kind`` and a latent of its shape (skips where this
    ComfyUI cannot build the tiny Wan VAE)."""
    try:
        core = pl.load_vae(ns, f(kind))
    except RuntimeError as e:
        if kind == "wan_vae" and "size mismatch" in str(e):
            pytest.skip("this ComfyUI builds the Wan VAE at full width (dim 96) only; the tiny test VAE has dim 8")
        raise
    shape = (1, 16, 2, 4, 4) if kind == "wan_vae" else (1, 4, 8, 8)
    return core, torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["wan_vae", "taesd"])
def test_vae_loader_same_decode(kind):
    core, lat = core_vae_and_latent(kind)
    ref = pl.vae_decode(ns, core, lat)
    mm.unload_all_models()
    (vae,), msg = N.run_load_vae(name_of("vae", f(kind)), "model_offload", 0.0, 1, True)
    assert isinstance(vae.patcher, P.PinStreamPatcherMixin), msg
    assert torch.equal(pl.vae_decode(ns, vae, lat), ref)
    mm.unload_all_models()


@pytest.mark.parametrize("order", ["lora_after_loader", "lora_before_offload_node"])
@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload"])
def test_lora_equals_core_full_load(order, mode):
    lora = f("wan_lora")
    core = pl.load_unet(ns, f("wan21_t2v"))
    core_l, _ = pl.apply_lora(ns, core, lora, strength_model=0.8)
    ref = _sample("wan21_t2v", core_l)
    plain_ref = _ref("wan21_t2v")
    assert not torch.equal(ref, plain_ref)  # the LoRA matters
    mm.unload_all_models()
    budget = _budget_for("wan21_t2v") if mode == "budget" else 0.0
    if order == "lora_after_loader":
        (model,), _ = _ps_unet("wan21_t2v", mode)
        model_l, _ = pl.apply_lora(ns, model, lora, strength_model=0.8)
    else:
        base = pl.load_unet(ns, f("wan21_t2v"))
        base_l, _ = pl.apply_lora(ns, base, lora, strength_model=0.8)
        (model_l,), _ = N.run_offload_model(base_l, mode, budget, 1, True)
    assert isinstance(model_l, P.PinStreamPatcherMixin)
    assert torch.equal(_sample("wan21_t2v", model_l), ref)
    if mode == "budget":
        # the LoRA reaches split blocks too: tensors in their resident head and in their rest
        assert model_l.pinstream.handle.stats()["plan"]["split_blocks"] > 0
    mm.unload_all_models()
    if order == "lora_after_loader":
        # The un-LoRA'd clone of the same model still gives the plain result.
        assert torch.equal(_sample("wan21_t2v", model), plain_ref)
        assert torch.equal(_sample("wan21_t2v", model_l), ref)
        mm.unload_all_models()


def test_interrupt_during_sampling_then_next_prompt_correct():
    ref = _ref("wan21_t2v")
    (model,), _ = _ps_unet("wan21_t2v", "sequential", prefetch=2)
    block = model.model.diffusion_model.blocks[2]
    fired = {"n": 0}

    def interrupt(_m, _a):
        if fired["n"] == 0:
            fired["n"] += 1
            mm.interrupt_current_processing(True)
            # ComfyUI >= 0.3.7x checks the flag before every op; older ones at the next
            # progress callback. Either way the exception leaves mid-forward, as here.
            mm.throw_exception_if_processing_interrupted()

    hk = block.register_forward_pre_hook(interrupt)
    with pytest.raises(mm.InterruptProcessingException):
        _sample("wan21_t2v", model)
    hk.remove()
    mm.interrupt_current_processing(False)
    assert torch.equal(_sample("wan21_t2v", model), ref)
    mm.unload_all_models()


def test_unload_releases_device_then_pinned_memory():
    gc.collect()
    base = _C.live_bytes()
    (model,), _ = _ps_unet("wan21_t2v", "budget")
    _sample("wan21_t2v", model)
    h = model.pinstream.handle
    assert h.loaded and h.runtime.device_bytes > 0
    mm.unload_all_models()  # what /free does first
    assert not h.loaded and h.runtime.device_bytes == 0
    assert model.loaded_size() == 0
    live = _C.live_bytes()
    assert live["host"] > base["host"]  # pinned copy kept while the model is cached
    del model, h
    gc.collect()  # /free then drops the cached outputs and collects
    live = _C.live_bytes()
    assert live["host"] == base["host"] and live["device"] == base["device"]


def _count_copies_in_unload(handles) -> list:
    """Watches each handle's unload: the number of tensor copies (aten::copy_, which a
    write-back of weights changed on the device is) each unload made, in a list."""
    counts = []
    for h in handles:
        def unload(_original=h.unload):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                _original()
            counts.append(sum(1 for e in prof.events() if e.name == "aten::copy_"))

        h.unload = unload
    return counts


def test_the_copy_counter_sees_a_write_back():
    """The control of the two-experts test: a weight changed on the device outside
    inference mode is written back by unload, and the counter sees that copy."""
    (model,), _ = _ps_unet("wan21_t2v", "model_offload")
    h = model.pinstream.handle
    copies = _count_copies_in_unload([h])
    with torch.inference_mode(False), torch.no_grad():
        m = torch.nn.Linear(4, 4)
        import pinstream

        hm = pinstream.offload(m, mode="full_load", device="cpu", engine="host")
        copies_m = _count_copies_in_unload([hm])
        m.weight.add_(1.0)  # a normal tensor: its version counter moves
        hm.unload()
        hm.detach()
    h.unload()
    assert len(copies_m) == 1 and copies_m[0] >= 1 and copies == [0], (copies_m, copies)


def test_two_experts_switch_without_device_to_host_copies():
    hi_path, lo_path = f("wan22_t2v")
    ref, pos, neg = pl.two_experts_reference(ns, hi_path, lo_path)
    mm.unload_all_models()
    for mode in ("model_offload", "sequential"):
        (hi,), _ = N.run_load_diffusion_model(name_of("diffusion_models", hi_path), "default", mode, 0.0, 1, True)
        (lo,), _ = N.run_load_diffusion_model(name_of("diffusion_models", lo_path), "default", mode, 0.0, 1, True)
        copies = _count_copies_in_unload([hi.pinstream.handle, lo.pinstream.handle])
        for _ in range(2):
            out = pl.sample_two_experts(ns, hi, lo, pos, neg, pl.wan_latent(32, 32, 5), steps=4, switch_at=2)
            assert torch.equal(out, ref), mode
        mm.unload_all_models()
        # every switch unloaded an expert, and none copied a weight back to the host
        assert len(copies) >= 2 and sum(copies) == 0, (mode, copies)
        for m in (hi, lo):
            assert m.pinstream.handle.stats()["acquires"] > 0 or mode == "model_offload"


def test_auto_under_a_small_budget_streams(monkeypatch):
    monkeypatch.delenv("GPU_MEMORY_MODE", raising=False)
    ref = _ref("wan21_t2v")
    (model,), msg = _ps_unet("wan21_t2v", "auto", budget=_budget_for("wan21_t2v"))
    h = model.pinstream.handle
    assert h.mode.name in ("budget", "sequential"), msg
    assert "auto" in h.mode.reason
    assert torch.equal(_sample("wan21_t2v", model), ref)
    mm.unload_all_models()


def test_gpu_memory_mode_is_the_default_for_auto(monkeypatch):
    monkeypatch.setenv("GPU_MEMORY_MODE", "sequential_cpu_offload")
    (model,), msg = _ps_unet("wan21_t2v", "auto")
    assert model.pinstream.handle.mode.name == "sequential" and "GPU_MEMORY_MODE" in msg
    mm.unload_all_models()


def test_stats_node_reports_each_managed_model():
    (model,), _ = _ps_unet("wan21_t2v", "sequential")
    _sample("wan21_t2v", model)
    (text,), ui_text = N.run_stats()
    assert text == ui_text
    label = name_of("diffusion_models", f("wan21_t2v"))
    assert label in text and "sequential" in text
    for word in ("resident", "streamed last run", "GB/s", "stall", "pinned"):
        assert word in text
    from pinstream import pin_cap as E

    first = text.splitlines()[0]  # the process's pinned memory against the cap
    assert first.startswith("pinned host memory: PinStream ")
    assert N._gb(E.pinned_bytes_in_use()) in first and N._gb(E.default_pin_cap_bytes()) in first
    row = [r for r in (P.collect_stats(s) for s in P.managed_states()) if r["label"] == label][-1]
    assert row["bytes_streamed_last_run"] == 0  # counted from the report above
    _sample("wan21_t2v", model)
    row = [r for r in (P.collect_stats(s) for s in P.managed_states()) if r["label"] == label][-1]
    assert row["bytes_streamed_last_run"] > 0 and row["upload_gbps"] > 0
    mm.unload_all_models()


def test_clone_keeps_the_class_and_shares_the_state():
    (model,), _ = _ps_unet("wan21_t2v", "sequential")
    c = model.clone()
    assert type(c) is type(model) and c.pinstream is model.pinstream
    assert c.model_size() == model.model_size()
    mm.unload_all_models()


def test_memory_manager_sees_plan_sizes():
    (model,), _ = _ps_unet("wan21_t2v", "sequential")
    full = sum(t.numel() * t.element_size() for t in model.model.parameters())
    assert model.model_size() < full  # the ring, not the whole model
    assert model.loaded_size() == 0
    mm.load_models_gpu([model])
    assert model.loaded_size() == model.pinstream.handle.runtime.device_bytes + model._extra_bytes()
    assert model.loaded_size() <= model.model_size()
    mm.unload_all_models()
    assert model.loaded_size() == 0
    # Host memory as newer memory managers ask for it: the pinned copy, no second one.
    st = model.pinstream.handle.stats()
    assert model.pinned_memory_size() == st["pinned_bytes"] > 0
    assert model.loaded_ram_size() == st["host_bytes"] >= full
    assert not model.is_dynamic()


def test_bad_node_inputs_give_clear_errors():
    name = name_of("diffusion_models", f("wan21_t2v"))
    cases = [
        (("fast", 0.0, 1, True), "unknown mode 'fast'; allowed"),
        (("budget", 0.0, 1, True), "needs vram_budget_gb > 0"),
        (("auto", -1.0, 1, True), "finite number >= 0"),
        (("auto", float("nan"), 1, True), "finite number >= 0"),
        (("auto", 0.0, -1, True), "prefetch_blocks must be a whole number from 0 to 16"),
        (("auto", 0.0, 99, True), "prefetch_blocks"),
        (("auto", 0.0, 1, "yes"), "pin_memory must be true or false"),
        (("budget", 1e-6, 1, True), "below the minimum"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            N.run_load_diffusion_model(name, "default", *args)
    with pytest.raises(ValueError, match="transfer_dtype must be one of auto, compressed, fp8_e4m3"):
        N.run_load_diffusion_model(name, "default", "sequential", 0.0, 1, True, "int4")
    with pytest.raises(ValueError, match="weight_dtype"):
        N.run_load_diffusion_model(name, "int3", "auto", 0.0, 1, True)
    with pytest.raises(ValueError, match="CLIP type"):
        N.run_load_clip(name_of("text_encoders", f("umt5")), "nonsense", "auto", 0.0, 1, True)


def test_missing_native_build_passes_through_and_says_so(monkeypatch):
    from pinstream import native

    monkeypatch.setattr(native, "native_available", lambda: False)
    base = pl.load_unet(ns, f("wan21_t2v"))
    (out,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert out is base and "passed through unchanged" in msg and "install.py" in msg


def test_tensor_subclass_weights_managed_or_passed_through_with_a_reason():
    """A subclass whose data sits in an ordinary storage (GGUF's GGMLTensor is one) is
    managed, the same object kept; one whose data is hidden behind a wrapper with no
    flatten protocol is passed through, with the reason."""
    class Quant(torch.Tensor):
        pass

    class Opaque(torch.Tensor):
        @staticmethod
        def __new__(cls, inner):
            return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype, device=inner.device)

        def __init__(self, inner):
            self._inner = inner

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            import torch.utils._pytree as pytree

            return func(*pytree.tree_map(lambda x: x._inner if isinstance(x, Opaque) else x, args), **(kwargs or {}))

    ref = _ref("wan21_t2v")
    base = pl.load_unet(ns, f("wan21_t2v"))
    layer = base.model.diffusion_model.blocks[0].ffn[0]
    layer.weight = torch.nn.Parameter(layer.weight.data.as_subclass(Quant), requires_grad=False)
    quant = layer.weight
    (out,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert isinstance(out, P.PinStreamPatcherMixin), msg
    assert out.model.diffusion_model.blocks[0].ffn[0].weight is quant
    assert torch.equal(_sample("wan21_t2v", out), ref)
    mm.unload_all_models()

    base = pl.load_unet(ns, f("wan21_t2v"))
    layer = base.model.diffusion_model.blocks[0].ffn[0]
    w = layer.weight.data
    del layer.weight
    layer.register_buffer("weight", Opaque(w))
    (out,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert out is base and "tensor subclass" in msg and "Opaque" in msg, msg


def test_exports_v3_or_classic_never_both():
    ex = comfy_nodes.exports()
    assert set(ex) == ({"comfy_entrypoint"} if comfy_nodes.use_v3() else
                       {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"})
    classic = comfy_nodes.exports(prefer_v3=False)
    assert set(classic) == {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"}
    for node_id, cls in classic["NODE_CLASS_MAPPINGS"].items():
        types = cls.INPUT_TYPES()
        for section in types.values():
            for inp, (_kind, opts) in section.items():
                assert opts.get("tooltip"), (node_id, inp)
        assert cls.CATEGORY == "PinStream"


def test_v3_schemas_build_and_execute():
    if not comfy_nodes.has_v3_api():
        pytest.skip("this ComfyUI has no V3 node API")
    from comfy_nodes import v3

    ids = set()
    for node in v3.NODES:
        schema = node.define_schema()
        ids.add(schema.node_id)
        assert schema.category == "PinStream"
        for inp in schema.inputs:
            assert inp.tooltip, (schema.node_id, inp.id)
    assert {"PinStreamLoadDiffusionModel", "PinStreamLoadCheckpoint", "PinStreamLoadCLIP", "PinStreamLoadVAE",
            "PinStreamOffloadModel", "PinStreamOffloadCLIP", "PinStreamOffloadWanVideoModel", "PinStreamLoadFlashPortrait",
            "PinStreamOffloadPipeline",
            "PinStreamStats"} == ids
    loader = next(n for n in v3.NODES if n.define_schema().node_id == "PinStreamLoadDiffusionModel")
    out = loader.execute(unet_name=name_of("diffusion_models", f("wan21_t2v")), weight_dtype="default",
                         mode="sequential", vram_budget_gb=0.0, prefetch_blocks=1, pin_memory=True)
    model = out.args[0] if hasattr(out, "args") else out.result[0]
    assert torch.equal(_sample("wan21_t2v", model), _ref("wan21_t2v"))
    mm.unload_all_models()


def test_one_hundred_comfyui_load_unload_cycles_leak_nothing():
    """Load through the PinStream loader, load on the device via ComfyUI's memory
    manager, unload, drop: 100 times. Tolerance: live PinStream bytes (host chunks,
    pinned, device, runtimes) exactly back to the baseline; RSS, after returning free
    heap pages to the OS, within 8 MiB of the baseline (the model is 6 MiB: a leak of
    one copy per cycle would be 600 MiB)."""
    import ctypes

    import psutil

    def trim():
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    name = name_of("diffusion_models", f("wan21_t2v"))
    modes = ["sequential", "budget", "model_offload", "full_load"]
    proc = psutil.Process()

    def cycle(i):
        (model,), _ = N.run_load_diffusion_model(name, "default", modes[i % 4],
                                                 _budget_for("wan21_t2v") if modes[i % 4] == "budget" else 0.0,
                                                 1, True)
        mm.load_models_gpu([model])
        assert model.loaded_size() > 0
        mm.unload_all_models()
        assert model.loaded_size() == 0

    for i in range(20):
        cycle(i)
    trim()
    base = _C.live_bytes()
    rss0 = proc.memory_info().rss
    for i in range(100):
        cycle(i)
    trim()
    live = _C.live_bytes()
    assert (live["host"], live["pinned"], live["device"], live["runtimes"]) == (
        base["host"], base["pinned"], base["device"], base["runtimes"])
    grown = proc.memory_info().rss - rss0
    assert grown < 8 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 100 ComfyUI load/unload cycles"


def test_fp8_transfer_node_option_streams_fp8_and_reports_the_error():
    ref = _ref("wan21_t2v")
    name = name_of("diffusion_models", f("wan21_t2v"))
    (model,), msg = N.run_load_diffusion_model(name, "default", "sequential", 0.0, 1, True, "fp8_e4m3")
    h = model.pinstream.handle
    assert h.mode.transfer_dtype == "fp8_e4m3", msg
    out = _sample("wan21_t2v", model)
    assert not torch.equal(out, ref)  # lossy by design
    assert (out - ref).abs().max().item() < 0.5 * ref.abs().max().item()  # but close
    st = h.stats()
    assert st["fp8_blocks"] == len(h.discovery.blocks) and st["fp8_max_abs_error"] > 0
    (text,), _ = N.run_stats()
    assert "fp8 transfer: weight error max" in text
    mm.unload_all_models()


def _tensor_subclass_weights(dm):
    return [n for n, p in dm.named_parameters() if type(p.data) is not torch.Tensor]


def _has_comfy_kitchen():
    try:
        import comfy_kitchen  # noqa: F401
    except ImportError:
        return False
    return True


def _storage(p):
    from pinstream.discovery import storage_tensors

    return storage_tensors(p)


@pytest.mark.parametrize("kind,mode", [("wan21_t2v", "sequential"), ("wan21_t2v", "budget"), ("flux", "sequential")])
@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "fp8_scaled"])
def test_fp8_checkpoint_streams_as_stored(kind, scaled, mode):
    """A Wan or FLUX file stored in fp8 (plain, loaded with weight_dtype fp8_e4m3fn; or
    "scaled", detected by ComfyUI): the same latent as ComfyUI's own loader, and the
    weights cross the link and sit in pinned RAM as the fp8 bytes of the file, never
    expanded on the host; ComfyUI's ops upcast them per layer on the device."""
    path = ck.write_fp8_variant(kind, scaled=scaled)
    harness.refresh_model_lists(ns)
    name = name_of("diffusion_models", path)
    weight_dtype = "default" if scaled else "fp8_e4m3fn"
    def detect():
        return pl.tiny_flux_detection(ns) if kind == "flux" else contextlib.nullcontext()

    def ps_load(budget):
        with detect():
            return N.run_load_diffusion_model(name, weight_dtype, mode, budget, 1, True)

    with detect():
        core = pl.load_unet(ns, path, weight_dtype)
    # ComfyUI 0.3.x keeps fp8 parameters (plus scale_weight); 0.8+ makes scaled files
    # QuantizedTensor weights (fp8 codes and a scale inside a tensor subclass)
    wrapped = _tensor_subclass_weights(core.model.diffusion_model)
    if scaled and harness._version_tuple(ns.version) >= (0, 8) and _has_comfy_kitchen():
        assert wrapped, "ComfyUI 0.8+ was expected to load the scaled file as QuantizedTensor"
    assert not wrapped or (scaled and all(type(p).__name__ == "QuantizedTensor" for n, p in
                                          core.model.diffusion_model.named_parameters() if n in wrapped))
    fp8_names = [n for n, p in core.model.diffusion_model.named_parameters()
                 if _storage(p)[0].dtype == torch.float8_e4m3fn]
    assert len(fp8_names) >= 8, "ComfyUI did not keep the weights in fp8"
    from pinstream.discovery import discover_blocks

    d = discover_blocks(core.model.diffusion_model, min_fraction=0.2)
    # budget: the non-block part, the ring and one more block; the others are streamed
    budget = (d.nonblock_bytes + 3 * d.largest_block_bytes + 8192) / GIB if mode == "budget" else 0.0
    ref = _sample(kind, core)
    del core
    mm.unload_all_models()
    (model,), msg = ps_load(budget)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    h = model.pinstream.handle
    assert h.mode.name == mode and h.mode.transfer_dtype == "auto", msg
    dm = model.model.diffusion_model
    stored = {n: sum(x.numel() * x.element_size() for x in _storage(p)) for n, p in dm.named_parameters()}
    assert sum(_storage(p)[0].dtype == torch.float8_e4m3fn for p in dm.parameters()) == len(fp8_names)
    assert _tensor_subclass_weights(dm) == wrapped
    # the blocks PinStream packed are the stored bytes: 1 byte per fp8 weight element
    for (bname, _), nbytes in zip(h.discovery.blocks, h.discovery.block_bytes):
        assert nbytes == sum(v for n, v in stored.items() if n.startswith(bname + ".")), bname
    assert h.model_bytes == sum(stored.values())
    out = _sample(kind, model)
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max().item()}"
    st = h.stats()
    assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
    # what crossed the link: the non-block part once, then fp8 blocks as stored (resident
    # ones once, streamed ones at every use; a split block its head once, then its rest)
    plan = st["plan"]
    sizes = h.discovery.block_bytes
    heads = plan["split_bytes"]
    streamed = st["bytes_uploaded"] - plan["fixed_bytes"]
    n_up = [st["block_uploads"][i] for i in range(len(sizes))]  # per block, in order
    assert sum(n_up) > 0
    want = sum(hd + (n - 1) * (b - hd) if hd else n * b for n, b, hd in zip(n_up, sizes, heads))
    # (packed blocks align each tensor to 64 bytes: a little over the sum of the tensors,
    # more so for a split block's rest, whose padding is counted against its raw bytes)
    assert want <= streamed <= want * 1.02, (streamed, want, n_up)
    # ...less than half of what the same blocks weigh in fp32
    from safetensors.torch import load_file

    fp32 = load_file(str(ck.write_wan21_t2v() if kind == "wan21_t2v" else ck.write_flux()))
    for (bname, _), nbytes in zip(h.discovery.blocks, sizes):
        full = sum(v.numel() * 4 for k, v in fp32.items() if k.startswith(bname + "."))
        assert nbytes < 0.5 * full, (bname, nbytes, full)
    assert st["host_bytes"] <= 1.1 * h.model_bytes + 2**20  # one pinned copy, at fp8 size
    assert st.get("fp8_blocks", 0) == 0  # no transfer quantization: sent as stored
    mm.unload_all_models()


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "fp8_scaled"])
def test_lora_on_fp8_checkpoint_equals_core(scaled):
    """LoRA on weights stored in fp8 (plain fp8 parameters; scaled fp8 through the op's
    own set_weight, a QuantizedTensor on ComfyUI 0.8+): PinStream's output equals
    ComfyUI's full load with the same LoRA, and the un-LoRA'd model is restored. Run
    under inference_mode, as ComfyUI runs a prompt (its fp8 rounding needs no autograd)."""
    with torch.inference_mode():
        _lora_on_fp8(scaled)


def _lora_on_fp8(scaled):
    path = ck.write_fp8_variant("wan21_t2v", scaled=scaled)
    harness.refresh_model_lists(ns)
    weight_dtype = "default" if scaled else "fp8_e4m3fn"
    lora = f("wan_lora")
    core = pl.load_unet(ns, path, weight_dtype)
    plain_ref = _sample("wan21_t2v", core)
    core_l, _ = pl.apply_lora(ns, core, lora, strength_model=0.8)
    ref = _sample("wan21_t2v", core_l)
    assert not torch.equal(ref, plain_ref)  # the LoRA matters
    del core, core_l
    mm.unload_all_models()
    (model,), msg = N.run_load_diffusion_model(name_of("diffusion_models", path), weight_dtype, "sequential",
                                               0.0, 1, True)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    model_l, _ = pl.apply_lora(ns, model, lora, strength_model=0.8)
    assert torch.equal(_sample("wan21_t2v", model_l), ref)
    mm.unload_all_models()
    assert torch.equal(_sample("wan21_t2v", model), plain_ref)
    mm.unload_all_models()
