"""Weights that are wrapper tensor subclasses: comfy-kitchen's QuantizedTensor, which
ComfyUI 0.8+ makes of scaled fp8 (and fp4) checkpoints. PinStream registers their inner
tensors (fp8 codes and scale) as stored, moves them like any weight, and while a block runs
the module holds a wrapper whose device is the device: outputs equal the model run
without PinStream, bit for bit, in every mode.
"""

import pytest
import torch
from torch import nn

import pinstream
from pinstream.discovery import discover_blocks

ck = pytest.importorskip("comfy_kitchen.tensor", reason="comfy-kitchen (ComfyUI's quantized tensors) not installed")
QuantizedTensor = ck.QuantizedTensor
LAYOUT = "TensorCoreFP8Layout"


class QLinear(nn.Module):
    """A Linear whose weight is a QuantizedTensor, used the way ComfyUI's mixed-precision
    ops use it when the weight is already on the input's device (F.linear dispatches on
    the subclass, which dequantizes)."""

    def __init__(self, fin, fout, g):
        super().__init__()
        w = torch.randn(fout, fin, generator=g) / fin**0.5
        self.weight = nn.Parameter(QuantizedTensor.from_float(w, LAYOUT), requires_grad=False)
        self.bias = nn.Parameter(0.01 * torch.randn(fout, generator=g), requires_grad=False)

    def forward(self, x):
        assert self.weight.device == x.device, (self.weight.device, x.device)  # the wrapper says where it is
        return nn.functional.linear(x, self.weight, self.bias)


class Block(nn.Module):
    def __init__(self, dim, g):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = QLinear(dim, 4 * dim, g)
        self.down = QLinear(4 * dim, dim, g)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self, dim=64, depth=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = QLinear(dim, dim, g)  # a quantized weight outside the blocks
        self.blocks = nn.ModuleList([Block(dim, g) for _ in range(depth)])
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def _storage_bytes(m):
    total = 0
    for t in list(m.parameters()) + list(m.buffers()):
        if isinstance(t, QuantizedTensor):
            total += t._qdata.numel() * t._qdata.element_size() + t._params.scale.numel() * 4
        else:
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_quantized_tensor_weights_stream_and_match(mode, target):
    engine, device = target
    torch.manual_seed(0)
    m = Net().to(device)
    x = torch.randn(3, 64, device=device)
    with torch.no_grad():
        ref = m(x).clone()
    d = discover_blocks(m, min_fraction=0.2)
    # storage bytes: one byte per fp8 code plus the scale, not the logical fp32 size
    assert d.total_bytes == _storage_bytes(m) < 0.5 * sum(t.numel() * 4 for t in m.parameters())
    kw = {}
    if mode == "budget":
        kw["budget_gb"] = (d.nonblock_bytes + 4 * d.largest_block_bytes) / 2**30
    host_wrappers = {n: p for n, p in m.named_parameters() if isinstance(p, QuantizedTensor)}
    h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
    assert h.model_bytes == _storage_bytes(m)
    with torch.no_grad():
        out = m(x)
        again = m(x)
    assert torch.equal(out, ref) and torch.equal(again, ref)
    st = h.stats()
    if mode in ("sequential", "budget"):
        assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
        # between passes the module holds its original wrappers again
        assert all(dict(m.named_parameters())[n] is p for n, p in host_wrappers.items() if n.startswith("blocks."))
    h.unload()
    assert all(dict(m.named_parameters())[n] is p for n, p in host_wrappers.items())
    with torch.no_grad():
        assert torch.equal(m(x), ref)  # reloads on use
    h.detach()
    assert all(dict(m.named_parameters())[n] is p for n, p in host_wrappers.items())
    for p in host_wrappers.values():
        assert p.device.type == torch.device(device).type and p._qdata.device.type == p.device.type
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_quantized_tensor_registration_frees_nothing_twice_and_keeps_codes():
    """The fp8 codes and scales PinStream holds are the stored ones (no upcast on the
    host), and the state dict still reads them."""
    m = Net(seed=1)
    before = {n: (p._qdata.clone(), p._params.scale.clone()) for n, p in m.named_parameters()
              if isinstance(p, QuantizedTensor)}
    h = pinstream.offload(m, mode="sequential", engine="host", device="cpu")
    for n, p in m.named_parameters():
        if n in before:
            q, s = before[n]
            assert p._qdata.dtype == torch.float8_e4m3fn
            assert torch.equal(p._qdata.view(torch.uint8), q.view(torch.uint8)) and torch.equal(p._params.scale, s)
    sd = m.state_dict()
    assert isinstance(sd["blocks.0.up.weight"], QuantizedTensor)
    h.detach()
