"""pinstream.offload on small Wan-, UNet-, T5- and Flux-shaped models.

Runs on the host engine everywhere and on the CUDA engine when a GPU is present
(the `target` fixture in conftest.py).
"""

import gc
import math
import os

import psutil
import pytest
import torch
from fixtures.models import build, example_inputs
from torch import nn

import pinstream
from pinstream import modes

GIB = 1024**3
FAMILIES = ["wan", "unet", "t5", "flux"]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _model(family, device="cpu", **kw):
    torch.manual_seed(0)
    m = build(family, **kw).to(device)
    inputs = [x.to(device) if torch.is_tensor(x) else x for x in example_inputs(m)]
    return m, inputs


def _bytes(m):
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _budget_gb(m, handle_kwargs_prefetch=1, fraction=0.7):
    from pinstream.discovery import discover_blocks

    d = discover_blocks(m)
    need = d.nonblock_bytes + (handle_kwargs_prefetch + 2) * d.largest_block_bytes + 4096 * 64
    return max(fraction * _bytes(m), need) / GIB


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["full_load", "model_offload", "sequential", "budget"])
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_every_mode_is_bit_identical(family, mode, prefetch, target):
    engine, device = target
    m, inputs = _model(family, device)
    with torch.no_grad():
        ref = _first(m(*inputs)).clone()
    kw = {"budget_gb": _budget_gb(m, prefetch)} if mode == "budget" else {}
    h = pinstream.offload(m, mode=mode, prefetch=prefetch, device=device, engine=engine, **kw)
    assert h.mode == mode
    with torch.no_grad():
        for _ in range(3):
            out = _first(m(*inputs))
            assert torch.equal(out, ref)
    st = h.stats()
    if mode == "sequential" or (mode == "budget" and kw["budget_gb"] * GIB < _bytes(m)):
        assert st["acquires"] > 0
        assert st["plan"]["streamed_blocks"] > 0
    h.detach()
    with torch.no_grad():
        assert torch.equal(_first(m(*inputs)), ref)


class Looping(nn.Module):
    """Blocks that repeat, get skipped, and see changing shapes."""

    def __init__(self, n=6, dim=32):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)) for _ in range(n)
        )
        self.fail_at = None

    def forward(self, x, skip=(), repeat=(), reverse=False):
        x = self.proj(x)
        order = list(range(len(self.blocks)))
        if reverse:
            order.reverse()
        for i in order:
            if i in skip:
                continue
            if i == self.fail_at:
                raise RuntimeError("boom in block")
            x = x + self.blocks[i](x)
            if i in repeat:
                x = x + self.blocks[i](x)
        return x


def _looping():
    torch.manual_seed(1)
    return Looping().eval()


@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_repeats_skips_reorders_and_shape_changes(mode, target):
    engine, device = target
    m = _looping().to(device)
    cases = [
        (torch.randn(2, 32), {}),
        (torch.randn(2, 32), {"repeat": {1, 4}}),
        (torch.randn(5, 32), {"skip": {2}}),
        (torch.randn(1, 3, 32), {}),
        (torch.randn(2, 32), {"reverse": True}),
        (torch.randn(2, 32), {"reverse": True, "skip": {0}}),
        (torch.randn(2, 32), {}),
    ]
    cases = [(x.to(device), kw) for x, kw in cases]
    with torch.no_grad():
        refs = [m(x, **kw) for x, kw in cases]
    budget = {"budget_gb": _budget_gb(m, 1, 0.6)} if mode == "budget" else {}
    h = pinstream.offload(m, mode=mode, prefetch=1, device=device, engine=engine, **budget)
    with torch.no_grad():
        for _ in range(2):
            for (x, kw), ref in zip(cases, refs):
                assert torch.equal(m(x, **kw), ref), kw
    st = h.stats()
    assert st["relearns"] >= 1 and st["skips"] >= 1
    h.detach()


def test_exception_inside_a_block_leaves_next_pass_correct(target):
    engine, device = target
    m = _looping().to(device)
    x = torch.randn(3, 32, device=device)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", prefetch=2, device=device, engine=engine)
    m.fail_at = 3
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"):
        m(x)
    m.fail_at = None
    with torch.no_grad():
        assert torch.equal(m(x), ref)
        assert torch.equal(m(x), ref)
    h.detach()


