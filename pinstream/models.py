"""Small random-weight torch models in the real checkpoint key layouts.

These models exist so that the engine, its tests, ``python -m pinstream demo`` and the
benchmarks can exercise real block structures without ComfyUI and without downloads.
Every model uses the parameter names of the published checkpoints (as loaded by
ComfyUI), so a state dict of a tiny model has the same keys as the real one, only with
smaller shapes:

* :class:`WanTransformer`  Wan 2.1 DiT (T2V and I2V): ``blocks.N.self_attn.q.weight`` ...
* :class:`TinyUNet`        SD1.x / SDXL UNet: ``input_blocks.1.0.in_layers.2.weight`` ...
* :class:`TinyT5Encoder`   T5 / UMT5 encoder: ``encoder.block.N.layer.0.SelfAttention.q.weight`` ...
* :class:`TinyFlux`        FLUX.1: ``double_blocks.N.img_attn.qkv.weight``, ``single_blocks.N.linear1.weight`` ...

Rules every model here follows (the offload engine relies on them):

* a block's forward reads only that block's own parameters; everything shared between
  blocks (rope tables, time embeddings, position bias of T5) is an activation computed
  outside the blocks or returned by a block, never a parameter or buffer of another module;
* blocks hold no buffers; only standard torch ops are used
  (``scaled_dot_product_attention`` for attention);
* forward passes are deterministic: same weights, same inputs -> bitwise same output;
* initialisation only draws from torch's global RNG, so ``torch.manual_seed(s)`` before
  construction gives the same weights every time; ``device="meta"`` builds a model with
  no storage (use it to count the parameters of full-size presets).

Use :func:`build` (``build("wan", preset="tiny")``) or the ``from_preset`` class methods, and
:func:`example_inputs` for ready-made forward arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PRESETS",
    "TinyFlux",
    "TinyT5Encoder",
    "TinyUNet",
    "WanAttentionBlock",
    "WanBlockInputs",
    "WanTransformer",
    "build",
    "example_inputs",
    "param_bytes",
    "param_count",
    "sinusoidal_embedding",
    "wan_block_inputs",
    "wan_rope_freqs",
]


# --------------------------------------------------------------------------- helpers


def _fk(dtype, device) -> dict:
    return {"dtype": dtype, "device": device}


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] timestep embedding (B,) -> (B, dim) in float32 (Wan, LDM and Flux layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1).to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y.to(x.dtype) * weight.to(x.dtype)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim. x (B, S, H, D); cos/sin broadcastable to (B, S, H, D/2)."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask=None, scale=None) -> torch.Tensor:
    """(B, S, H*D) tensors -> (B, S, H*D) with SDPA."""
    b, sq, _ = q.shape
    sk = k.shape[1]
    q = q.view(b, sq, heads, -1).transpose(1, 2)
    k = k.view(b, sk, heads, -1).transpose(1, 2)
    v = v.view(b, sk, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, sq, -1)


def _perturb_norms(model: nn.Module) -> None:
    """Give affine norm layers non-trivial weights so that a missing or wrong norm weight
    changes the output (real checkpoints do not have all-ones norms either)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.normal_(1.0, 0.05)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.02)
            elif isinstance(m, (WanRMSNorm, FluxRMSNorm, T5LayerNorm)):
                m._norm_weight().normal_(1.0, 0.05)


def param_count(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers (tied tensors counted once); works on meta models."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


# --------------------------------------------------------------------------- Wan 2.1


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **_fk(dtype, device)))

    def _norm_weight(self):
        return self.weight.data

    def forward(self, x):
        return _rms(x, self.weight, self.eps)


class WanSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm=True, eps=1e-6, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, **fk)
        self.k = nn.Linear(dim, dim, **fk)
        self.v = nn.Linear(dim, dim, **fk)
        self.o = nn.Linear(dim, dim, **fk)
        self.norm_q = WanRMSNorm(dim, eps, **fk) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps, **fk) if qk_norm else nn.Identity()

    def forward(self, x, freqs=None):
        b, s, _ = x.shape
        n, d = self.num_heads, self.head_dim
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(x))
        v = self.v(x)
        if freqs is not None:
            cos, sin = freqs
            q = _apply_rope(q.view(b, s, n, d), cos, sin).view(b, s, -1)
            k = _apply_rope(k.view(b, s, n, d), cos, sin).view(b, s, -1)
        return self.o(_attention(q, k, v, n))


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        v = self.v(context)
        return self.o(_attention(q, k, v, self.num_heads))


