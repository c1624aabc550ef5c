"""PinStream on more of ComfyUI's REAL diffusion-model classes (CPU, host engine).

Families: HunyuanVideo, SD3 MMDiT (3.5-medium layout), LTX-Video, Qwen-Image, Lumina2,
HiDream, Chroma, Cosmos Predict2, Mochi. Each is ComfyUI's own ``comfy.ldm.*`` class, built
directly the way ``comfy/model_base.py`` builds it (``operations=comfy.ops.disable_weight_init``
for fp32 weights; ``comfy.ops.manual_cast`` for bf16 weights computed in fp32) from a tiny
config (hidden 64, 2-3 blocks per list, 1-2 heads) with seeded random weights. Inputs follow
each ``forward`` signature as ``BaseModel._apply_model`` calls it.

* For every family and mode (sequential prefetch 1 and 2, budget with about half the block
  bytes resident, model_offload) the offloaded module gives the reference output bit for
  bit on two consecutive forwards, and again after ``detach()``.
* Discovery picks the family's repeated block lists, on the tiny model and on the
  full-size config built on the meta device (no storage), so the tiny proportions do not
  hide what a real checkpoint gets.
* Four families also go through ComfyUI proper (supported_models config -> BaseModel ->
  ModelPatcher -> KSampler): ``run_offload_model`` gives core's latent bit for bit.

A class missing from the running ComfyUI version is skipped with the reason.
"""

import dataclasses
import importlib
import inspect
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import harness

ns = harness.load_comfyui()

import checkpoints as ck
import comfy.ops
import torch

import pinstream
from pinstream.discovery import discover_blocks

GIB = 1024**3


# ---- helpers ---------------------------------------------------------------------------------

def _cls(module_name, class_name):
    """ComfyUI class or pytest.skip when this ComfyUI version lacks it."""
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        pytest.skip(f"ComfyUI {ns.version}: {module_name} cannot be imported ({e})")
    cls = getattr(mod, class_name, None)
    if cls is None:
        pytest.skip(f"ComfyUI {ns.version}: {module_name}.{class_name} does not exist")
    return cls


def _accepted(fn, cfg):
    """Keep the keys ``fn`` takes (options a version lacks are dropped; the family's
    required ones are all present in every version tested)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(cfg)
    return {k: v for k, v in cfg.items() if k in params}


def _params_cfg(params_cls, cfg):
    """Keys of a ComfyUI ``*Params`` dataclass (HunyuanVideoParams, ChromaParams): the
    fields differ between versions, and the dataclass rejects unknown ones."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    missing = names - set(cfg)
    assert not missing, f"{params_cls.__name__} needs {sorted(missing)} (new ComfyUI field?)"
    return {k: v for k, v in cfg.items() if k in names}