def test_detach_and_offload_again_and_state_dict(target):
    engine, device = target
    m, inputs = _model("wan", device)
    sd_ref = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ref = _first(m(*inputs)).clone()
    for mode in ("sequential", "budget", "model_offload", "sequential"):
        kw = {"budget_gb": _budget_gb(m)} if mode == "budget" else {}
        h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
        with torch.inference_mode():
            assert torch.equal(_first(m(*inputs)), ref)
        sd = m.state_dict()
        assert sd.keys() == sd_ref.keys()
        for k, v in sd.items():
            assert torch.equal(v.to(sd_ref[k].device), sd_ref[k]), k
        with pytest.raises(RuntimeError, match="already offloaded"):
            pinstream.offload(m, mode="sequential", device=device, engine=engine)
        h.detach()
        for p in m.parameters():
            assert p.device.type == torch.device(device).type
    with torch.no_grad():
        assert torch.equal(_first(m(*inputs)), ref)


def test_inference_mode_and_no_grad_and_requires_grad_kept(target):
    engine, device = target
    m, inputs = _model("unet", device)
    rg = {n: p.requires_grad for n, p in m.named_parameters()}
    with torch.no_grad():
        ref = _first(m(*inputs)).clone()
    h = pinstream.offload(m, mode="sequential", device=device, engine=engine)
    with torch.inference_mode():
        a = _first(m(*inputs))
    with torch.no_grad():
        b = _first(m(*inputs))
    assert torch.equal(a, ref) and torch.equal(b, ref)
    h.detach()
    assert {n: p.requires_grad for n, p in m.named_parameters()} == rg


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_model_built_under_inference_mode(mode, target):
    """ComfyUI loads and runs models inside torch.inference_mode(): the weights are
    inference tensors (no in-place version counter). Offload, every mode, unload, reload
    and detach all work on them."""
    engine, device = target
    with torch.inference_mode():
        m, inputs = _model("wan", device)
        assert next(m.parameters()).is_inference()
        ref = _first(m(*inputs)).clone()
        kw = {"budget_gb": _budget_gb(m)} if mode == "budget" else {}
        h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
        assert torch.equal(_first(m(*inputs)), ref)
        h.unload()
        assert torch.equal(_first(m(*inputs)), ref)
        assert h.stats()["writebacks"] == 0
        h.detach()
        assert torch.equal(_first(m(*inputs)), ref)


class Big(nn.Module):
    def __init__(self, n=16, dim=1024):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return x


@pytest.mark.skipif(bool(os.environ.get("PINSTREAM_SANITIZER")),
                    reason="RSS is meaningless under AddressSanitizer (freed memory is quarantined)")
def test_host_rss_within_5_percent_of_model_bytes():
    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    torch.manual_seed(0)
    m = Big()
    model_bytes = _bytes(m)
    h = pinstream.offload(m, mode="sequential", prefetch=1, device="cpu", engine="host")
    gc.collect()
    # The host engine's "device" is host memory as well: not part of the host copy.
    arena = h.stats()["device_bytes"]
    extra = proc.memory_info().rss - rss0 - arena
    assert extra <= 1.05 * model_bytes, f"{extra / 2**20:.1f} MiB for a {model_bytes / 2**20:.1f} MiB model"
    h.detach()


@pytest.mark.parametrize("prefetch", [0, 1, 2, 3])
def test_sequential_peak_device_bytes_bound(prefetch, target):
    engine, device = target
    torch.manual_seed(0)
    m = Big(n=8, dim=256).to(device)
    x = torch.randn(4, 256, device=device)
    h = pinstream.offload(m, mode="sequential", prefetch=prefetch, device=device, engine=engine)
    with torch.no_grad():
        m(x)
        m(x)
    st = h.stats()
    bound = st["nonblock_bytes"] + (prefetch + 1) * st["largest_block_bytes"]
    # Slots and units are rounded up to 512 bytes each.
    assert st["peak_device_bytes"] <= bound + 512 * (prefetch + 2)
    assert st["peak_device_bytes"] >= st["nonblock_bytes"] + min(prefetch + 1, 8) * st["largest_block_bytes"]
    h.detach()


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_budget_peak_device_bytes_within_budget(fraction, target):
    engine, device = target
    torch.manual_seed(0)
    m = Big(n=10, dim=256).to(device)
    x = torch.randn(4, 256, device=device)
    budget_gb = fraction * _bytes(m) / GIB
    h = pinstream.offload(m, mode="budget", budget_gb=budget_gb, prefetch=1, device=device, engine=engine)
    with torch.no_grad():
        m(x)
        m(x)
    st = h.stats()
    assert st["peak_device_bytes"] <= budget_gb * GIB
    # 0.3 of the model holds the non-block part and the ring only.
    assert st["plan"]["resident_blocks"] == (0 if fraction < 0.4 else st["plan"]["resident_blocks"])
    if fraction >= 0.5:
        assert st["plan"]["resident_blocks"] >= 1
    h.detach()


