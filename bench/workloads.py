"""The workloads of ``bench gpu``: the Wan-shaped transformer of the demo
(:mod:`pinstream.demo_model`) at the configured shape, built on the meta device and
filled with random values straight in host memory, one block of it, and their inputs."""

from __future__ import annotations

import math

from .config import Config
from .measure import malloc_trim


def _fill_random_(module, dtype, dim: int, seed: int = 0) -> None:
    """Random values for every parameter, fast enough for 28 GB: slices of a random
    pool at random offsets (weights ~ N(0, 1/dim), norm weights ~ 1, others small).
    Never zeros: zeros can time differently from real data."""
    import random

    import torch

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    params = [(n, p) for n, p in module.named_parameters()] + [(n, b) for n, b in module.named_buffers()]
    largest = max((p.numel() for _, p in params), default=1)
    chunk = int(min(largest, 16 * 1024 * 1024))
    dev = params[0][1].device if params else torch.device("cpu")
    wpool = (torch.randn(2 * chunk, generator=g) * (1.0 / math.sqrt(dim))).to(dtype).to(dev)
    spool = (torch.randn(2 * chunk, generator=g) * 0.02).to(dtype).to(dev)
    with torch.no_grad():
        for name, p in params:
            flat = p.data.view(-1)
            n = flat.numel()
            norm_like = "norm" in name and p.dim() == 1
            pool = spool if (p.dim() <= 1) else wpool
            for i in range(0, n, chunk):
                m = min(chunk, n - i)
                off = rng.randrange(0, chunk + 1)
                flat[i:i + m].copy_(pool[off:off + m])
            if norm_like:
                flat.add_(1.0)


def build_wan(cfg: Config, device: str = "cpu", seed: int = 0):
    """The Wan-shaped transformer, built on the meta device and materialised with
    random values straight on ``device`` (no second copy, no slow init)."""
    from pinstream.demo_model import WanTransformer

    model = WanTransformer(**cfg.wan, dtype=cfg.dtype, device="meta")
    model.to_empty(device=device)
    _fill_random_(model, cfg.dtype, cfg.wan["dim"], seed)
    model.requires_grad_(False)
    model.eval()
    if device == "cpu":
        malloc_trim()
    return model


def build_block(cfg: Config, device: str, seed: int = 1):
    from pinstream.demo_model import WanAttentionBlock

    w = cfg.wan
    blk = WanAttentionBlock(w["dim"], w["ffn_dim"], w["num_heads"], "t2v", True, True, 1e-6,
                            dtype=cfg.dtype, device="meta")
    blk.to_empty(device=device)
    _fill_random_(blk, cfg.dtype, w["dim"], seed)
    blk.requires_grad_(False)
    return blk.eval()


def tensor_bytes(module) -> int:
    seen = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def model_inputs(cfg: Config, model, device: str, seq_len: int | None = None, grid=None, seed: int = 1):
    """Forward arguments for ``model(x, t, context)`` giving ``seq_len`` tokens
    (latent (1, C, 1, 2, 2*seq_len)), or the tokens of a latent ``grid``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if grid is None:
        grid = (1, 2, 2 * int(seq_len))
    x = torch.randn(1, model.in_dim, *grid, generator=g).to(device=device, dtype=cfg.dtype)
    t = torch.tensor([500.0], device=device)
    ctx = torch.randn(1, cfg.text_len, model.text_dim, generator=g).to(device=device, dtype=cfg.dtype)
    return x, t, ctx


def tokens_of_grid(grid) -> int:
    f, h, w = grid
    return int(f * (h // 2) * (w // 2))


def block_inputs(cfg: Config, seq_len: int, device: str, seed: int = 2):
    import torch

    from pinstream.demo_model import wan_rope_freqs

    g = torch.Generator().manual_seed(seed)
    d = cfg.wan["dim"]
    x = torch.randn(1, seq_len, d, generator=g).to(device=device, dtype=cfg.dtype)
    e = (torch.randn(1, 6, d, generator=g) * 0.1).to(device=device, dtype=cfg.dtype)
    ctx = torch.randn(1, cfg.text_len, d, generator=g).to(device=device, dtype=cfg.dtype)
    freqs = wan_rope_freqs((1, 1, seq_len), d // cfg.wan["num_heads"], device=device)
    return x, e, ctx, freqs
