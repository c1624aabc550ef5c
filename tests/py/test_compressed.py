"""transfer_dtype="compressed": weights held in pinned RAM and sent in the exact coded form
(csrc/core/exact_codec.h), decoded after the upload. Outputs equal full load bit for bit in
every mode; the coded form is the only host copy, yet state_dict(), weight writes and
detach() see exact values."""

import gc

import pytest
import torch
from torch import nn

import pinstream
from pinstream import _C
from pinstream.coded import CodedValue

GIB = 1024**3


class Net(nn.Module):
    def __init__(self, n=6, dim=256, transposed=False):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                    for _ in range(n))
        if transposed:  # a dense, non-contiguous weight keeps its layout
            w = self.blocks[0][0].weight
            self.blocks[0][0].weight = nn.Parameter(w.detach().t().contiguous().t())

    def forward(self, x):
        x = self.norm(self.inp(x))
        for b in self.blocks:
            x = x + b(x)
        return x


def _net(dtype, **kw):
    torch.manual_seed(0)
    return Net(**kw).to(dtype).eval()


def _offload(m, mode, engine, device, **kw):
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    budget = 0.8 * size / GIB if mode == "budget" else None
    return pinstream.offload(m, mode=mode, budget_gb=budget, device=device, engine=engine,
                             transfer_dtype="compressed", **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_outputs_equal_full_load_bit_for_bit(mode, dtype, target):
    engine, device = target
    m = _net(dtype, transposed=True).to(device)
    x = torch.randn(4, 256, dtype=dtype, device=device)
    with torch.no_grad():
        ref = m(x)
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    h = _offload(m, mode, engine, device)
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(m(x), ref)
    st = h.stats()
    assert st["exact_coded_tensors"] == 13  # the six blocks' and inp's weight and bias matrices...
    assert st["exact_stored_tensors"] > 0 and "fewer than 4096 elements" in st["exact_skips"]
    limit = 0.72 if dtype == torch.bfloat16 else 0.9  # fp16's top byte carries 2 mantissa bits
    assert st["exact_ratio"] < limit, st["exact_ratio"]
    assert st["pinned_bytes"] < limit * size + 64 * 1024  # the coded form is the host copy
    if mode in ("sequential", "budget"):
        assert st["transform_bytes"] > 0 and st["transform_ms"] > 0  # decoded after each upload
    h.detach()
    assert m.blocks[0][0].weight.stride() == (1, 512)
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_weights_show_nan_between_uses_and_state_dict_is_exact():
    m = _net(torch.bfloat16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    h = _offload(m, "sequential", "host", "cpu")
    w = m.blocks[2][0].weight
    assert torch.isnan(w).all(), "a coded weight outside a forward must not show plausible values"
    sd = m.state_dict()
    assert set(sd) == set(before)
    coded = sd["blocks.2.0.weight"]
    assert isinstance(coded, CodedValue) and coded._value is None  # listing keys decodes nothing
    assert coded.shape == w.shape and coded.dtype == torch.bfloat16
    for k, v in before.items():
        assert torch.equal(sd[k], v), k
    assert coded._value is not None
    # a raw reader (safetensors' save) gets the decoded bytes
    from safetensors.torch import load, save

    back = load(save({k: v.contiguous() if not isinstance(v, CodedValue) else v for k, v in sd.items()}))
    assert all(torch.equal(back[k], before[k]) for k in before)
    h.detach()
    assert not torch.isnan(m.blocks[2][0].weight).any()


def test_new_values_are_coded_again_and_used():
    m = _net(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    h = _offload(m, "sequential", "host", "cpu")
    w = m.blocks[1][2].weight
    old = h.host_value(w)
    assert old.shape == w.shape and not torch.isnan(old).any()
    new = (old.float() * 1.5).to(torch.bfloat16)
    h.write_host_values({w: new})
    assert torch.equal(h.host_value(w), new)
    with torch.no_grad():
        out = m(x)
    h.detach()
    assert torch.equal(m.blocks[1][2].weight, new)
    with torch.no_grad():
        assert torch.equal(m(x), out)
    with pytest.raises(ValueError, match="shape"):
        m2 = _net(torch.bfloat16)
        h2 = _offload(m2, "sequential", "host", "cpu")
        try:
            h2.write_host_values({m2.blocks[0][0].weight: torch.zeros(3, dtype=torch.bfloat16)})
        finally:
            h2.detach()


def test_unsupported_dtypes_stay_as_stored_and_say_why():
    m = _net(torch.float32)
    x = torch.randn(2, 256)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, "sequential", "host", "cpu")
    st = h.stats()
    assert st["exact_coded_tensors"] == 0
    assert any("16- or 8-bit float" in why for why in st["exact_skips"])
    assert st["exact_ratio"] > 0.99
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_uniform_bytes_where_coding_does_not_pay_stay_as_stored():
    m = _net(torch.bfloat16, n=2)
    with torch.no_grad():
        for p in m.blocks[0].parameters():  # every bit pattern: nothing to gain
            p.view(torch.int16).copy_(torch.randint(-32768, 32767, p.shape, dtype=torch.int16))
    h = _offload(m, "sequential", "host", "cpu")
    assert any("would not pay" in why for why in h.stats()["exact_skips"])
    h.detach()


def test_fp8_weights_are_coded_too():
    m = _net(torch.bfloat16)
    with torch.no_grad():
        for b in m.blocks:
            b[0].weight.data = (b[0].weight.float() * 10).to(torch.float8_e4m3fn)
    before = m.blocks[0][0].weight.clone()
    h = _offload(m, "sequential", "host", "cpu")
    assert h.stats()["exact_coded_tensors"] >= 6
    assert torch.equal(h.host_value(m.blocks[0][0].weight).view(torch.uint8), before.view(torch.uint8))
    h.detach()
    assert torch.equal(m.blocks[0][0].weight.view(torch.uint8), before.view(torch.uint8))


def test_load_state_dict_is_refused_with_what_to_do():
    m = _net(torch.bfloat16)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    h = _offload(m, "sequential", "host", "cpu")
    with pytest.raises(RuntimeError, match="detach"):
        m.load_state_dict(sd)
    h.detach()


def test_a_dropped_coded_model_frees_its_memory():
    gc.collect()
    gc.disable()
    try:
        base = _C.live_bytes()
        m = _net(torch.bfloat16)
        _offload(m, "sequential", "host", "cpu")
        with torch.no_grad():
            m(torch.randn(2, 256, dtype=torch.bfloat16))
        assert _C.live_bytes()["host"] > base["host"]
        del m
        assert _C.live_bytes()["host"] == base["host"]
    finally:
        gc.enable()


def test_the_coded_seed_mode_names_select_compressed():
    m = _net(torch.bfloat16, n=2)
    h = pinstream.offload(m, mode="sequential_cpu_offload_and_compressed", device="cpu", engine="host")
    assert h.mode.name == "sequential" and h.mode.transfer_dtype == "compressed"
    assert h.stats()["exact_coded_tensors"] > 0
    h.detach()


def _cache_files(d):
    return sorted(p for p in d.iterdir() if p.suffix == ".psx")


def test_a_second_offload_reads_the_coded_form_from_the_cache(tmp_path):
    m = _net(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, "sequential", "host", "cpu", cache_dir=str(tmp_path))
    st = h.stats()
    assert st["cache_dir"] == str(tmp_path) and st["cache_hits"] == 0
    assert st["cache_stored"] == st["exact_coded_tensors"] == len(_cache_files(tmp_path))
    h.detach()
    h = _offload(m, "sequential", "host", "cpu", cache_dir=str(tmp_path))
    st = h.stats()
    assert st["cache_hits"] == st["exact_coded_tensors"] and st["cache_stored"] == 0
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


@pytest.mark.parametrize("damage", ["flip", "truncate", "other_format"])
def test_corrupt_and_stale_cache_entries_are_coded_again_never_used(tmp_path, damage):
    m = _net(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(x)
    _offload(m, "sequential", "host", "cpu", cache_dir=str(tmp_path)).detach()
    victim = _cache_files(tmp_path)[0]
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x55  # a bit of its coded bytes
    elif damage == "truncate":
        data = data[: len(data) - 7]
    else:
        data[8] ^= 0x7F  # the format version in the header
    victim.write_bytes(bytes(data))
    h = _offload(m, "sequential", "host", "cpu", cache_dir=str(tmp_path))
    st = h.stats()
    assert st["cache_rebuilt"] == 1 and st["cache_hits"] == st["exact_coded_tensors"] - 1
    assert st["cache_stored"] == 1  # coded again, and written back
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_an_unwritable_cache_is_reported_once_and_coding_goes_on(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    m = _net(torch.bfloat16)
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(x)
    cache = str(blocker / "exact")
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        h = _offload(m, "sequential", "host", "cpu", cache_dir=cache)
    assert h.stats()["cache_error"]
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: no second warning for the same directory
        h = _offload(m, "sequential", "host", "cpu", cache_dir=cache)
    h.detach()


def test_auto_says_why_it_did_not_choose_compressed():
    m = _net(torch.bfloat16)
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    h = pinstream.offload(m, mode="auto", budget_gb=0.5 * size / GIB, device="cpu", engine="host")
    assert h.mode.name in ("sequential", "budget") and h.mode.transfer_dtype == "auto"
    assert "compressed not chosen" in h.mode.reason
    h.detach()


def test_a_budget_keeps_blocks_coded_on_the_device_and_decodes_them_at_each_use(target):
    engine, device = target
    m = _net(torch.bfloat16, n=8).to(device)
    x = torch.randn(4, 256, dtype=torch.bfloat16, device=device)
    with torch.no_grad():
        ref = m(x)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    budget = int(0.55 * size)
    h = pinstream.offload(m, mode="budget", budget_gb=budget / GIB, device=device, engine=engine,
                          transfer_dtype="compressed")
    plan = h.plan
    # held coded (a third smaller) rather than as stored: more of the model stays on the device
    assert plan["coded_blocks"] > 0 and plan["coded_block_bytes"] > 0, plan["describe"]
    assert "resident coded" in plan["describe"] and plan["device_bytes"] <= budget
    assert plan["streamed_block_bytes"] < 0.55 * size  # what crosses the link per pass: coded bytes
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(m(x), ref)
    st = h.stats()
    assert st["coded_refills"] >= 3 * plan["coded_blocks"]  # decoded device to device, no upload
    assert st["peak_device_bytes"] <= budget
    assert st["resident_coded_bytes"] == plan["coded_block_bytes"]
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in before.items())
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_auto_codes_where_the_measured_rates_make_the_copy_queue_faster(monkeypatch):
    from pinstream import calibrate

    m = _net(torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = m(x)
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    monkeypatch.setattr(calibrate, "rates", lambda *a: calibrate.Rates(link_gbps=25.0, decode_gbps=500.0))
    h = pinstream.offload(m, mode="auto", budget_gb=0.5 * size / GIB, device="cpu", engine="host")
    assert h.mode.transfer_dtype == "compressed", h.mode.reason
    assert "compressed (exact) chosen" in h.mode.reason and "decode 500.0 GB/s" in h.mode.reason
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert h.stats()["exact_coded_tensors"] > 0
    h.detach()
    # the same model where decoding is slower than the link saves: as stored, and the reason says why
    monkeypatch.setattr(calibrate, "rates", lambda *a: calibrate.Rates(link_gbps=25.0, decode_gbps=30.0))
    h = pinstream.offload(m, mode="auto", budget_gb=0.5 * size / GIB, device="cpu", engine="host")
    assert h.mode.transfer_dtype == "auto" and "compressed not chosen" in h.mode.reason
    assert "1.51x the time per streamed byte" in h.mode.reason or "x the time per streamed byte" in h.mode.reason
    h.detach()