class WanI2VCrossAttention(WanSelfAttention):
    """Cross attention over [257 CLIP image tokens | text tokens] (image tokens first)."""

    def __init__(self, dim, num_heads, qk_norm=True, eps=1e-6, context_img_len=257, dtype=None, device=None):
        super().__init__(dim, num_heads, qk_norm, eps, dtype=dtype, device=device)
        fk = _fk(dtype, device)
        self.context_img_len = context_img_len
        self.k_img = nn.Linear(dim, dim, **fk)
        self.v_img = nn.Linear(dim, dim, **fk)
        self.norm_k_img = WanRMSNorm(dim, eps, **fk) if qk_norm else nn.Identity()

    def forward(self, x, context):
        n = self.num_heads
        context_img = context[:, : self.context_img_len]
        context = context[:, self.context_img_len :]
        q = self.norm_q(self.q(x))
        out = _attention(q, self.norm_k(self.k(context)), self.v(context), n)
        out = out + _attention(q, self.norm_k_img(self.k_img(context_img)), self.v_img(context_img), n)
        return self.o(out)


class WanAttentionBlock(nn.Module):
    """One Wan DiT block. Call as ``block(x, e, context, freqs=None)``:
    x (B, S, dim) tokens, e (B, 6, dim) time modulation, context (B, L, dim) embedded text
    (for I2V: 257 image tokens first), freqs an optional (cos, sin) rope table from
    :func:`wan_rope_freqs`."""

    def __init__(
        self,
        dim,
        ffn_dim,
        num_heads,
        cross_attn_type="t2v",
        cross_attn_norm=True,
        qk_norm=True,
        eps=1e-6,
        dtype=None,
        device=None,
    ):
        super().__init__()
        fk = _fk(dtype, device)
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False, **fk)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps, **fk)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True, **fk) if cross_attn_norm else nn.Identity()
        cls = WanI2VCrossAttention if cross_attn_type == "i2v" else WanT2VCrossAttention
        self.cross_attn = cls(dim, num_heads, qk_norm, eps, **fk)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False, **fk)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim, **fk), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim, **fk)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim, **fk) / dim**0.5)

    def forward(self, x, e, context, freqs=None):
        e = (self.modulation.to(e.dtype) + e).chunk(6, dim=1)
        y = self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], freqs)
        x = x + y * e[2]
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn(self.norm2(x) * (1 + e[4]) + e[3])
        return x + y * e[5]


class WanHead(nn.Module):
    def __init__(self, dim, out_dim, patch_size, eps=1e-6, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False, **fk)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size), **fk)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim, **fk) / dim**0.5)

    def forward(self, x, e):
        e = (self.modulation.to(e.dtype) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + e[1]) + e[0])


class WanMLPProj(nn.Module):
    def __init__(self, in_dim, out_dim, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim, **fk),
            nn.Linear(in_dim, in_dim, **fk),
            nn.GELU(),
            nn.Linear(in_dim, out_dim, **fk),
            nn.LayerNorm(out_dim, **fk),
        )

    def forward(self, x):
        return self.proj(x)


