"""The model ``python -m pinstream demo`` runs: a Wan 2.1 DiT (T2V and I2V) with random
weights, in the real checkpoint key layout (``blocks.N.self_attn.q.weight`` ...), only
with the sizes of its preset (``WAN_PRESETS``: ``demo`` by default, ``tiny``, and the
published 1.3B and 14B shapes).

What the offload engine relies on, and this model keeps:

* a block's forward reads only that block's own parameters; everything shared between
  blocks (rope table, time embedding) is an activation computed outside the blocks;
* blocks hold no buffers; only standard torch ops are used
  (``scaled_dot_product_attention`` for attention);
* forward passes are deterministic: same weights, same inputs -> bitwise same output;
* initialisation only draws from torch's global RNG, so ``torch.manual_seed(s)`` before
  construction gives the same weights every time; ``device="meta"`` builds a model with
  no storage.

The helpers (timestep embedding, RMS norm, rope, attention, norm perturbation) are the
building blocks of the other tiny model families in ``tests/fixtures/models``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WAN_PRESETS",
    "WanAttentionBlock",
    "WanRMSNorm",
    "WanTransformer",
    "apply_rope",
    "attention",
    "perturb_norms",
    "rms_norm",
    "sinusoidal_embedding",
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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y.to(x.dtype) * weight.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dim. x (B, S, H, D); cos/sin broadcastable to (B, S, H, D/2)."""
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask=None, scale=None) -> torch.Tensor:
    """(B, S, H*D) tensors -> (B, S, H*D) with SDPA."""
    b, sq, _ = q.shape
    sk = k.shape[1]
    q = q.view(b, sq, heads, -1).transpose(1, 2)
    k = k.view(b, sk, heads, -1).transpose(1, 2)
    v = v.view(b, sk, heads, -1).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b, sq, -1)


def perturb_norms(model: nn.Module) -> None:
    """Give affine norm layers non-trivial weights so that a missing or wrong norm weight
    changes the output (real checkpoints do not have all-ones norms either)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.normal_(1.0, 0.05)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.02)
            elif callable(getattr(m, "norm_weight", None)):  # RMS norms give their weight this way
                m.norm_weight().normal_(1.0, 0.05)


# --------------------------------------------------------------------------- Wan 2.1


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **_fk(dtype, device)))

    def norm_weight(self):
        """The weight :func:`perturb_norms` draws."""
        return self.weight.data

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


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
            q = apply_rope(q.view(b, s, n, d), cos, sin).view(b, s, -1)
            k = apply_rope(k.view(b, s, n, d), cos, sin).view(b, s, -1)
        return self.o(attention(q, k, v, n))


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        v = self.v(context)
        return self.o(attention(q, k, v, self.num_heads))


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
        out = attention(q, self.norm_k(self.k(context)), self.v(context), n)
        out = out + attention(q, self.norm_k_img(self.k_img(context_img)), self.v_img(context_img), n)
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
        perturb_norms(self)
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