def _seed_weights(model, seed):
    sd = ck._seeded_state_dict(model, seed)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    sd = {k: v.to(dtypes[k]) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    return model


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


# ---- families --------------------------------------------------------------------------------
# name: spec(tiny) -> (class, constructor kwargs as model_base passes them (the unet_config,
# image_model included), inputs() -> forward kwargs as BaseModel._apply_model passes them,
# expected block-list names). Full-size kwargs are the ones model_detection gives the real
# checkpoint; tiny ones shrink widths and depths only.


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _hunyuan_video(tiny):
    mod = "comfy.ldm.hunyuan_video.model"
    cls = _cls(mod, "HunyuanVideo")
    params_cls = _cls(mod, "HunyuanVideoParams")
    cfg = {"in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072,
           "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40, "axes_dim": [16, 56, 56],
           "theta": 256, "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True, "byt5": False,
           "meanflow": False, "use_cond_type_embedding": False, "vision_in_dim": None, "meanflow_sum": False}
    if tiny:
        cfg.update(vec_in_dim=32, context_in_dim=32, hidden_size=64, num_heads=2, depth=2,
                   depth_single_blocks=3, axes_dim=[8, 12, 12])
    kwargs = {"image_model": "hunyuan_video", **_params_cfg(params_cls, cfg)}

    def inputs():
        g = _g(11)
        return {"x": torch.randn(1, 16, 2, 4, 4, generator=g), "timestep": torch.tensor([600.0]),
                "context": torch.randn(1, 6, 32, generator=g), "y": torch.randn(1, 32, generator=g),
                "guidance": torch.tensor([6.0]), "attention_mask": None, "transformer_options": {}}
    return cls, kwargs, inputs, ["double_blocks", "single_blocks"]


def _sd3_mmdit(tiny):
    cls = _cls("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper")
    # SD3.5 medium layout: RMS qk-norm, extra x-block self attention in the first layers,
    # a learned pos_embed buffer cropped to the image. Hidden size is 64 * depth (one head
    # of 64 per depth unit); num_blocks sets the block count independently.
    cfg = {"input_size": None, "patch_size": 2, "in_channels": 16, "out_channels": 16, "depth": 24, "num_blocks": 24,
           "adm_in_channels": 2048, "pos_embed_max_size": 384, "num_patches": 384 * 384, "qk_norm": "rms",
           "pos_embed_scaling_factor": None, "x_block_self_attn_layers": list(range(13)),
           "context_embedder_config": {"target": "torch.nn.Linear",
           "params": {"in_features": 4096, "out_features": 1536}}}
    if tiny:
        cfg.update(depth=1, num_blocks=3, adm_in_channels=32, pos_embed_max_size=8, num_patches=64,
                   x_block_self_attn_layers=[0],
                   context_embedder_config={"target": "torch.nn.Linear",
                                            "params": {"in_features": 32, "out_features": 64}})
    kwargs = {**_accepted(cls.__init__, cfg)}

    def inputs():
        g = _g(12)
        return {"x": torch.randn(1, 16, 8, 8, generator=g), "timesteps": torch.tensor([600.0]),
                "context": torch.randn(1, 6, 32, generator=g), "y": torch.randn(1, 32, generator=g),
                "transformer_options": {}}
    return cls, kwargs, inputs, ["joint_blocks"]


def _ltxv(tiny):
    cls = _cls("comfy.ldm.lightricks.model", "LTXVModel")
    cfg = {"in_channels": 128, "cross_attention_dim": 2048, "attention_head_dim": 64, "num_attention_heads": 32,
           "caption_channels": 4096, "num_layers": 28, "positional_embedding_theta": 10000.0,
           "positional_embedding_max_pos": [20, 2048, 2048], "vae_scale_factors": (8, 32, 32)}
    if tiny:
        cfg.update(in_channels=16, cross_attention_dim=64, attention_head_dim=32, num_attention_heads=2,
                   caption_channels=32, num_layers=3)
    kwargs = {"image_model": "ltxv", **cfg}

    def inputs():
        g = _g(13)
        return {"x": torch.randn(1, 16, 2, 4, 4, generator=g), "timestep": torch.tensor([0.6]),
                "context": torch.randn(1, 6, 32, generator=g), "attention_mask": None, "frame_rate": 25,
                "transformer_options": {}}
    return cls, kwargs, inputs, ["transformer_blocks"]


def _qwen_image(tiny):
    cls = _cls("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel")
    cfg = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
           "num_attention_heads": 24, "joint_attention_dim": 3584, "axes_dims_rope": (16, 56, 56)}
    if tiny:
        cfg.update(num_layers=3, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                   axes_dims_rope=(8, 12, 12))
    kwargs = {"image_model": "qwen_image", **cfg}

    def inputs():
        g = _g(14)
        return {"x": torch.randn(1, 16, 1, 4, 4, generator=g), "timestep": torch.tensor([0.6]),
                "context": torch.randn(1, 6, 48, generator=g), "attention_mask": None, "transformer_options": {}}
    return cls, kwargs, inputs, ["transformer_blocks"]