def wan_rope_freqs(grid, head_dim: int, device=None, theta: float = 10000.0):
    """3-D rope table of Wan for a (F, H, W) token grid -> (cos, sin), each (1, F*H*W, 1, head_dim/2).

    The head dim is split over the axes as Wan does: ``d - 4*(d//6)`` for frames and
    ``2*(d//6)`` each for height and width."""
    f, h, w = (int(g) for g in grid)
    d = head_dim
    dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    angles = []
    for n, ad in zip((f, h, w), dims, strict=True):
        inv = 1.0 / theta ** (torch.arange(0, ad, 2, dtype=torch.float64, device=device) / ad)
        angles.append(torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv))
    a = torch.cat(
        [
            angles[0][:, None, None, :].expand(f, h, w, -1),
            angles[1][None, :, None, :].expand(f, h, w, -1),
            angles[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    return torch.cos(a).float()[None], torch.sin(a).float()[None]


WAN_PRESETS = {
    "tiny": {"dim": 64, "ffn_dim": 128, "num_heads": 4, "num_layers": 4, "text_dim": 32, "freq_dim": 32},
    "demo": {"dim": 512, "ffn_dim": 1536, "num_heads": 8, "num_layers": 12, "text_dim": 512, "freq_dim": 256},
    "wan2.1-1.3b": {"dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30, "text_dim": 4096, "freq_dim": 256},
    "wan2.1-14b": {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "text_dim": 4096, "freq_dim": 256},
    "wan2.1-i2v-14b": {
        "dim": 5120,
        "ffn_dim": 13824,
        "num_heads": 40,
        "num_layers": 40,
        "text_dim": 4096,
        "freq_dim": 256,
        "in_dim": 36,
        "model_type": "i2v",
    },
}


class WanTransformer(nn.Module):
    """Wan 2.1 DiT with random weights. ``forward(x, t, context, clip_fea=None)``:
    x (B, in_dim, F, H, W) latent, t (B,) timesteps, context (B, L, text_dim) text states,
    clip_fea (B, 257, clip_dim) CLIP image features for ``model_type="i2v"`` (zeros when None).
    ``clip_dim`` is 1280 in Wan; a tiny I2V model should pass a small one (e.g. 32), or its
    ``img_emb`` outweighs its blocks.
    Returns (B, out_dim, F, H, W) in x's dtype (same shape as x when in_dim == out_dim)."""

    CLIP_TOKENS = 257

    def __init__(
        self,
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        in_dim=16,
        out_dim=16,
        text_dim=4096,
        freq_dim=256,
        patch_size=(1, 2, 2),
        model_type="t2v",
        clip_dim=1280,
        cross_attn_norm=True,
        qk_norm=True,
        eps=1e-6,
        dtype=torch.float32,
        device="cpu",
    ):
        super().__init__()
        if model_type not in ("t2v", "i2v"):
            raise ValueError(f"model_type must be 't2v' or 'i2v', got {model_type!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        fk = _fk(dtype, device)
        self.dim, self.ffn_dim, self.num_heads, self.num_layers = dim, ffn_dim, num_heads, num_layers
        self.in_dim, self.out_dim, self.text_dim, self.freq_dim = in_dim, out_dim, text_dim, freq_dim
        self.patch_size = tuple(patch_size)
        self.model_type = model_type
        self.clip_dim = clip_dim
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size, **fk)
        self.text_embedding = nn.Sequential(
            nn.Linear(text_dim, dim, **fk), nn.GELU(approximate="tanh"), nn.Linear(dim, dim, **fk)
        )
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim, **fk), nn.SiLU(), nn.Linear(dim, dim, **fk))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6, **fk))
        self.blocks = nn.ModuleList(
            WanAttentionBlock(dim, ffn_dim, num_heads, model_type, cross_attn_norm, qk_norm, eps, **fk)
            for _ in range(num_layers)
        )
        self.head = WanHead(dim, out_dim, self.patch_size, eps, **fk)
        if model_type == "i2v":
            self.img_emb = WanMLPProj(clip_dim, dim, **fk)
        _perturb_norms(self)
        self.eval()

    @classmethod
    def from_preset(cls, name: str = "tiny", **overrides) -> WanTransformer:
        if name not in WAN_PRESETS:
            raise ValueError(f"unknown Wan preset {name!r}; presets: {', '.join(WAN_PRESETS)}")
        return cls(**{**WAN_PRESETS[name], **overrides})

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def embed_time(self, t: torch.Tensor):
        """t (B,) -> (e (B, dim), e0 (B, 6, dim))."""
        dt = self.time_embedding[0].weight.dtype
        e = self.time_embedding(sinusoidal_embedding(t, self.freq_dim).to(dt))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        return e, e0

    def embed_context(self, context: torch.Tensor, clip_fea: torch.Tensor | None = None) -> torch.Tensor:
        dt = self.text_embedding[0].weight.dtype
        ctx = self.text_embedding(context.to(dt))
        if self.model_type == "i2v":
            if clip_fea is None:
                clip_fea = torch.zeros(ctx.shape[0], self.CLIP_TOKENS, self.clip_dim, dtype=dt, device=ctx.device)
            ctx = torch.cat([self.img_emb(clip_fea.to(dt)), ctx], dim=1)
        return ctx

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        b = x.shape[0]
        f, h, w = grid
        p0, p1, p2 = self.patch_size
        x = x.view(b, f, h, w, p0, p1, p2, self.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, self.out_dim, f * p0, h * p1, w * p2)

    def forward(self, x, t, context, clip_fea=None):
        in_dtype = x.dtype
        dt = self.patch_embedding.weight.dtype
        x = self.patch_embedding(x.to(dt))
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)
        freqs = wan_rope_freqs(grid, self.head_dim, device=x.device)
        e, e0 = self.embed_time(t)
        ctx = self.embed_context(context, clip_fea)
        for block in self.blocks:
            x = block(x, e0, ctx, freqs=freqs)
        x = self.head(x, e)
        return self.unpatchify(x, grid).to(in_dtype)


class WanBlockInputs(NamedTuple):
    x: torch.Tensor  # (B, seq_len, dim) tokens
    e: torch.Tensor  # (B, 6, dim) time modulation
    context: torch.Tensor  # (B, text_len (+257 for i2v), dim) embedded context
    freqs: tuple  # (cos, sin) rope table for seq_len tokens; pass as block(..., freqs=freqs)


@torch.no_grad()
def wan_block_inputs(model: WanTransformer, seq_len: int, batch: int = 1, text_len: int = 512, seed: int = 0):
    """Inputs to benchmark ONE block at a token sequence length: ``block(x, e, context)`` or
    ``block(x, e, context, freqs=freqs)`` (rope). Uses the model's own (non-block) embedding
    layers, on their device and dtype; random inputs come from a private generator seeded
    with ``seed`` (CPU), so the global RNG is untouched."""
    w = model.patch_embedding.weight
    dev, dt = w.device, w.dtype
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, model.dim, generator=g).to(dev, dt)
    t = torch.rand(batch, generator=g).mul(1000).to(dev)
    _, e0 = model.embed_time(t)
    text = torch.randn(batch, text_len, model.text_dim, generator=g).to(dev, dt)
    clip = None
    if model.model_type == "i2v":
        clip = torch.randn(batch, model.CLIP_TOKENS, model.clip_dim, generator=g).to(dev, dt)
    ctx = model.embed_context(text, clip)
    freqs = wan_rope_freqs((1, 1, seq_len), model.head_dim, device=dev)
    return WanBlockInputs(x, e0, ctx, freqs)