# ---- auto, aliases, environment ----------------------------------------------------------

AUTO_CASES = [
    # free device, host RAM, expected mode
    (64 * GIB, 64 * GIB, "full_load"),
    (2 * GIB, 64 * GIB, None),  # depends on sizes below
]


def _auto(m, free, ram=64 * GIB, **kw):
    h = pinstream.offload(m, mode="auto", device="cpu", engine="host", free_device_bytes=free, host_ram_bytes=ram, **kw)
    mode, reason = h.mode.name, h.mode.reason
    h.detach()
    return mode, reason


@pytest.mark.parametrize(
    "free_fraction,expected",
    [(20.0, "full_load"), (1.2, "budget"), (0.5, "budget"), (0.05, "sequential")],
)
def test_auto_decisions_table(free_fraction, expected, monkeypatch):
    monkeypatch.delenv("GPU_MEMORY_MODE", raising=False)
    monkeypatch.setattr(modes, "AUTO_RESERVE_FLOOR_BYTES", 0)
    torch.manual_seed(0)
    m = Big(n=16, dim=512)
    mode, reason = _auto(m, int(free_fraction * _bytes(m)))
    assert mode == expected, reason
    assert reason.startswith("auto: ")


def test_auto_reserve_pushes_full_load_down(monkeypatch):
    monkeypatch.delenv("GPU_MEMORY_MODE", raising=False)
    m = Big(n=4, dim=256)  # ~1 MiB: far below the 1 GiB reserve floor
    assert _auto(m, GIB + 2**20)[0] != "full_load"
    assert _auto(m, 4 * GIB)[0] == "full_load"


def test_auto_without_blocks_is_model_offload(monkeypatch):
    monkeypatch.delenv("GPU_MEMORY_MODE", raising=False)
    monkeypatch.setattr(modes, "AUTO_RESERVE_FLOOR_BYTES", 0)
    m = nn.Linear(512, 512)
    mode, reason = _auto(m, 1000)
    assert mode == "model_offload" and "no repeated blocks" in reason


def test_sequential_without_blocks_falls_back_with_a_message():
    m = nn.Sequential(nn.Linear(64, 64))
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host")
    assert h.mode == "model_offload"
    assert "model_offload" in h.mode.reason or "no repeated" in h.mode.reason
    x = torch.randn(2, 64)
    with torch.no_grad():
        m(x)
    h.detach()


@pytest.mark.parametrize("alias,mode", [("model_full_load", "full_load"), ("model_cpu_offload", "model_offload"),
                                        ("sequential_cpu_offload", "sequential"), ("SEQUENTIAL", "sequential")])
def test_aliases(alias, mode):
    m = _looping()
    h = pinstream.offload(m, mode=alias, device="cpu", engine="host")
    assert h.mode == mode
    h.detach()


def test_gpu_memory_mode_env_is_the_auto_default(monkeypatch):
    m = _looping()
    monkeypatch.setenv("GPU_MEMORY_MODE", "sequential_cpu_offload")
    h = pinstream.offload(m, device="cpu", engine="host", free_device_bytes=100 * GIB)
    assert h.mode == "sequential" and "GPU_MEMORY_MODE" in h.mode.reason
    h.detach()
    # An explicit mode wins over the environment.
    h = pinstream.offload(m, mode="full_load", device="cpu", engine="host")
    assert h.mode == "full_load"
    h.detach()
    monkeypatch.setenv("GPU_MEMORY_MODE", "turbo")
    with pytest.raises(modes.ModeError, match="GPU_MEMORY_MODE='turbo'.*allowed"):
        pinstream.offload(m, device="cpu", engine="host")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "fast"}, "unknown mode 'fast'; allowed: auto, full_load"),
        ({"mode": "budget"}, "needs budget_gb"),
        ({"mode": "budget", "budget_gb": -1}, "finite number > 0"),
        ({"mode": "budget", "budget_gb": float("nan")}, "finite number > 0"),
        ({"mode": "budget", "budget_gb": "lots"}, "must be a number"),
        ({"mode": "budget", "budget_gb": 1e-6}, "below the minimum"),
        ({"mode": "sequential", "prefetch": -1}, "prefetch must be"),
        ({"mode": "sequential", "prefetch": 1.5}, "prefetch must be"),
        ({"mode": "sequential", "device": "tpu"}, "device"),
        ({"mode": "sequential", "engine": "magic"}, "engine must be auto, cuda or host"),
        ({"mode": "sequential", "transfer_dtype": "int4"}, "transfer_dtype must be one of"),
        ({"mode": "sequential", "blocks": ["nope"]}, "nope"),
    ],
)
def test_bad_arguments(kwargs, match):
    m = _looping()
    kw = {"device": "cpu", "engine": "host"}
    kw.update(kwargs)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        pinstream.offload(m, **kw)
    # The model is untouched by a refused offload.
    assert all(p.device.type == "cpu" for p in m.parameters())
    assert getattr(m, "_pinstream_handle", None) is None


