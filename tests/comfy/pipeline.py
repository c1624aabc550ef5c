"""Run ComfyUI core nodes in-process on the tiny checkpoints (CPU).

Everything goes through ComfyUI's own code: UNETLoader / load_checkpoint_guess_config /
load_clip, CLIPTextEncode, LoraLoader / LoraLoaderModelOnly, KSampler (common_ksampler),
KSamplerAdvanced, VAEDecode. Only the conditioning can be hand-made (random tensors of
the width the tiny model expects) because the tiny text encoders of SD/SDXL/Flux do not
produce the widths the diffusion models require (see checkpoints.py).

Typical use::

    ns = harness.load_comfyui()
    model = load_unet(ns, checkpoints.write_wan21_t2v())
    pos, neg = wan_conditioning(ns)
    lat = sample_latent(ns, model, pos, neg, latent=wan_latent(frames=5))
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import checkpoints as ck
import torch

SAMPLER = "euler"
SCHEDULER = "simple"


# ---- loading -------------------------------------------------------------------------------

@contextlib.contextmanager
def tiny_flux_detection(ns):
    """Let ComfyUI BUILD the tiny Flux. After ComfyUI's own detect_unet_config ran on a
    Flux-family file, take the widths from the tensors and set
    num_heads = hidden_size // sum(axes_dim) (head_dim 128):
    - 0.3.75 reads hidden_size (img_in) and context_in_dim (txt_in) from the shapes but
      hard-codes num_heads 24 (model_detection.py:201-232);
    - 0.3.64 hard-codes hidden_size 3072, context_in_dim 4096 and num_heads 24.
    Shapes in the file are untouched and the detected class is unchanged; non-Flux configs
    pass through."""
    md = ns.model_detection
    orig = md.detect_unet_config

    def patched(state_dict, key_prefix, metadata=None):
        cfg = orig(state_dict, key_prefix, metadata=metadata)
        if cfg is not None and cfg.get("image_model") == "flux":
            img_in = state_dict.get(f"{key_prefix}img_in.weight")
            txt_in = state_dict.get(f"{key_prefix}txt_in.weight")
            if img_in is not None:
                cfg["hidden_size"] = img_in.shape[0]
            if txt_in is not None:
                cfg["context_in_dim"] = txt_in.shape[1]
            head_dim = sum(cfg.get("axes_dim", [16, 56, 56]))
            if cfg.get("hidden_size", 0) % head_dim == 0:
                cfg["num_heads"] = cfg["hidden_size"] // head_dim
        return cfg

    md.detect_unet_config = patched
    try:
        yield
    finally:
        md.detect_unet_config = orig


def _name_in(ns, folder: str, path) -> str | None:
    """Return the name ComfyUI's folder_paths uses for path, or None if it is elsewhere."""
    p = Path(path).resolve()
    for base in ns.folder_paths.get_folder_paths(folder):
        try:
            return p.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return None


def load_unet(ns, path, weight_dtype: str = "default", model_options: dict | None = None):
    """UNETLoader node when the file sits in models/diffusion_models, else
    comfy.sd.load_diffusion_model. Returns a ModelPatcher."""
    path = Path(path)
    is_flux = "flux" in path.name
    cm = tiny_flux_detection(ns) if is_flux else contextlib.nullcontext()
    with cm:
        name = _name_in(ns, "diffusion_models", path)
        if name is not None and not model_options:
            ns.folder_paths.filename_list_cache.clear()
            return ns.nodes.UNETLoader().load_unet(name, weight_dtype)[0]
        return ns.sd.load_diffusion_model(str(path), model_options=dict(model_options or {}))


def load_checkpoint(ns, path, te_model_options: dict | None = None):
    """(model, clip, vae) via comfy.sd.load_checkpoint_guess_config, i.e. what
    CheckpointLoaderSimple calls, plus the te_model_options the tiny CLIP needs."""
    return ns.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True,
        embedding_directory=ns.folder_paths.get_folder_paths("embeddings"),
        te_model_options=copy.deepcopy(te_model_options if te_model_options is not None else ck.CLIP_L_TE_OPTIONS),
    )[:3]


def load_umt5(ns, path):
    """CLIPLoader(type="wan") equivalent for the tiny umt5 (config override needed)."""
    return ns.sd.load_clip(ckpt_paths=[str(path)],
                           embedding_directory=ns.folder_paths.get_folder_paths("embeddings"),
                           clip_type=ns.sd.CLIPType.WAN, model_options=copy.deepcopy(ck.UMT5_MODEL_OPTIONS))