# --------------------------------------------------------------------------- SD / SDXL UNet


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels=None, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels, **fk), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1, **fk)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels, **fk))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels, **fk),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, **fk),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1, **fk)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False, **fk)
        self.to_k = nn.Linear(context_dim, inner, bias=False, **fk)
        self.to_v = nn.Linear(context_dim, inner, bias=False, **fk)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, **fk), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context.to(x.dtype)
        return self.to_out(_attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out, dtype=None, device=None):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, **_fk(dtype, device))

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4, dtype=None, device=None):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            GEGLU(dim, inner, dtype, device), nn.Dropout(0.0), nn.Linear(inner, dim, dtype=dtype, device=device)
        )

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.attn1 = CrossAttention(dim, None, n_heads, d_head, **fk)
        self.ff = FeedForward(dim, **fk)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, **fk)
        self.norm1 = nn.LayerNorm(dim, **fk)
        self.norm2 = nn.LayerNorm(dim, **fk)
        self.norm3 = nn.LayerNorm(dim, **fk)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth, context_dim, use_linear=False, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        inner = n_heads * d_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, **fk)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner, **fk)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1, **fk)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, context_dim, **fk) for _ in range(depth)
        )
        if use_linear:
            self.proj_out = nn.Linear(inner, in_channels, **fk)
        else:
            self.proj_out = nn.Conv2d(inner, in_channels, 1, **fk)

    def forward(self, x, context=None):
        b, _c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, channels, dtype=None, device=None):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1, **_fk(dtype, device))

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels, dtype=None, device=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **_fk(dtype, device))

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Sequential whose forward passes the time embedding to ResBlocks and the context to
    SpatialTransformers: ``block(h, emb, context)``."""

    def forward(self, x, emb=None, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


UNET_PRESETS = {
    "tiny": {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "channel_mult": (1, 2),
        "num_res_blocks": 1,
        "transformer_depth": (0, 1),
        "transformer_depth_middle": 2,
        "num_heads": 4,
        "context_dim": 32,
    },
    "sd15": {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "channel_mult": (1, 2, 4, 4),
        "num_res_blocks": 2,
        "transformer_depth": (1, 1, 1, 0),
        "transformer_depth_middle": 1,
        "num_heads": 8,
        "context_dim": 768,
    },
    "sdxl": {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "channel_mult": (1, 2, 4),
        "num_res_blocks": 2,
        "transformer_depth": (0, 2, 10),
        "transformer_depth_middle": 10,
        "num_head_channels": 64,
        "context_dim": 2048,
        "use_linear_in_transformer": True,
        "adm_in_channels": 2816,
    },
}


class TinyUNet(nn.Module):
    """SD1.x/SDXL UNet layout. ``forward(x, timesteps, context, y=None)``: x (B, C, H, W) with
    H, W divisible by 2**(len(channel_mult)-1), timesteps (B,), context (B, L, context_dim),
    y (B, adm_in_channels) when ``adm_in_channels`` is set (SDXL). Returns (B, out_channels, H, W).

    ``transformer_depth`` gives the SpatialTransformer depth per level (0: no attention);
    output blocks use the depth of their level, as SDXL's config does."""

    def __init__(
        self,
        in_channels=4,
        out_channels=4,
        model_channels=32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks=1,
        transformer_depth: Sequence[int] = (0, 1),
        transformer_depth_middle=1,
        num_heads=4,
        num_head_channels=-1,
        context_dim=32,
        use_linear_in_transformer=False,
        adm_in_channels=None,
        dtype=torch.float32,
        device="cpu",
    ):
        super().__init__()
        fk = _fk(dtype, device)
        if len(transformer_depth) != len(channel_mult):
            raise ValueError("transformer_depth needs one entry per channel_mult level")
        self.in_channels, self.out_channels, self.model_channels = in_channels, out_channels, model_channels
        self.channel_mult = tuple(channel_mult)
        self.context_dim = context_dim
        self.adm_in_channels = adm_in_channels
        ted = model_channels * 4

        def heads_for(ch):
            if num_head_channels > 0:
                return ch // num_head_channels, num_head_channels
            return num_heads, ch // num_heads

        def st(ch, depth):
            n, d = heads_for(ch)
            return SpatialTransformer(ch, n, d, depth, context_dim, use_linear_in_transformer, **fk)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, ted, **fk), nn.SiLU(), nn.Linear(ted, ted, **fk))
        if adm_in_channels:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(adm_in_channels, ted, **fk), nn.SiLU(), nn.Linear(ted, ted, **fk))
            )
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1, **fk))]
        )
        chans = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, ted, mult * model_channels, **fk)]
                ch = mult * model_channels
                if transformer_depth[level]:
                    layers.append(st(ch, transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, **fk)))
                chans.append(ch)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, **fk), st(ch, transformer_depth_middle), ResBlock(ch, ted, **fk)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, model_channels * mult, **fk)]
                ch = model_channels * mult
                if transformer_depth[level]:
                    layers.append(st(ch, transformer_depth[level]))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, **fk))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            nn.GroupNorm(32, ch, **fk), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1, **fk)
        )
        _perturb_norms(self)
        self.eval()

    @classmethod
    def from_preset(cls, name: str = "tiny", **overrides) -> TinyUNet:
        if name not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; presets: {', '.join(UNET_PRESETS)}")
        return cls(**{**UNET_PRESETS[name], **overrides})

    def forward(self, x, timesteps, context, y=None):
        in_dtype = x.dtype
        dt = self.time_embed[0].weight.dtype
        emb = self.time_embed(sinusoidal_embedding(timesteps, self.model_channels).to(dt))
        if self.adm_in_channels:
            if y is None:
                raise ValueError("this UNet has adm_in_channels set: pass y (B, adm_in_channels)")
            emb = emb + self.label_emb(y.to(dt))
        context = context.to(dt)
        hs = []
        h = x.to(dt)
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb, context)
        return self.out(h).to(in_dtype)


