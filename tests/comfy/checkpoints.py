"""Writers for TINY random-weight safetensors files that ComfyUI's own detection
recognises (comfy/model_detection.py, comfy/sd.py VAE/text-encoder detection).

How the files are made: each writer instantiates ComfyUI's own nn.Module for
the architecture (UNetModel, Flux, WanModel, T5, CLIPTextModel, TAESD, WanVAE)
with tiny but shape-consistent hyper-parameters, fills every parameter from a
seeded generator (same seed -> byte-identical file), and saves the state dict
under the prefix the real release files use. The key names are therefore the
real ones; detection then reads the architecture back from the shapes.

Which values detection FORCES (0.3.75; see docs/comfyui_notes.md):
- SD1.5 (supported_models.SD15): model_channels 320, context_dim 768, conv proj_in.
  Everything else (levels, res blocks, transformer depth) is free -> 1 level.
- SDXL (supported_models.SDXL): model_channels 320, context_dim 2048,
  adm_in_channels 2816, linear proj_in, and transformer_depth EXACTLY
  [0, 0, 2, 2, 10, 10] (24 transformer blocks). The smallest such UNet (1 level,
  no middle block, no output transformers) still has ~121M parameters; it is
  stored as fp16 (~243 MB) and is the only "not tiny" file here.
- Flux (supported_models.Flux): detection hard-codes num_heads=24 and
  axes_dim=[16,56,56] (head_dim 128), i.e. hidden_size 3072. The tiny file uses
  hidden_size 128 (key_norm.scale has 128 entries = 1 head of 128); to BUILD it,
  ``tiny_flux_detection(ns)`` (harness-side patch) rewrites num_heads to
  hidden_size // 128 after ComfyUI's detection ran. Detection of the class
  (Flux, guidance_embed=True) needs no patch.
- Wan 2.1 (WAN21_T2V / WAN21_I2V): num_heads = dim // 128, so dim 128 -> 1 head.
  text_dim is not detected: WanModel default 4096, so Wan conditioning and the
  umt5 text encoder output are 4096 wide. i2v = in_dim 36 + img_emb.* (CLIP
  vision 1280 -> dim).
- umt5-xxl (sd.detect_te_model -> T5_XXL): needs encoder.block.23.* (24 layers)
  and d_model 4096. d_ff/heads/d_kv/vocab are free, but ComfyUI builds the
  model from umt5_config_xxl.json, so load it with
  ``model_options={"umt5xxl_model_config": TINY_UMT5_CONFIG}`` (ComfyUI's own
  per-model config override, sd1_clip.py:105). Tokenizer: a tiny sentencepiece
  model stored in the file as the ``spiece_model`` uint8 tensor (as ComfyUI
  does for umt5).
- CLIP-L: ComfyUI builds it from sd1_clip_config.json; a tiny one needs
  ``te_model_options={"clip_l_model_config": TINY_CLIP_L_CONFIG}``. Its vocab must
  stay 49408 (the tokenizer emits ids 49406/49407).
- VAE: the SD KL-VAE config is hard-coded (ch 128, 83M params), so the "SD VAE"
  here is a TAESD (keys taesd_encoder.* / taesd_decoder.*, 4 latent channels,
  ComfyUI detects it in comfy/sd.py VAE.__init__). Wan 2.1 VAE: dim is read
  from decoder.head.0.gamma, so a dim-8 WanVAE is real-layout and tiny.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import torch

WRITER_VERSION = 1

# ---- tiny hyper-parameters (shared with pipeline.py / tests) ---------------------------------

SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [1, 0],
    "transformer_depth_middle": -2, "context_dim": 768, "use_linear_in_transformer": False,
    "num_heads": 8, "num_head_channels": -1, "use_spatial_transformer": True, "legacy": False,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [6], "channel_mult": [1], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0] * 7, "transformer_depth_middle": -2, "context_dim": 2048,
    "use_linear_in_transformer": True, "adm_in_channels": 2816, "num_classes": "sequential",
    "num_head_channels": 64, "use_spatial_transformer": True, "legacy": False,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
FLUX = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1, "depth": 2, "depth_single_blocks": 2,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
}
WAN_DIM = 128           # -> 1 head of 128 (ComfyUI: num_heads = dim // 128)
WAN_TEXT_DIM = 4096     # WanModel default, not detected
WAN_CLIP_VISION_DIM = 1280
WAN = {
    "patch_size": (1, 2, 2), "text_len": 512, "dim": WAN_DIM, "ffn_dim": 256, "freq_dim": 256,
    "text_dim": WAN_TEXT_DIM, "out_dim": 16, "num_heads": 1, "num_layers": 4, "window_size": (-1, -1),
    "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}
TINY_UMT5_CONFIG = {"d_ff": 8, "d_kv": 8, "num_heads": 2, "vocab_size": 256}
UMT5_LAYERS = 24        # detection needs encoder.block.23.*
UMT5_DMODEL = 4096      # detection needs wi_1.weight.shape[-1] == 4096 (== Wan text_dim)
TINY_CLIP_L_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                      "num_hidden_layers": 2, "projection_dim": 64}
CLIP_L_VOCAB = 49408
WAN_VAE_DIM = 8

# model_options / te_model_options to hand to ComfyUI loaders for the tiny text encoders
UMT5_MODEL_OPTIONS = {"umt5xxl_model_config": TINY_UMT5_CONFIG}
CLIP_L_TE_OPTIONS = {"clip_l_model_config": TINY_CLIP_L_CONFIG}          # CLIP inside a checkpoint
CLIP_L_STANDALONE_OPTIONS = {"model_config": TINY_CLIP_L_CONFIG}         # stand-alone CLIP-L file (see pipeline.load_clip_l)

SEEDS = {  # distinct default seed per file kind
    "sd15": 1501, "sdxl": 1502, "flux": 1503, "wan_t2v": 2101, "wan_i2v": 2102,
    "wan22_high": 2201, "wan22_low": 2202, "flashportrait": 2103, "umt5": 4001,
    "clip_l": 4002, "taesd": 5001, "wan_vae": 5002, "lora_sd15": 6001, "lora_wan": 6002,
}


# ---- helpers ------------------------------------------------------------------------------

def _ns():
    from harness import load_comfyui

    return load_comfyui()


def _dir(models_dir, sub: str) -> Path:
    base = Path(models_dir) if models_dir is not None else _ns().models_dir
    p = base / sub
    p.mkdir(parents=True, exist_ok=True)
    return p


def _seeded_state_dict(module: torch.nn.Module, seed: int, dtype=torch.float32) -> dict:
    """Every floating parameter filled from one generator, in sorted-name order.

    matrices/kernels: N(0, 1/fan_in); 1-D 'norm-like' weights (norm, gamma, scale):
    1 + N(0, 0.1); other 1-D (biases, embeddings rows...): N(0, 0.02); 0-D scalars
    keep their constructor value (e.g. TAESD vae_scale=1).
    """
    g = torch.Generator().manual_seed(int(seed))
    sd = module.state_dict(keep_vars=False)
    out = {}
    for name in sorted(sd):
        t = sd[name]
        if not torch.is_floating_point(t) or t.ndim == 0:
            out[name] = t.detach().clone().contiguous()
            continue
        shape = tuple(t.shape)
        if t.ndim >= 2:
            fan_in = math.prod(shape[1:])
            v = torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))
        else:
            normish = any(s in name for s in ("norm", "gamma", ".scale", "ln_", "layer_norm")) and not name.endswith("bias")
            v = 1.0 + 0.1 * torch.randn(shape, generator=g) if normish else 0.02 * torch.randn(shape, generator=g)
        out[name] = v.to(dtype).contiguous()
    return out


def _save(sd: dict, path: Path, metadata: dict | None = None) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # ONE metadata key: safetensors writes the metadata map in hash order, so several keys
    # would make otherwise identical files differ byte-wise.
    meta = {"pinstream_tiny": json.dumps({k: str(v) for k, v in (metadata or {}).items()}, sort_keys=True)}
    safetensors.torch.save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _meta(kind: str, seed: int, **extra) -> dict:
    return {"kind": kind, "seed": seed, "writer_version": WRITER_VERSION,
            "comfyui_version": _ns().version, **extra}


def _exists(path: Path, overwrite: bool, seed: int | None = None) -> bool:
    """True when an up-to-date file is already there (same writer version and ComfyUI
    version in its metadata), so a persistent models dir can be reused safely."""
    if overwrite or not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("pinstream_tiny", "{}"))
    except Exception:  # noqa: BLE001 - unreadable/foreign file: rewrite it
        return False
    return (meta.get("writer_version") == str(WRITER_VERSION)
            and meta.get("comfyui_version") == _ns().version
            and (seed is None or meta.get("seed") == str(seed)))


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init


def _prefix(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- UNets ---------------------------------------------------------------------------------

def _unet_sd(cfg: dict, seed: int, dtype=torch.float32) -> dict:
    _ns()
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    m = UNetModel(operations=_ops(), dtype=torch.float32, device="cpu", **cfg)
    return _seeded_state_dict(m, seed, dtype)


def sd15_unet_state_dict(seed: int = SEEDS["sd15"]) -> dict:
    return _unet_sd(SD15_UNET, seed)


def clip_l_state_dict(seed: int = SEEDS["clip_l"], config: dict | None = None) -> dict:
    """Tiny CLIP-L text model, HF/ComfyUI key names ``text_model.*`` (no text_projection,
    like the CLIP inside SD1.5 checkpoints)."""
    ns = _ns()
    import comfy.clip_model

    cfg = json.loads((Path(ns.root) / "comfy" / "sd1_clip_config.json").read_text())
    cfg.update(config or TINY_CLIP_L_CONFIG)
    cfg["vocab_size"] = CLIP_L_VOCAB
    m = comfy.clip_model.CLIPTextModel(cfg, torch.float32, "cpu", _ops())
    sd = _seeded_state_dict(m, seed)
    return {k: v for k, v in sd.items() if k.startswith("text_model.")}


def taesd_state_dict(seed: int = SEEDS["taesd"], latent_channels: int = 4) -> dict:
    _ns()
    import comfy.taesd.taesd

    m = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    return _seeded_state_dict(m, seed)


def write_sd15_checkpoint(models_dir=None, name: str = "tiny_sd15.safetensors", seed: int = SEEDS["sd15"],
                          overwrite: bool = False) -> Path:
    """Full SD1.5-style checkpoint (for CheckpointLoaderSimple / load_checkpoint_guess_config):
    model.diffusion_model.* (UNet, detected as supported_models.SD15 -> model_base.BaseModel),
    cond_stage_model.transformer.text_model.* (tiny CLIP-L: load with
    te_model_options=CLIP_L_TE_OPTIONS), first_stage_model.* (TAESD, see module doc)."""
    path = _dir(models_dir, "checkpoints") / name
    if _exists(path, overwrite, seed):
        return path
    sd = _prefix(sd15_unet_state_dict(seed), "model.diffusion_model.")
    sd.update(_prefix(clip_l_state_dict(seed + 1), "cond_stage_model.transformer."))
    sd.update(_prefix(taesd_state_dict(seed + 2), "first_stage_model."))
    return _save(sd, path, _meta("sd15_checkpoint", seed))


def write_sd15_unet(models_dir=None, name: str = "tiny_sd15_unet.safetensors", seed: int = SEEDS["sd15"],
                    overwrite: bool = False) -> Path:
    """The same SD1.5 UNet alone (diffusion_models/, UNETLoader), keys without prefix."""
    path = _dir(models_dir, "diffusion_models") / name
    if _exists(path, overwrite, seed):
        return path
    return _save(sd15_unet_state_dict(seed), path, _meta("sd15_unet", seed))


def write_sdxl_unet(models_dir=None, name: str = "tiny_sdxl_unet.safetensors", seed: int = SEEDS["sdxl"],
                    overwrite: bool = False, dtype=torch.float16) -> Path:
    """Smallest UNet ComfyUI detects as SDXL (~121M params, fp16 on disk, ~243 MB).
    Keys as in the diffusion-model-only SDXL release files (input_blocks.*, label_emb.*, ...)."""
    path = _dir(models_dir, "diffusion_models") / name
    if _exists(path, overwrite, seed):
        return path
    return _save(_unet_sd(SDXL_UNET, seed, dtype), path, _meta("sdxl_unet", seed))


# ---- Flux ----------------------------------------------------------------------------------

def write_flux(models_dir=None, name: str = "tiny_flux_dev.safetensors", seed: int = SEEDS["flux"],
               overwrite: bool = False, guidance_embed: bool = True) -> Path:
    """Flux-dev layout (img_in, time_in, vector_in, guidance_in, txt_in, double_blocks.*,
    single_blocks.*, final_layer.*). hidden 128, 2 double + 2 single blocks, context 64,
    pooled (vec) 32. guidance_embed=False gives a Flux-schnell layout."""
    path = _dir(models_dir, "diffusion_models") / name
    if _exists(path, overwrite, seed):
        return path
    _ns()
    import comfy.ldm.flux.model

    cfg = dict(FLUX, guidance_embed=guidance_embed)
    import dataclasses

    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    if "txt_ids_dims" in fields:  # ComfyUI >= 0.8: plain Flux has no extra text id axes
        cfg.setdefault("txt_ids_dims", [])
    m = comfy.ldm.flux.model.Flux(dtype=torch.float32, device="cpu", operations=_ops(), **cfg)
    return _save(_seeded_state_dict(m, seed), path, _meta("flux", seed))


# ---- Wan -----------------------------------------------------------------------------------

def wan_state_dict(seed: int, *, in_dim: int = 16, i2v_img_emb: bool = False, num_layers: int = WAN["num_layers"]) -> dict:
    """Wan 2.1 DiT in the original release layout (patch_embedding, text_embedding,
    time_embedding, time_projection, blocks.N.{self_attn,cross_attn,norm3,ffn,modulation},
    head.*, and for i2v img_emb.proj.* + cross_attn.{k_img,v_img,norm_k_img})."""
    _ns()
    import comfy.ldm.wan.model

    cfg = dict(WAN, num_layers=num_layers)
    m = comfy.ldm.wan.model.WanModel(model_type="i2v" if i2v_img_emb else "t2v", in_dim=in_dim,
                                     device="cpu", dtype=torch.float32, operations=_ops(), **cfg)
    return _seeded_state_dict(m, seed)


def write_wan21_t2v(models_dir=None, name: str = "tiny_wan2.1_t2v.safetensors", seed: int = SEEDS["wan_t2v"],
                    overwrite: bool = False) -> Path:
    path = _dir(models_dir, "diffusion_models") / name
    if _exists(path, overwrite, seed):
        return path
    return _save(wan_state_dict(seed), path, _meta("wan2.1_t2v", seed))


def fp8_state_dict(sd: dict, scaled: bool, keep_prefixes: tuple = ()) -> dict:
    """A state dict as the fp8 releases store it: every 2-D Linear weight in
    float8_e4m3fn (except under ``keep_prefixes``), the rest (norms, biases, modulation,
    convolutions) as it is. ``scaled``: the "fp8_scaled" layout: each fp8 weight is
    w / s with a per-tensor fp32 ``<layer>.scale_weight`` s = amax / 448, plus the
    ``scaled_fp8`` marker key that ComfyUI's detection looks for."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and not k.startswith(keep_prefixes):
            if scaled:
                s = (v.abs().amax() / 448.0).clamp_min(1e-12).float()
                out[k] = (v / s).to(torch.float8_e4m3fn)
                out[k[:-len(".weight")] + ".scale_weight"] = s.reshape(())
            else:
                out[k] = v.to(torch.float8_e4m3fn)
        else:
            out[k] = v
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def write_fp8_variant(kind: str, scaled: bool = False, models_dir=None, overwrite: bool = False) -> Path:
    """The fp8 (or fp8_scaled) file of a tiny diffusion model: ``kind`` "wan21_t2v"
    (text and time embeddings kept as they are, as in the Wan fp8 releases) or "flux"."""
    from safetensors.torch import load_file

    src, keep = {"wan21_t2v": (write_wan21_t2v, ("text_embedding", "time_")), "flux": (write_flux, ())}[kind]
    src_path = src(models_dir)
    seed = SEEDS["wan_t2v" if kind == "wan21_t2v" else "flux"]
    path = src_path.with_name(src_path.stem + ("_fp8_e4m3fn_scaled" if scaled else "_fp8_e4m3fn") + ".safetensors")
    if _exists(path, overwrite, seed):
        return path
    return _save(fp8_state_dict(load_file(str(src_path)), scaled, keep), path,
                 _meta(kind + "_fp8", seed, scaled=scaled))


