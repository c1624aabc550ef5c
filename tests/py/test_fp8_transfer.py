"""fp8 transfer: blocks cross the link as e4m3 codes + per-row scales and are
dequantized on the device (the CPU reference on the host engine, our kernel on a GPU).

The expected result is computed independently with torch: each 2-D+ float weight of a
block quantized per row (scale = amax / 448, codes = (w / scale) in float8_e4m3fn) and
dequantized (codes * scale, rounded to the weight's dtype). The model under fp8
transfer must equal the reference model bit for bit.
"""

import pytest
import torch
from fixtures.models import build, example_inputs

import pinstream
from pinstream import modes
from pinstream.discovery import discover_blocks


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _dequantized_copy(model, family, dtype):
    torch.manual_seed(0)
    ref = build(family).to(dtype)
    ref.load_state_dict(model.state_dict())
    d = discover_blocks(ref, min_fraction=0.2)
    worst = 0.0
    with torch.no_grad():
        for _name, block in d.blocks:
            for p in block.parameters():
                if p.dim() >= 2 and p.numel() > 0 and p.dtype in (torch.float32, torch.float16, torch.bfloat16):
                    w = p.float().reshape(p.shape[0], -1)
                    amax = w.abs().amax(dim=1, keepdim=True)
                    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
                    deq = (w / scale).to(torch.float8_e4m3fn).float() * scale
                    worst = max(worst, (deq - w).abs().max().item())
                    p.copy_(deq.reshape(p.shape).to(p.dtype))
    return ref, worst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["wan", "flux"])
@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_fp8_transfer_equals_torch_dequantized_reference(family, dtype, mode, target):
    engine, device = target
    torch.manual_seed(0)
    m = build(family).to(dtype).to(device)
    inputs = [x.to(device).to(dtype) if torch.is_tensor(x) and x.is_floating_point() else
              (x.to(device) if torch.is_tensor(x) else x) for x in example_inputs(m)]
    ref_model, worst = _dequantized_copy(m.cpu(), family, dtype)
    ref_model.to(device)
    m.to(device)
    with torch.no_grad():
        ref = _first(ref_model(*inputs)).clone()
        exact = _first(m(*inputs)).clone()
    kw = {}
    if mode == "budget":
        d = discover_blocks(m, min_fraction=0.2)
        kw["budget_gb"] = (d.nonblock_bytes + 4 * d.largest_block_bytes) / 2**30
    h = pinstream.offload(m, mode=mode, device=device, engine=engine, transfer_dtype="fp8_e4m3", **kw)
    with torch.no_grad():
        out = _first(m(*inputs))
        again = _first(m(*inputs))
    assert torch.equal(out, ref) and torch.equal(again, ref)
    assert not torch.equal(out, exact)  # lossy, as documented
    st = h.stats()
    assert st["fp8_blocks"] == len(h.discovery.blocks)
    assert 0 < st["fp8_max_abs_error"] <= worst * 1.0001 + 1e-12
    assert 0 < st["fp8_mean_abs_error"] <= st["fp8_max_abs_error"]
    assert len(st["fp8_block_error"]) == st["fp8_blocks"]
    h.detach()
    # The host copy was never changed: after detach the model is exact again.
    with torch.no_grad():
        assert torch.equal(_first(m(*inputs)), exact)


def test_fp8_halves_the_bytes_on_the_link_for_bf16_weights():
    torch.manual_seed(0)
    m = build("wan").to(torch.bfloat16)
    x = [t.to(torch.bfloat16) if torch.is_tensor(t) and t.is_floating_point() else t for t in example_inputs(m)]

    def per_pass(transfer):
        h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", transfer_dtype=transfer)
        with torch.no_grad():
            m(*x)
            h.reset_stats()
            m(*x)
        n = h.stats()["bytes_uploaded"]
        h.detach()
        return n

    bf16, fp8 = per_pass("auto"), per_pass("fp8_e4m3")
    # Codes are half of bf16; per-row scales and the 1-D tensors sent as stored add a little.
    assert fp8 < 0.6 * bf16, (fp8, bf16)


def test_state_dict_keeps_the_exact_weights_under_fp8():
    torch.manual_seed(0)
    m = build("wan")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", transfer_dtype="fp8_e4m3")
    with torch.no_grad():
        m(*example_inputs(m))
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    h.detach()


@pytest.mark.parametrize("alias,mode", [("model_cpu_offload_and_qfloat8", "model_offload"),
                                        ("sequential_cpu_offload_and_qfloat8", "sequential")])
def test_qfloat8_aliases_turn_on_fp8_transfer(alias, mode):
    torch.manual_seed(0)
    m = build("wan")
    ref_model, _ = _dequantized_copy(m, "wan", torch.float32)
    with torch.no_grad():
        ref = ref_model(*example_inputs(m))
    h = pinstream.offload(m, mode=alias, device="cpu", engine="host")
    assert h.mode == mode and h.mode.transfer_dtype == "fp8_e4m3"
    with torch.no_grad():
        assert torch.equal(m(*example_inputs(m)), ref)  # the dequantized device copy ran
    assert h.stats()["fp8_blocks"] > 0
    h.detach()


def test_fp8_on_a_model_without_blocks_is_a_clear_error():
    with pytest.raises(modes.ModeError, match="fp8_e4m3.*no"):
        pinstream.offload(torch.nn.Linear(8, 8), mode="model_offload", device="cpu", engine="host",
                          transfer_dtype="fp8_e4m3")


def test_quantization_splits_large_weights_across_threads_with_the_same_result():
    """Weights over 4 M codes are quantized as row ranges on several threads; codes,
    scales and the error report do not depend on the thread count."""

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # 2500 x 2100 = 5.25 M codes: two uneven row ranges; plus a small weight.
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2100, 2500), torch.nn.Linear(2500, 64)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    x = torch.randn(3, 2100)
    results = []
    threads_before = torch.get_num_threads()
    try:
        for threads in (1, 4):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            m = Two()
            h = pinstream.offload(m, mode="sequential", engine="host", transfer_dtype="fp8_e4m3",
                                  blocks=["blocks.0", "blocks.1"])
            with torch.no_grad():
                out = m(x)
            st = h.stats()
            results.append((out, st["fp8_max_abs_error"], st["fp8_mean_abs_error"], st["fp8_block_error"]))
            h.detach()
    finally:
        torch.set_num_threads(threads_before)
    (out1, max1, mean1, blocks1), (out4, max4, mean4, blocks4) = results
    assert torch.equal(out1, out4)
    assert (max1, mean1, blocks1) == (max4, mean4, blocks4)
    # And the split weight equals torch's per-row quantization of it.
    torch.manual_seed(0)
    w = Two().blocks[0].weight.detach()
    amax = w.abs().amax(dim=1, keepdim=True)
    deq = (w / (amax / 448.0)).to(torch.float8_e4m3fn).float() * (amax / 448.0)
    assert blocks1[0][0] == pytest.approx((deq - w).abs().max().item(), rel=1e-6)