# --------------------------------------------------------------------------- T5 / UMT5 encoder


class T5LayerNorm(WanRMSNorm):
    """T5's layer norm is the same RMS norm (no mean subtraction, no bias, key `weight`)."""


class T5DenseGatedActDense(nn.Module):
    def __init__(self, d_model, d_ff, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False, **fk)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False, **fk)
        self.wo = nn.Linear(d_ff, d_model, bias=False, **fk)

    def forward(self, x):
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class T5Attention(nn.Module):
    def __init__(self, d_model, d_kv, num_heads, relative_attention_bias, num_buckets, max_distance, dtype, device):
        super().__init__()
        fk = _fk(dtype, device)
        inner = d_kv * num_heads
        self.num_heads, self.num_buckets, self.max_distance = num_heads, num_buckets, max_distance
        self.q = nn.Linear(d_model, inner, bias=False, **fk)
        self.k = nn.Linear(d_model, inner, bias=False, **fk)
        self.v = nn.Linear(d_model, inner, bias=False, **fk)
        self.o = nn.Linear(inner, d_model, bias=False, **fk)
        if relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, num_heads, **fk)
        else:
            self.relative_attention_bias = None

    def _bucket(self, rel: torch.Tensor) -> torch.Tensor:
        nb = self.num_buckets // 2  # bidirectional
        buckets = (rel > 0).to(torch.long) * nb
        rel = rel.abs()
        max_exact = nb // 2
        is_small = rel < max_exact
        large = max_exact + (
            torch.log(rel.float().clamp(min=1) / max_exact) / math.log(self.max_distance / max_exact) * (nb - max_exact)
        ).to(torch.long)
        large = torch.clamp(large, max=nb - 1)
        return buckets + torch.where(is_small, rel, large)

    def compute_bias(self, length: int, device) -> torch.Tensor:
        pos = torch.arange(length, dtype=torch.long, device=device)
        buckets = self._bucket(pos[None, :] - pos[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, L, L)

    def forward(self, x, mask=None, position_bias=None):
        if self.relative_attention_bias is not None:
            position_bias = self.compute_bias(x.shape[1], x.device)
        bias = None
        if position_bias is not None:
            bias = position_bias.to(x.dtype)
        if mask is not None:
            bias = mask if bias is None else bias + mask
        out = _attention(self.q(x), self.k(x), self.v(x), self.num_heads, mask=bias, scale=1.0)
        return self.o(out), position_bias


class T5LayerSelfAttention(nn.Module):
    def __init__(self, d_model, d_kv, num_heads, rel_bias, num_buckets, max_distance, eps, dtype, device):
        super().__init__()
        self.SelfAttention = T5Attention(d_model, d_kv, num_heads, rel_bias, num_buckets, max_distance, dtype, device)
        self.layer_norm = T5LayerNorm(d_model, eps, dtype, device)

    def forward(self, x, mask=None, position_bias=None):
        y, position_bias = self.SelfAttention(self.layer_norm(x), mask, position_bias)
        return x + y, position_bias


class T5LayerFF(nn.Module):
    def __init__(self, d_model, d_ff, eps, dtype, device):
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(d_model, d_ff, dtype, device)
        self.layer_norm = T5LayerNorm(d_model, eps, dtype, device)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """``block(x, mask=None, position_bias=None) -> (x, position_bias)``. A block with its own
    ``relative_attention_bias`` (every UMT5 block, the first T5 block) computes the bias;
    the others use the one passed in (an activation, not a parameter)."""

    def __init__(self, d_model, d_kv, num_heads, d_ff, rel_bias, num_buckets, max_distance, eps, dtype, device):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                T5LayerSelfAttention(d_model, d_kv, num_heads, rel_bias, num_buckets, max_distance, eps, dtype, device),
                T5LayerFF(d_model, d_ff, eps, dtype, device),
            ]
        )

    def forward(self, x, mask=None, position_bias=None):
        x, position_bias = self.layer[0](x, mask, position_bias)
        return self.layer[1](x), position_bias