def _lumina2(tiny):
    cls = _cls("comfy.ldm.lumina.model", "NextDiT")
    cfg = {"patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304, "n_layers": 26, "n_refiner_layers": 2,
           "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512],
           "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}
    if tiny:
        cfg.update(dim=64, cap_feat_dim=32, n_layers=3, n_heads=2, n_kv_heads=1, axes_dims=[8, 12, 12],
                   multiple_of=16)
    kwargs = {"image_model": "lumina2", **_accepted(cls.__init__, cfg)}

    def inputs():
        g = _g(15)
        return {"x": torch.randn(1, 16, 4, 4, generator=g), "timesteps": torch.tensor([0.4]),
                "context": torch.randn(1, 6, 32, generator=g), "num_tokens": 6, "attention_mask": None,
                "transformer_options": {}}
    # the two refiners are lists of the same JointTransformerBlock as ``layers``
    return cls, kwargs, inputs, ["noise_refiner", "context_refiner", "layers"]


def _hidream(tiny):
    cls = _cls("comfy.ldm.hidream.model", "HiDreamImageTransformer2DModel")
    cfg = {"patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 16, "num_single_layers": 32,
           "attention_head_dim": 128, "num_attention_heads": 20, "caption_channels": [4096, 4096],
           "text_emb_dim": 2048, "num_routed_experts": 4, "num_activated_experts": 2, "axes_dims_rope": [64, 32, 32],
           "max_resolution": [128, 128], "llama_layers": list(range(32)) + [31] * 16}
    if tiny:
        cfg.update(num_layers=2, num_single_layers=3, attention_head_dim=32, num_attention_heads=2,
                   caption_channels=[32, 32], text_emb_dim=32, axes_dims_rope=[8, 12, 12],
                   max_resolution=[16, 16], llama_layers=[0, 1, 2, 3, 3])
    kwargs = {"image_model": "hidream", **cfg}

    def inputs():
        g = _g(16)
        return {"x": torch.randn(1, 16, 4, 4, generator=g), "t": torch.tensor([600.0]),
                "y": torch.randn(1, 32, generator=g), "context": torch.randn(1, 6, 32, generator=g),
                "encoder_hidden_states_llama3": torch.randn(1, 4, 5, 32, generator=g),
                "transformer_options": {}}
    return cls, kwargs, inputs, ["double_stream_blocks", "single_stream_blocks"]


def _chroma(tiny):
    mod = "comfy.ldm.chroma.model"
    cls = _cls(mod, "Chroma")
    params_cls = _cls(mod, "ChromaParams")
    cfg = {"in_channels": 64, "out_channels": 64, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
           "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000,
           "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5,
           "txt_ids_dims": [], "vec_in_dim": None}
    if tiny:
        cfg.update(context_in_dim=32, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=3,
                   axes_dim=[8, 12, 12], out_dim=64, hidden_dim=32, n_layers=2)
    kwargs = {"image_model": "chroma", **_params_cfg(params_cls, cfg)}

    def inputs():
        g = _g(17)
        return {"x": torch.randn(1, 16, 4, 4, generator=g), "timestep": torch.tensor([0.6]),
                "context": torch.randn(1, 6, 32, generator=g), "guidance": torch.tensor([0.0]),
                "transformer_options": {}}
    return cls, kwargs, inputs, ["double_blocks", "single_blocks"]


def _cosmos_predict2(tiny):
    cls = _cls("comfy.ldm.cosmos.predict2", "MiniTrainDIT")
    cfg = {"max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16, "out_channels": 16,
           "patch_spatial": 2, "patch_temporal": 1, "concat_padding_mask": True, "model_channels": 2048,
           "num_blocks": 28, "num_heads": 16, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
           "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
           "use_adaln_lora": True, "adaln_lora_dim": 256, "extra_per_block_abs_pos_emb": False,
           "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
           "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
           "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}
    if tiny:
        cfg.update(max_img_h=16, max_img_w=16, max_frames=8, model_channels=64, num_blocks=3, num_heads=2,
                   crossattn_emb_channels=32, adaln_lora_dim=16)
    kwargs = {"image_model": "cosmos_predict2", **_accepted(cls.__init__, cfg)}

    def inputs():
        g = _g(18)
        return {"x": torch.randn(1, 16, 2, 4, 4, generator=g), "timesteps": torch.tensor([0.3]),
                "context": torch.randn(1, 6, 32, generator=g), "fps": None, "transformer_options": {}}
    return cls, kwargs, inputs, ["blocks"]


def _mochi(tiny):
    cls = _cls("comfy.ldm.genmo.joint_model.asymm_models_joint", "AsymmDiTJoint")
    cfg = {"depth": 48, "patch_size": 2, "num_heads": 24, "hidden_size_x": 3072, "hidden_size_y": 1536,
           "mlp_ratio_x": 4.0, "mlp_ratio_y": 4.0, "learn_sigma": False, "in_channels": 12, "qk_norm": True,
           "qkv_bias": False, "out_bias": True, "attn_drop": 0.0, "patch_embed_bias": True,
           "posenc_preserve_area": True, "timestep_mlp_bias": True, "attend_to_padding": False,
           "timestep_scale": 1000.0, "use_t5": True, "t5_feat_dim": 4096, "t5_token_length": 256, "rope_theta": 10000.0}
    if tiny:
        # AsymmetricJointBlock asserts hidden_size_x * mlp_ratio_x == 1536 * 8 (the real 3072 * 4.0):
        # the tiny blocks keep that MLP width (an 8192-wide SwiGLU, ~6 MB a block)
        cfg.update(depth=3, num_heads=2, hidden_size_x=64, mlp_ratio_x=1536 * 8 / 64, hidden_size_y=32,
                   t5_feat_dim=32, t5_token_length=8)
    kwargs = {"image_model": "mochi_preview", **cfg}

    def inputs():
        g = _g(19)
        return {"x": torch.randn(1, 12, 2, 4, 4, generator=g), "timestep": torch.tensor([0.6]),
                "context": torch.randn(1, 8, 32, generator=g), "attention_mask": torch.ones(1, 8, dtype=torch.bool),
                "num_tokens": 8, "transformer_options": {}}
    return cls, kwargs, inputs, ["blocks"]


FAMILIES = {
    "hunyuan_video": _hunyuan_video,
    "sd3_mmdit": _sd3_mmdit,
    "ltxv": _ltxv,
    "qwen_image": _qwen_image,
    "lumina2": _lumina2,
    "hidream": _hidream,
    "chroma": _chroma,
    "cosmos_predict2": _cosmos_predict2,
    "mochi": _mochi,
}
SEEDS = {name: 7100 + i for i, name in enumerate(FAMILIES)}
# Lone blocks (discovery rule 3) that only the TINY configs get: with 2-3 blocks per list a
# sibling such as HunyuanVideo's txt_in (a 2-block token refiner) holds over 5% of the bytes,
# so it is streamed as one block; at full size (test_full_size_discovery_on_meta) it is not.
TINY_LONE_BLOCKS = {"hunyuan_video": ["txt_in"]}
# bf16 weights computed in fp32 through comfy.ops.manual_cast (what model_base picks when
# the weight dtype is not the compute dtype); two families keep it quick
MANUAL_CAST = ["qwen_image", "hunyuan_video"]


def _build(name, tiny=True, device="cpu", manual_cast=False):
    cls, kwargs, inputs, expected = FAMILIES[name](tiny)
    ops = comfy.ops.manual_cast if manual_cast else comfy.ops.disable_weight_init
    dtype = torch.bfloat16 if manual_cast else torch.float32
    m = cls(**kwargs, dtype=dtype, device=device, operations=ops)
    if device != "meta":
        _seed_weights(m, SEEDS[name])
    m.eval()
    return m, inputs, expected


def _run(m, inputs):
    out = _first(m(**inputs()))
    assert torch.is_tensor(out) and torch.isfinite(out).all()
    return out.clone()


def _expected_names(m, expected, lone=()):
    """The children of the expected lists plus the expected lone blocks, in module order."""
    want = {f"{c}.{i}" for c in expected for i, _ in enumerate(m.get_submodule(c))} | set(lone)
    return [n for n, _ in m.named_modules() if n in want]


def _budget_gb(m, prefetch):
    """Non-block part, the ring, and about half of the remaining blocks resident
    (as test_nodes._budget_for)."""
    d = discover_blocks(m, min_fraction=0.2)
    ring = (prefetch + 1) * d.largest_block_bytes
    rest = sum(d.block_bytes) - ring
    return (d.nonblock_bytes + ring + max(rest, 0) // 2 + 8192) / GIB


def _check_plan(st, mode, n_blocks):
    plan = st["plan"]
    if mode in ("sequential", "budget"):
        assert plan["streamed_blocks"] > 0 and st["acquires"] > 0, plan["describe"]
    if mode == "sequential":
        assert plan["streamed_blocks"] == n_blocks and plan["resident_block_bytes"] == 0, plan["describe"]
    if mode == "budget":
        # part of the block bytes resident, part streamed (the plan keeps whole blocks, or
        # cuts blocks into a resident head and a streamed rest: "split_blocks")
        assert plan["resident_block_bytes"] > 0 and plan["streamed_block_bytes"] > 0, plan["describe"]


# ---- direct module tests -----------------------------------------------------------------------

CASES = [("sequential", 1), ("sequential", 2), ("budget", 1), ("model_offload", 1)]


def _check_family(name, mode, prefetch, manual_cast=False):
    m, inputs, expected = _build(name, manual_cast=manual_cast)
    ref = _run(m, inputs)

    d = discover_blocks(m, min_fraction=0.2)
    assert sorted(d.containers) == sorted(expected), (name, d.containers, d.message)
    assert d.names == _expected_names(m, expected, TINY_LONE_BLOCKS.get(name, ())), (name, d.names)

    kw = {"budget_gb": _budget_gb(m, prefetch)} if mode == "budget" else {}
    h = pinstream.offload(m, mode=mode, prefetch=prefetch, engine="host", device="cpu", **kw)
    try:
        assert h.mode.name == mode, h.mode.reason
        assert h.discovery.names == d.names
        for i in range(2):
            out = _first(m(**inputs()))
            assert torch.equal(out, ref), \
                f"{name} {mode} p{prefetch} forward {i}: max diff {(out - ref).abs().max().item()}"
        st = h.stats()
        _check_plan(st, mode, len(d.blocks))
        if mode == "sequential":  # every block went through the ring once per forward
            assert st["acquires"] == 2 * len(d.blocks), (st["acquires"], len(d.blocks))
    finally:
        h.detach()
    assert torch.equal(_run(m, inputs), ref), f"{name}: output changed after detach()"


@pytest.mark.parametrize("mode,prefetch", CASES, ids=[f"{m}-p{p}" for m, p in CASES])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_bit_identical(name, mode, prefetch):
    _check_family(name, mode, prefetch)


@pytest.mark.parametrize("mode,prefetch", [("sequential", 1), ("budget", 1)], ids=["sequential-p1", "budget-p1"])
@pytest.mark.parametrize("name", MANUAL_CAST)
def test_family_manual_cast_bf16(name, mode, prefetch):
    _check_family(name, mode, prefetch, manual_cast=True)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_full_size_discovery_on_meta(name):
    """The real checkpoint's config, built on the meta device (no storage): discovery picks
    the family's block lists and nothing else."""
    m, _inputs, expected = _build(name, tiny=False, device="meta")
    d = discover_blocks(m, min_fraction=0.2)
    assert sorted(d.containers) == sorted(expected), (name, d.containers, d.message)
    assert d.names == _expected_names(m, expected), (name, d.names)
    assert d.block_fraction > 0.8, (name, d.block_fraction)


# ---- through ComfyUI: BaseModel + ModelPatcher + KSampler ----------------------------------------
# supported_models config class, latent, (positive, negative) conditioning

def _cond(shape, seed, **extra):
    g = _g(seed)
    return [[torch.randn(shape, generator=g), {k: v(g) if callable(v) else v for k, v in extra.items()}]]


SAMPLING = {
    # Chroma's T5 encoder gives pooled_output None, and Flux.encode_adm reads the key
    "chroma": ("Chroma", lambda: {"samples": torch.zeros(1, 16, 8, 8)},
               lambda: (_cond((1, 6, 32), 31, pooled_output=None), _cond((1, 6, 32), 32, pooled_output=None))),
    "hunyuan_video": ("HunyuanVideo", lambda: {"samples": torch.zeros(1, 16, 2, 4, 4)},
                      lambda: (_cond((1, 6, 32), 33, pooled_output=lambda g: torch.randn(1, 32, generator=g)),
                               _cond((1, 6, 32), 34, pooled_output=lambda g: torch.randn(1, 32, generator=g)))),
    # the Gemma encoder hands an attention_mask along; ComfyUI 0.3.64 derives num_tokens only from it
    "lumina2": ("Lumina2", lambda: {"samples": torch.zeros(1, 16, 8, 8)},
                lambda: (_cond((1, 6, 32), 35, attention_mask=torch.ones(1, 6, dtype=torch.long)),
                         _cond((1, 6, 32), 36, attention_mask=torch.ones(1, 6, dtype=torch.long)))),
    "qwen_image": ("QwenImage", lambda: {"samples": torch.zeros(1, 16, 1, 8, 8)},
                   lambda: (_cond((1, 6, 48), 37), _cond((1, 6, 48), 38))),
}


def _patcher(name):
    """What comfy.sd.load_diffusion_model_state_dict does, with the tiny config as the
    detected unet_config: supported_models config -> BaseModel -> load_model_weights ->
    ModelPatcher."""
    config_name = SAMPLING[name][0]
    config_cls = getattr(ns.supported_models, config_name, None)
    if config_cls is None:
        pytest.skip(f"ComfyUI {ns.version}: comfy.supported_models.{config_name} does not exist")
    kwargs = FAMILIES[name](True)[1]
    model_config = config_cls(kwargs)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=None)
    sd = ck._seeded_state_dict(model.diffusion_model, SEEDS[name])
    model.load_model_weights(sd, "")
    mm = ns.model_management
    return ns.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                         offload_device=mm.unet_offload_device())


def _sample(name, patcher):
    import pipeline as pl

    _config, latent, cond = SAMPLING[name]
    pos, neg = cond()
    return pl.sample_latent(ns, patcher, pos, neg, latent=latent())


@pytest.mark.parametrize("mode", ["sequential", "budget"])
@pytest.mark.parametrize("name", list(SAMPLING))
def test_ksampler_through_offload_node_same_latent_as_core(name, mode):
    from comfy_nodes import nodes as N
    from comfy_nodes import patcher as P

    mm = ns.model_management
    ref = _sample(name, _patcher(name))
    mm.unload_all_models()
    assert torch.isfinite(ref).all()

    base = _patcher(name)
    budget = _budget_gb(base.model.diffusion_model, 1) if mode == "budget" else 0.0
    (model,), msg = N.run_offload_model(base, mode, budget, 1, True)
    try:
        assert isinstance(model, P.PinStreamPatcherMixin), msg
        h = model.pinstream.handle
        assert h.mode.name == mode, msg
        out = _sample(name, model)
        assert torch.equal(out, ref), f"{name} {mode}: max diff {(out - ref).abs().max().item()}"
        _check_plan(h.stats(), mode, len(h.discovery.blocks))
    finally:
        mm.unload_all_models()