def test_explicit_block_names_override_discovery():
    m = _looping()
    x = torch.randn(2, 32)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", blocks=["blocks.0", "blocks.3"])
    assert h.stats()["num_blocks"] == 2
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_model_offload_switch_costs_no_device_to_host_copy():
    a, b = _looping(), _looping()
    x = torch.randn(2, 32)
    with torch.no_grad():
        ra, rb = a(x), b(x)
    ha = pinstream.offload(a, mode="model_offload", device="cpu", engine="host")
    hb = pinstream.offload(b, mode="model_offload", device="cpu", engine="host")
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(a(x), ra)
            assert ha.loaded and not hb.loaded
            assert torch.equal(b(x), rb)
            assert hb.loaded and not ha.loaded
    assert ha.stats()["writebacks"] == 0 and hb.stats()["writebacks"] == 0
    ha.detach()
    hb.detach()


def test_stats_fields():
    m = _looping()
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host")
    with torch.no_grad():
        m(torch.randn(2, 32))
    st = h.stats()
    for key in ("mode", "mode_reason", "bytes_uploaded", "uploads", "hits", "misses", "stall_ms", "upload_ms",
                "block_upload_ms", "peak_device_bytes", "pinned_bytes", "resident_bytes", "streamed_bytes"):
        assert key in st, key
    assert st["streamed_bytes"] > 0 and st["resident_bytes"] > 0
    assert math.isfinite(st["upload_gbps"])
    h.detach()


class Wide(nn.Module):
    """Blocks of several tensors (a Wan-like block in miniature): attention-ish
    projections, then a 4x MLP, so a budget plan can split them."""

    def __init__(self, n=12, dim=128):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                          nn.Linear(4 * dim, dim)) for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


@pytest.mark.parametrize("fraction", [0.4, 0.7])
def test_budget_splits_blocks_to_keep_more_resident(fraction, target):
    """In budget mode a block may keep a head of its tensors resident and stream only
    the rest, so the slots shrink to the largest rest and more of the model stays on
    the device than whole blocks allow: fewer bytes cross the link each pass, the
    results are unchanged, and the peak stays within the budget."""
    from pinstream import _C

    engine, device = target
    torch.manual_seed(0)
    m = Wide().to(device)
    x = torch.randn(4, 128, device=device)
    with torch.no_grad():
        ref = m(x)
    total = _bytes(m)
    budget = int(fraction * total)
    layout = [[p.numel() * p.element_size() for p in b.parameters()] for b in m.blocks]
    sizes = [sum(t) for t in layout]
    nonblock = sum(p.numel() * p.element_size() for p in m.inp.parameters())
    whole = _C.plan_residency(sizes, nonblock, "budget", budget, 1)
    whole_streamed = sum(s for s, r in zip(sizes, whole) if not r)

    h = pinstream.offload(m, mode="budget", budget_gb=budget / GIB, prefetch=1, device=device, engine=engine)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
        h.reset_stats()
        out = m(x)
    assert torch.equal(out, ref)
    st = h.stats()
    plan = st["plan"]
    assert plan["split_blocks"] > 0, plan["describe"]
    assert "split (head resident, rest streamed)" in plan["describe"]
    heads = plan["split_bytes"][: len(sizes)]
    assert sum(1 for hd in heads if hd) == plan["split_blocks"]
    assert all(0 < hd < s for hd, s in zip(heads, sizes) if hd)
    # one pass moves the streamed rests (and prefetches the next pass's first one)
    assert plan["streamed_block_bytes"] < whole_streamed
    assert plan["streamed_block_bytes"] <= st["bytes_uploaded"] <= plan["streamed_block_bytes"] + max(sizes) + 4096
    assert st["bytes_uploaded"] < whole_streamed
    assert st["peak_device_bytes"] <= budget
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