class T5Stack(nn.Module):
    def __init__(
        self, num_layers, d_model, d_kv, num_heads, d_ff, per_block_bias, num_buckets, max_distance, eps, dtype, device
    ):
        super().__init__()
        self.block = nn.ModuleList(
            T5Block(
                d_model, d_kv, num_heads, d_ff, per_block_bias or i == 0, num_buckets, max_distance, eps, dtype, device
            )
            for i in range(num_layers)
        )
        self.final_layer_norm = T5LayerNorm(d_model, eps, dtype, device)

    def forward(self, x, mask=None):
        position_bias = None
        for block in self.block:
            x, position_bias = block(x, mask, position_bias)
        return self.final_layer_norm(x)


T5_PRESETS = {
    "tiny": {
        "vocab_size": 128,
        "d_model": 64,
        "d_kv": 16,
        "num_heads": 4,
        "d_ff": 128,
        "num_layers": 4,
        "variant": "umt5",
    },
    "tiny-t5": {
        "vocab_size": 128,
        "d_model": 64,
        "d_kv": 16,
        "num_heads": 4,
        "d_ff": 128,
        "num_layers": 4,
        "variant": "t5",
    },
    "t5-xxl": {
        "vocab_size": 32128,
        "d_model": 4096,
        "d_kv": 64,
        "num_heads": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "variant": "t5",
    },
    "umt5-xxl": {
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "num_heads": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "variant": "umt5",
    },
}


class TinyT5Encoder(nn.Module):
    """T5 v1.1 / UMT5 encoder (gated-GELU feed forward). ``forward(input_ids, attention_mask=None)``
    -> (B, L, d_model) hidden states after ``encoder.final_layer_norm``.
    ``variant="umt5"``: every block has ``layer.0.SelfAttention.relative_attention_bias``;
    ``variant="t5"``: only block 0 has it and passes the bias on to the next blocks."""

    def __init__(
        self,
        vocab_size=128,
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=4,
        variant="umt5",
        num_buckets=32,
        max_distance=128,
        eps=1e-6,
        dtype=torch.float32,
        device="cpu",
    ):
        super().__init__()
        if variant not in ("t5", "umt5"):
            raise ValueError(f"variant must be 't5' or 'umt5', got {variant!r}")
        self.vocab_size, self.d_model, self.variant = vocab_size, d_model, variant
        self.shared = nn.Embedding(vocab_size, d_model, dtype=dtype, device=device)
        self.encoder = T5Stack(
            num_layers, d_model, d_kv, num_heads, d_ff, variant == "umt5", num_buckets, max_distance, eps, dtype, device
        )
        _perturb_norms(self)
        self.eval()

    @classmethod
    def from_preset(cls, name: str = "tiny", **overrides) -> TinyT5Encoder:
        if name not in T5_PRESETS:
            raise ValueError(f"unknown T5 preset {name!r}; presets: {', '.join(T5_PRESETS)}")
        return cls(**{**T5_PRESETS[name], **overrides})

    def forward(self, input_ids, attention_mask=None):
        x = self.shared(input_ids)
        mask = None
        if attention_mask is not None:
            mask = (1.0 - attention_mask.to(x.dtype)[:, None, None, :]) * torch.finfo(x.dtype).min
        return self.encoder(x, mask)


# --------------------------------------------------------------------------- FLUX


class FluxRMSNorm(nn.Module):
    def __init__(self, dim, dtype=None, device=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, **_fk(dtype, device)))

    def _norm_weight(self):
        return self.scale.data

    def forward(self, x):
        return _rms(x, self.scale, 1e-6)


class QKNorm(nn.Module):
    def __init__(self, dim, dtype=None, device=None):
        super().__init__()
        self.query_norm = FluxRMSNorm(dim, dtype, device)
        self.key_norm = FluxRMSNorm(dim, dtype, device)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class FluxSelfAttention(nn.Module):
    """Holds the attention weights of a stream; the blocks use its layers directly (as Flux does)."""

    def __init__(self, dim, num_heads, qkv_bias, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **fk)
        self.norm = QKNorm(dim // num_heads, **fk)
        self.proj = nn.Linear(dim, dim, **fk)


class Modulation(nn.Module):
    def __init__(self, dim, double, dtype=None, device=None):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, **_fk(dtype, device))

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _flux_qkv(qkv: torch.Tensor, heads: int, norm: QKNorm):
    """(B, L, 3*H*D) -> q, k, v each (B, H, L, D) with QK-norm applied."""
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = norm(q, k, v)
    return q, k, v