def load_clip_l(ns, path):
    """CLIPLoader(type="stable_diffusion") equivalent for the tiny stand-alone CLIP-L.
    Quirk (0.3.75 sd.py:1215 -> text_encoders/long_clipl.py:3): for a stand-alone CLIP file
    load_text_encoder_state_dicts REPLACES model_options["clip_l_model_config"] with
    model_options["model_config"] (+ max_position_embeddings from the file), so the
    override has to be passed under the generic "model_config" key."""
    return ns.sd.load_clip(ckpt_paths=[str(path)],
                           embedding_directory=ns.folder_paths.get_folder_paths("embeddings"),
                           clip_type=ns.sd.CLIPType.STABLE_DIFFUSION,
                           model_options=copy.deepcopy(ck.CLIP_L_STANDALONE_OPTIONS))


def load_vae(ns, path):
    """VAELoader node (file in models/vae) or comfy.sd.VAE on the state dict."""
    name = _name_in(ns, "vae", path)
    if name is not None:
        ns.folder_paths.filename_list_cache.clear()
        return ns.nodes.VAELoader().load_vae(name)[0]
    return ns.sd.VAE(sd=ns.utils.load_torch_file(str(path)))


def apply_lora(ns, model, lora_path, strength_model: float = 1.0, clip=None, strength_clip: float = 1.0):
    """LoraLoader (model + clip) or LoraLoaderModelOnly (clip None). Returns (model, clip)."""
    name = _name_in(ns, "loras", lora_path)
    if name is None:
        raise ValueError(f"{lora_path} is not inside a loras folder ComfyUI knows")
    ns.folder_paths.filename_list_cache.clear()
    if clip is None:
        return ns.nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength_model)[0], None
    m, c = ns.nodes.LoraLoader().load_lora(model, clip, name, strength_model, strength_clip)
    return m, c


# ---- conditioning --------------------------------------------------------------------------