def write_wan21_t2v_gguf(models_dir=None, qtype: str = "Q8_0", seed: int = SEEDS["wan_t2v"],
                         overwrite: bool = False) -> Path:
    """The tiny Wan 2.1 T2V model as a GGUF file the way ComfyUI-GGUF reads it (arch
    "wan"): 2-D weights quantized to ``qtype`` (rows of 32), everything else F32; tensors
    of more than 4 dimensions stored flat with their ``comfy.gguf.orig_shape`` metadata."""
    import gguf
    import numpy as np

    path = _dir(models_dir, "diffusion_models") / f"tiny_wan2.1_t2v_{qtype}.gguf"
    if path.is_file() and not overwrite:
        return path
    sd = wan_state_dict(seed)
    tmp = path.with_suffix(".gguf.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    q = getattr(gguf.GGMLQuantizationType, qtype)
    for name in sorted(sd):
        data = sd[name].float().numpy()
        kind = gguf.GGMLQuantizationType.F32
        if data.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", [int(d) for d in data.shape])
            data = data.reshape(data.shape[0], -1)
        elif data.ndim == 2 and data.shape[-1] % 32 == 0 and name.startswith("blocks."):
            kind = q
        data = gguf.quants.quantize(np.ascontiguousarray(data), kind)
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def write_wan21_i2v(models_dir=None, name: str = "tiny_wan2.1_i2v.safetensors", seed: int = SEEDS["wan_i2v"],
                    overwrite: bool = False, extra_keys: dict | None = None) -> Path:
    """Wan 2.1 I2V (14B-480P/720P layout): in_dim 36 (16 noise + 4 mask + 16 image latent)
    and img_emb.* (CLIP-vision projection). extra_keys are added verbatim (ComfyUI ignores
    keys the model does not have: 'left over keys')."""
    path = _dir(models_dir, "diffusion_models") / name
    if _exists(path, overwrite, seed):
        return path
    sd = wan_state_dict(seed, in_dim=36, i2v_img_emb=True)
    if extra_keys:
        sd.update({k: v.contiguous() for k, v in extra_keys.items()})
    return _save(sd, path, _meta("wan2.1_i2v", seed))


def write_wan22_a14b(models_dir=None, kind: str = "t2v", seed_high: int = SEEDS["wan22_high"],
                     seed_low: int = SEEDS["wan22_low"], overwrite: bool = False) -> tuple[Path, Path]:
    """Wan 2.2 A14B = two experts with the Wan 2.1-14B layout (same shapes, different
    weights): returns (high_noise_path, low_noise_path).
    kind "t2v": in_dim 16. kind "i2v": in_dim 36 but NO img_emb (Wan 2.2 I2V dropped CLIP
    vision), which ComfyUI 0.3.75 detects as model_type "t2v" (WAN21_T2V) and feeds the
    20 extra channels through WAN21.concat_cond."""
    if kind not in ("t2v", "i2v"):
        raise ValueError(kind)
    d = _dir(models_dir, "diffusion_models")
    paths = []
    for which, seed in (("high_noise", seed_high), ("low_noise", seed_low)):
        p = d / f"tiny_wan2.2_{kind}_{which}_14B.safetensors"
        if not _exists(p, overwrite, seed):
            _save(wan_state_dict(seed, in_dim=16 if kind == "t2v" else 36), p, _meta(f"wan2.2_{kind}_{which}", seed))
        paths.append(p)
    return paths[0], paths[1]


def flashportrait_placeholder_keys(seed: int = SEEDS["flashportrait"]) -> dict:
    """PLACEHOLDER keys standing in for FlashPortrait's extra transformer weights.

    The real FlashPortrait transformer.pt (HF FrancisRing/FlashPortrait) is loaded with
    strict=False on top of Wan2.1-I2V-14B-720P inside VideoX-Fun's WanTransformer3DModel;
    it carries adapter weights fed by a separate portrait_encoder.pt (PortraitEncoder:
    proj_model / mouth_proj_model / emo_proj_model, 2048-wide tokens, 24 per frame).
    The exact transformer key names were not available here, so these names are made up
    and only test that ComfyUI ignores unknown extra keys."""
    g = torch.Generator().manual_seed(seed)
    return {"portrait_adapter_placeholder.proj.weight": torch.randn(8, 16, generator=g),
            "portrait_adapter_placeholder.proj.bias": torch.randn(8, generator=g)}


def write_flashportrait(models_dir=None, name: str = "tiny_flashportrait_wan2.1_i2v.safetensors",
                        seed: int = SEEDS["flashportrait"], overwrite: bool = False,
                        with_placeholder_extra_keys: bool = True) -> Path:
    """FlashPortrait-style model = Wan 2.1 I2V layout (+ optional placeholder extras)."""
    extra = flashportrait_placeholder_keys(seed) if with_placeholder_extra_keys else None
    return write_wan21_i2v(models_dir, name=name, seed=seed, overwrite=overwrite, extra_keys=extra)


# ---- text encoders -------------------------------------------------------------------------

_SPM_CACHE: dict = {}


def tiny_spiece_model(vocab_size: int = TINY_UMT5_CONFIG["vocab_size"]) -> bytes:
    """A tiny sentencepiece unigram model trained in-process (T5 ids: pad 0, eos 1, unk 2)."""
    if vocab_size in _SPM_CACHE:
        return _SPM_CACHE[vocab_size]
    import sentencepiece as spm

    words = ["a", "photo", "of", "a", "cat", "dog", "person", "walking", "running", "portrait", "face", "smiling", "city", "street", "night", "day", "light", "dark", "red", "green", "blue", "video", "frame", "motion", "camera", "slow", "fast", "the", "and", "with", "in", "on", "at", "big", "small", "tiny", "model", "stream", "pinned", "memory", "block", "weight"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, num_threads=1,
        character_coverage=1.0, minloglevel=2, seed_sentencepiece_size=1000,
    )
    _SPM_CACHE[vocab_size] = buf.getvalue()
    return _SPM_CACHE[vocab_size]


def umt5_state_dict(seed: int = SEEDS["umt5"]) -> dict:
    ns = _ns()
    import comfy.text_encoders.t5

    cfg = json.loads((Path(ns.root) / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    cfg.update(TINY_UMT5_CONFIG)
    assert cfg["d_model"] == UMT5_DMODEL and cfg["num_layers"] == UMT5_LAYERS
    m = comfy.text_encoders.t5.T5(cfg, torch.float32, "cpu", _ops())
    return _seeded_state_dict(m, seed)


def write_umt5_xxl(models_dir=None, name: str = "tiny_umt5_xxl.safetensors", seed: int = SEEDS["umt5"],
                   overwrite: bool = False, with_tokenizer: bool = True) -> Path:
    """umt5-xxl encoder layout (shared.weight, encoder.block.{0..23}.layer.{0,1}.*, per-layer
    relative_attention_bias, encoder.final_layer_norm) with d_model 4096 and tiny
    d_ff/heads/vocab. For CLIPLoader type "wan" load with
    comfy.sd.load_clip([path], clip_type=CLIPType.WAN, model_options=UMT5_MODEL_OPTIONS)."""
    path = _dir(models_dir, "text_encoders") / name
    if _exists(path, overwrite, seed):
        return path
    sd = umt5_state_dict(seed)
    if with_tokenizer:
        sd["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8).clone()
    return _save(sd, path, _meta("umt5_xxl", seed))


def write_clip_l(models_dir=None, name: str = "tiny_clip_l.safetensors", seed: int = SEEDS["clip_l"],
                 overwrite: bool = False) -> Path:
    """Stand-alone tiny CLIP-L (text_encoders/), ComfyUI detects TEModel.CLIP_L.
    Load with model_options=CLIP_L_STANDALONE_OPTIONS (pipeline.load_clip_l)."""
    path = _dir(models_dir, "text_encoders") / name
    if _exists(path, overwrite, seed):
        return path
    return _save(clip_l_state_dict(seed), path, _meta("clip_l", seed))


# ---- VAEs ----------------------------------------------------------------------------------

def write_taesd_vae(models_dir=None, name: str = "tiny_taesd_sd.safetensors", seed: int = SEEDS["taesd"],
                    overwrite: bool = False) -> Path:
    """SD/SDXL-compatible tiny VAE: TAESD (4 latent channels, 8x), keys taesd_encoder.* /
    taesd_decoder.* / vae_scale / vae_shift. VAELoader loads any file in vae/ with
    comfy.sd.VAE(sd) which detects TAESD from 'taesd_decoder.1.weight'."""
    path = _dir(models_dir, "vae") / name
    if _exists(path, overwrite, seed):
        return path
    return _save(taesd_state_dict(seed), path, _meta("taesd", seed))


def write_wan21_vae(models_dir=None, name: str = "tiny_wan2.1_vae.safetensors", seed: int = SEEDS["wan_vae"],
                    overwrite: bool = False, dim: int = WAN_VAE_DIM) -> Path:
    """Wan 2.1 VAE layout (encoder.*, decoder.*, conv1, conv2; z_dim 16, 4x temporal / 8x
    spatial), dim 8 instead of 96 (ComfyUI reads dim from decoder.head.0.gamma)."""
    path = _dir(models_dir, "vae") / name
    if _exists(path, overwrite, seed):
        return path
    _ns()
    import comfy.ldm.wan.vae

    m = comfy.ldm.wan.vae.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                 temperal_downsample=[False, True, True], dropout=0.0)
    return _save(_seeded_state_dict(m, seed), path, _meta("wan2.1_vae", seed))


# ---- LoRAs ---------------------------------------------------------------------------------

def _lora_pair(g, out_f: int, in_f: int, rank: int, scale: float, conv: bool = False):
    down = torch.randn((rank, in_f) + ((1, 1) if conv else ()), generator=g) * scale
    up = torch.randn((out_f, rank) + ((1, 1) if conv else ()), generator=g) * scale
    return down, up


def sd15_lora_targets() -> dict:
    """kohya name -> (out_features, in_features) for the tiny SD1.5 UNet + tiny CLIP-L.
    UNet names use the diffusers block naming that kohya uses
    (down_blocks.0.attentions.0 == input_blocks.1.1, up_blocks.0.attentions.1 == output_blocks.1.1)."""
    t = {}
    c, ctx = SD15_UNET["model_channels"], SD15_UNET["context_dim"]
    # input_blocks.1.1 and output_blocks.1.1 (UNetModel pops transformer_depth_output from the end)
    for blk in ("down_blocks_0_attentions_0", "up_blocks_0_attentions_1"):
        base = f"lora_unet_{blk}_transformer_blocks_0"
        t[f"{base}_attn1_to_q"] = (c, c)
        t[f"{base}_attn1_to_k"] = (c, c)
        t[f"{base}_attn1_to_v"] = (c, c)
        t[f"{base}_attn1_to_out_0"] = (c, c)
        t[f"{base}_attn2_to_q"] = (c, c)
        t[f"{base}_attn2_to_k"] = (c, ctx)
        t[f"{base}_attn2_to_v"] = (c, ctx)
        t[f"{base}_attn2_to_out_0"] = (c, c)
        t[f"{base}_ff_net_2"] = (c, 4 * c)
    h = TINY_CLIP_L_CONFIG["hidden_size"]
    for layer in range(TINY_CLIP_L_CONFIG["num_hidden_layers"]):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[f"lora_te_text_model_encoder_layers_{layer}_self_attn_{p}"] = (h, h)
    return t


def write_sd15_lora(models_dir=None, name: str = "tiny_sd15_lora.safetensors", seed: int = SEEDS["lora_sd15"],
                    rank: int = 4, alpha: float = 4.0, scale: float = 0.5, overwrite: bool = False) -> Path:
    """kohya-ss format: <name>.lora_down.weight, <name>.lora_up.weight, <name>.alpha."""
    path = _dir(models_dir, "loras") / name
    if _exists(path, overwrite, seed):
        return path
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (out_f, in_f) in sorted(sd15_lora_targets().items()):
        down, up = _lora_pair(g, out_f, in_f, rank, scale)
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"] = down, up
        sd[f"{k}.alpha"] = torch.tensor(float(alpha))
    return _save(sd, path, _meta("lora_sd15", seed))


def wan_lora_targets(num_layers: int = WAN["num_layers"]) -> dict:
    """'diffusion_model.<module>' -> (out, in): the format most Wan LoRAs ship in
    (diffusion_model.blocks.N.self_attn.q.lora_A.weight / lora_B.weight)."""
    d, f = WAN["dim"], WAN["ffn_dim"]
    t = {}
    for i in range(num_layers):
        for a in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                t[f"diffusion_model.blocks.{i}.{a}.{p}"] = (d, d)
        t[f"diffusion_model.blocks.{i}.ffn.0"] = (f, d)
        t[f"diffusion_model.blocks.{i}.ffn.2"] = (d, f)
    return t


def write_wan_lora(models_dir=None, name: str = "tiny_wan_lora.safetensors", seed: int = SEEDS["lora_wan"],
                   rank: int = 4, scale: float = 0.5, overwrite: bool = False) -> Path:
    """PEFT-style Wan LoRA: diffusion_model.blocks.N.<mod>.lora_A.weight / lora_B.weight
    (no alpha -> scale 1.0), fits every Wan 2.1/2.2 file written here."""
    path = _dir(models_dir, "loras") / name
    if _exists(path, overwrite, seed):
        return path
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (out_f, in_f) in sorted(wan_lora_targets().items()):
        down, up = _lora_pair(g, out_f, in_f, rank, scale)
        sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"] = down, up
    return _save(sd, path, _meta("lora_wan", seed))