def _flux_attention(q, k, v, pe):
    """q, k, v (B, H, L, D); pe (cos, sin) each (B, 1, L, D/2) -> (B, L, H*D)."""
    cos, sin = pe
    q = _apply_rope(q, cos, sin)
    k = _apply_rope(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def flux_rope(ids: torch.Tensor, axes_dim: Sequence[int], theta: float = 10000.0):
    """Flux EmbedND: ids (B, L, n_axes) -> (cos, sin), each (B, 1, L, sum(axes_dim)/2)."""
    parts = []
    for i, d in enumerate(axes_dim):
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
        parts.append(ids[..., i].to(torch.float64)[..., None] * inv)
    a = torch.cat(parts, dim=-1)[:, None]
    return torch.cos(a).float(), torch.sin(a).float()


class DoubleStreamBlock(nn.Module):
    """``block(img, txt, vec, pe) -> (img, txt)``."""

    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=True, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        self.img_mod = Modulation(hidden_size, True, **fk)
        self.img_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.img_attn = FluxSelfAttention(hidden_size, num_heads, qkv_bias, **fk)
        self.img_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.img_mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden, **fk),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size, **fk),
        )
        self.txt_mod = Modulation(hidden_size, True, **fk)
        self.txt_norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.txt_attn = FluxSelfAttention(hidden_size, num_heads, qkv_bias, **fk)
        self.txt_norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.txt_mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_hidden, **fk),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_hidden, hidden_size, **fk),
        )

    def forward(self, img, txt, vec, pe):
        i_shift, i_scale, i_gate, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift, t_scale, t_gate, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        img_q, img_k, img_v = _flux_qkv(
            self.img_attn.qkv((1 + i_scale) * self.img_norm1(img) + i_shift), self.num_heads, self.img_attn.norm
        )
        txt_q, txt_k, txt_v = _flux_qkv(
            self.txt_attn.qkv((1 + t_scale) * self.txt_norm1(txt) + t_shift), self.num_heads, self.txt_attn.norm
        )
        attn = _flux_attention(
            torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2), pe
        )
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + i_gate * self.img_attn.proj(img_attn)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate * self.txt_attn.proj(txt_attn)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    """``block(x, vec, pe) -> x`` on the concatenated [txt | img] sequence."""

    def __init__(self, hidden_size, num_heads, mlp_ratio, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim, **fk)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size, **fk)
        self.norm = QKNorm(hidden_size // num_heads, **fk)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, False, **fk)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1((1 + scale) * self.pre_norm(x) + shift), [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1
        )
        q, k, v = _flux_qkv(qkv, self.num_heads, self.norm)
        attn = _flux_attention(q, k, v, pe)
        return x + gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim, dtype=None, device=None):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, **_fk(dtype, device))
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, **_fk(dtype, device))

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class LastLayer(nn.Module):
    def __init__(self, hidden_size, out_channels, dtype=None, device=None):
        super().__init__()
        fk = _fk(dtype, device)
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **fk)
        self.linear = nn.Linear(hidden_size, out_channels, **fk)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, **fk))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


FLUX_PRESETS = {
    "tiny": {
        "in_channels": 16,
        "vec_in_dim": 32,
        "context_in_dim": 32,
        "hidden_size": 64,
        "mlp_ratio": 4.0,
        "num_heads": 4,
        "depth": 2,
        "depth_single_blocks": 4,
        "axes_dim": (4, 6, 6),
    },
    "flux-dev": {
        "in_channels": 64,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": 3072,
        "mlp_ratio": 4.0,
        "num_heads": 24,
        "depth": 19,
        "depth_single_blocks": 38,
        "axes_dim": (16, 56, 56),
        "guidance_embed": True,
    },
    "flux-schnell": {
        "in_channels": 64,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": 3072,
        "mlp_ratio": 4.0,
        "num_heads": 24,
        "depth": 19,
        "depth_single_blocks": 38,
        "axes_dim": (16, 56, 56),
        "guidance_embed": False,
    },
}