def _rand(shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def encode_text(ns, clip, text: str):
    """CLIPTextEncode node -> CONDITIONING."""
    return ns.nodes.CLIPTextEncode().encode(clip, text)[0]


def sd15_conditioning(seed: int = 11, tokens: int = 77):
    pos = [[_rand((1, tokens, 768), seed), {}]]
    neg = [[_rand((1, tokens, 768), seed + 1), {}]]
    return pos, neg


def sdxl_conditioning(seed: int = 12, tokens: int = 77, width: int = 64, height: int = 64):
    def one(s):
        return [[_rand((1, tokens, 2048), s), {"pooled_output": _rand((1, 1280), s + 100),
                                             "width": width, "height": height,
                                             "target_width": width, "target_height": height}]]
    return one(seed), one(seed + 1)


def flux_conditioning(seed: int = 13, tokens: int = 16, guidance: float = 3.5):
    def one(s):
        return [[_rand((1, tokens, ck.FLUX["context_in_dim"]), s),
                 {"pooled_output": _rand((1, ck.FLUX["vec_in_dim"]), s + 100), "guidance": guidance}]]
    return one(seed), one(seed + 1)


def wan_conditioning(seed: int = 14, tokens: int = 16):
    """Hand-made umt5-width (4096) context, what CLIPTextEncode on umt5 would give."""
    return ([[_rand((1, tokens, ck.WAN_TEXT_DIM), seed, 0.1), {}]],
            [[_rand((1, tokens, ck.WAN_TEXT_DIM), seed + 1, 0.1), {}]])


class _ClipVisionOutput:
    """Stand-in for comfy.clip_vision.Output: WAN21.extra_conds only reads
    .penultimate_hidden_states (B, tokens, 1280)."""

    def __init__(self, t):
        self.penultimate_hidden_states = t

    def __getitem__(self, k):
        return getattr(self, k)


def wan_i2v_conditioning(ns, positive, negative, start_latent, frames_latent: int, seed: int = 15,
                         clip_vision_tokens: int = 8, with_clip_vision: bool = True):
    """The minimal I2V path, what WanImageToVideo does without a VAE round trip:
    concat_latent_image = start-frame latent padded with zeros to all latent frames,
    concat_mask (1, 1, T, h, w) = 0 on the given latent frame(s), 1 elsewhere (WAN21.concat_cond
    inverts it and repeats it to 4 channels),
    clip_vision_output = (1, tokens, 1280) hidden states (Wan 2.1 I2V only; Wan 2.2 has
    no img_emb and must get with_clip_vision=False)."""
    import node_helpers

    b, c, _, h, w = start_latent.shape
    concat = torch.zeros((b, c, frames_latent, h, w))
    concat[:, :, :start_latent.shape[2]] = start_latent
    mask = torch.ones((1, 1, frames_latent, h, w))  # as nodes_wan.WanImageToVideo (0.3.75)
    mask[:, :, :start_latent.shape[2]] = 0.0
    values = {"concat_latent_image": concat, "concat_mask": mask}
    pos = node_helpers.conditioning_set_values(positive, values)
    neg = node_helpers.conditioning_set_values(negative, values)
    if with_clip_vision:
        cv = _ClipVisionOutput(_rand((1, clip_vision_tokens, ck.WAN_CLIP_VISION_DIM), seed, 0.5))
        pos = node_helpers.conditioning_set_values(pos, {"clip_vision_output": cv})
        neg = node_helpers.conditioning_set_values(neg, {"clip_vision_output": cv})
    return pos, neg


# ---- latents -------------------------------------------------------------------------------

def sd_latent(ns, width: int = 64, height: int = 64, batch: int = 1):
    """EmptyLatentImage node (4 channels; common_ksampler widens it for 16-channel models)."""
    return ns.nodes.EmptyLatentImage().generate(width, height, batch)[0]


def wan_latent(width: int = 32, height: int = 32, frames: int = 5, batch: int = 1):
    """What EmptyHunyuanLatentVideo / WanImageToVideo produce: (B, 16, (frames-1)//4+1, H/8, W/8)."""
    return {"samples": torch.zeros((batch, 16, ((frames - 1) // 4) + 1, height // 8, width // 8))}


def wan_frames_latent(frames: int) -> int:
    return ((frames - 1) // 4) + 1


# ---- sampling ------------------------------------------------------------------------------

def sample_latent(ns, model, positive, negative, latent=None, steps: int = 2, seed: int = 0, cfg: float = 2.0,
                  sampler_name: str = SAMPLER, scheduler: str = SCHEDULER, denoise: float = 1.0,
                  width: int = 64, height: int = 64, frames: int | None = None) -> torch.Tensor:
    """KSampler (nodes.common_ksampler). latent=None -> EmptyLatentImage(width, height)
    or, if frames is given, a Wan video latent. Returns the latent tensor."""
    if latent is None:
        latent = wan_latent(width, height, frames) if frames else sd_latent(ns, width, height)
    out = ns.nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                   latent, denoise=denoise)[0]
    return out["samples"]


def sample_advanced(ns, model, positive, negative, latent, *, add_noise: bool, seed: int, steps: int,
                    start_at_step: int, end_at_step: int, return_with_leftover_noise: bool, cfg: float = 2.0,
                    sampler_name: str = SAMPLER, scheduler: str = SCHEDULER) -> dict:
    """KSamplerAdvanced node. Returns the LATENT dict."""
    return ns.nodes.KSamplerAdvanced().sample(
        model, "enable" if add_noise else "disable", seed, steps, cfg, sampler_name, scheduler, positive, negative,
        latent, start_at_step, end_at_step, "enable" if return_with_leftover_noise else "disable")[0]


def sample_two_experts(ns, high_model, low_model, positive, negative, latent, steps: int = 2, switch_at: int = 1,
                       seed: int = 0, cfg: float = 2.0) -> torch.Tensor:
    """Wan 2.2 A14B as ComfyUI's template does it: KSamplerAdvanced(high noise, steps
    0..switch_at, add noise, return leftover noise) -> KSamplerAdvanced(low noise,
    switch_at..end, no new noise)."""
    mid = sample_advanced(ns, high_model, positive, negative, latent, add_noise=True, seed=seed, steps=steps,
                          start_at_step=0, end_at_step=switch_at, return_with_leftover_noise=True, cfg=cfg)
    out = sample_advanced(ns, low_model, positive, negative, mid, add_noise=False, seed=seed, steps=steps,
                          start_at_step=switch_at, end_at_step=10000, return_with_leftover_noise=False, cfg=cfg)
    return out["samples"]


def two_experts_reference(ns, high_path, low_path, steps: int = 4, switch_at: int = 2):
    """Core's latent of Wan 2.2's two experts (the files at ``high_path``, ``low_path``) as
    the two-experts tests sample them (4 steps, switching at 2, unless told), and the
    conditioning it used. The core models are dropped on return; the caller unloads them
    from ComfyUI."""
    core_hi, core_lo = load_unet(ns, high_path), load_unet(ns, low_path)
    pos, neg = wan_conditioning()
    out = sample_two_experts(ns, core_hi, core_lo, pos, neg, wan_latent(32, 32, 5), steps=steps, switch_at=switch_at)
    return out, pos, neg


def vae_decode(ns, vae, samples: torch.Tensor) -> torch.Tensor:
    """VAEDecode node -> IMAGE (B, H, W, 3) (video: frames flattened into B)."""
    return ns.nodes.VAEDecode().decode(vae, {"samples": samples})[0]