class TinyFlux(nn.Module):
    """FLUX.1 layout. ``forward(img, txt, timesteps, y, guidance=None, img_ids=None, txt_ids=None)``:
    img (B, L_img, in_channels) packed latent tokens, txt (B, L_txt, context_in_dim),
    timesteps (B,) in [0, 1], y (B, vec_in_dim) pooled text vector, guidance (B,) when
    ``guidance_embed``. Position ids default to txt = 0 and img = (0, 0, i).
    Returns (B, L_img, out_channels)."""

    def __init__(
        self,
        in_channels=16,
        out_channels=None,
        vec_in_dim=32,
        context_in_dim=32,
        hidden_size=64,
        mlp_ratio=4.0,
        num_heads=4,
        depth=2,
        depth_single_blocks=4,
        axes_dim: Sequence[int] = (4, 6, 6),
        theta=10000,
        qkv_bias=True,
        guidance_embed=False,
        dtype=torch.float32,
        device="cpu",
    ):
        super().__init__()
        fk = _fk(dtype, device)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        if sum(axes_dim) != hidden_size // num_heads:
            raise ValueError(f"sum(axes_dim)={sum(axes_dim)} must equal the head dim {hidden_size // num_heads}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.vec_in_dim, self.context_in_dim = vec_in_dim, context_in_dim
        self.axes_dim, self.theta = tuple(axes_dim), theta
        self.guidance_embed = guidance_embed
        self.img_in = nn.Linear(in_channels, hidden_size, **fk)
        self.time_in = MLPEmbedder(256, hidden_size, **fk)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size, **fk)
        if guidance_embed:
            self.guidance_in = MLPEmbedder(256, hidden_size, **fk)
        self.txt_in = nn.Linear(context_in_dim, hidden_size, **fk)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias, **fk) for _ in range(depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden_size, num_heads, mlp_ratio, **fk) for _ in range(depth_single_blocks)
        )
        self.final_layer = LastLayer(hidden_size, self.out_channels, **fk)
        _perturb_norms(self)
        self.eval()

    @classmethod
    def from_preset(cls, name: str = "tiny", **overrides) -> TinyFlux:
        if name not in FLUX_PRESETS:
            raise ValueError(f"unknown Flux preset {name!r}; presets: {', '.join(FLUX_PRESETS)}")
        return cls(**{**FLUX_PRESETS[name], **overrides})

    def forward(self, img, txt, timesteps, y, guidance=None, img_ids=None, txt_ids=None):
        in_dtype = img.dtype
        dt = self.img_in.weight.dtype
        b, n_img, n_txt = img.shape[0], img.shape[1], txt.shape[1]
        img = self.img_in(img.to(dt))
        vec = self.time_in(sinusoidal_embedding(timesteps * 1000.0, 256).to(dt))
        if self.guidance_embed:
            if guidance is None:
                raise ValueError("this Flux model has guidance_embed: pass guidance (B,)")
            vec = vec + self.guidance_in(sinusoidal_embedding(guidance * 1000.0, 256).to(dt))
        vec = vec + self.vector_in(y.to(dt))
        txt = self.txt_in(txt.to(dt))
        n_axes = len(self.axes_dim)
        if txt_ids is None:
            txt_ids = torch.zeros(b, n_txt, n_axes, device=img.device)
        if img_ids is None:
            img_ids = torch.zeros(b, n_img, n_axes, device=img.device)
            img_ids[..., -1] = torch.arange(n_img, device=img.device, dtype=img_ids.dtype)
        pe = flux_rope(torch.cat((txt_ids, img_ids), dim=1), self.axes_dim, self.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, pe)
        return self.final_layer(x[:, n_txt:], vec).to(in_dtype)


# --------------------------------------------------------------------------- dispatch


PRESETS = {"wan": WAN_PRESETS, "unet": UNET_PRESETS, "t5": T5_PRESETS, "flux": FLUX_PRESETS}
_FAMILIES = {"wan": WanTransformer, "unet": TinyUNet, "t5": TinyT5Encoder, "flux": TinyFlux}


def build(name: str, preset: str = "tiny", **kw) -> nn.Module:
    """Build a model family ("wan", "unet", "t5", "flux") from a preset plus overrides, in
    eval mode: ``build("wan", preset="demo", dtype=torch.bfloat16)``."""
    key = str(name).strip().lower()
    if key not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_FAMILIES)}")
    return _FAMILIES[key].from_preset(preset, **kw).eval()


def example_inputs(model: nn.Module, batch: int = 1, seed: int = 0, device=None) -> tuple:
    """Positional forward arguments for any model of this module (small shapes), drawn from
    a private generator (the global RNG is untouched): ``model(*example_inputs(model))``."""
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    dev = p.device if device is None else torch.device(device)
    dt = p.dtype

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev, dt)

    if isinstance(model, WanTransformer):
        args = (
            rnd(batch, model.in_dim, 2, 8, 8),
            torch.full((batch,), 500.0, device=dev),
            rnd(batch, 16, model.text_dim),
        )
        if model.model_type == "i2v":
            args += (rnd(batch, model.CLIP_TOKENS, model.clip_dim),)
        return args
    if isinstance(model, TinyUNet):
        side = 2 ** (len(model.channel_mult) - 1) * 4
        args = (
            rnd(batch, model.in_channels, side, side),
            torch.full((batch,), 500.0, device=dev),
            rnd(batch, 8, model.context_dim),
        )
        if model.adm_in_channels:
            args += (rnd(batch, model.adm_in_channels),)
        return args
    if isinstance(model, TinyT5Encoder):
        return (torch.randint(0, model.vocab_size, (batch, 12), generator=g).to(dev),)
    if isinstance(model, TinyFlux):
        args = (
            rnd(batch, 16, model.in_channels),
            rnd(batch, 8, model.context_in_dim),
            torch.full((batch,), 0.5, device=dev),
            rnd(batch, model.vec_in_dim),
        )
        if model.guidance_embed:
            args += (torch.full((batch,), 3.5, device=dev),)
        return args
    raise TypeError(f"no example inputs for {type(model).__name__}")
