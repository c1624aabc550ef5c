"""Weights that are tensor subclasses keeping their data in an ordinary storage, with
the format as Python attributes: the shape of ComfyUI-GGUF's GGMLTensor (quantized
bytes in a uint8 tensor; ``tensor_type``, ``tensor_shape`` and ``patches`` on the
object; the layer dequantizes on the device). PinStream moves the storage and leaves the
Python object, so its attributes, where they are: outputs equal the model run without
PinStream, bit for bit, in every mode. The real ComfyUI-GGUF is tested in
tests/comfy/test_gguf.py where a checkout exists.
"""

import pytest
import torch
from torch import nn

import pinstream


class Q8Tensor(torch.Tensor):
    """int8 codes with one fp32 scale per row packed after them, in one uint8 storage;
    the logical shape and a tag live on the object (as GGMLTensor keeps tensor_type and
    tensor_shape)."""

    def __new__(cls, raw, *, tensor_type, tensor_shape):
        return super().__new__(cls, raw)

    def __init__(self, raw, *, tensor_type, tensor_shape):
        super().__init__()
        self.tensor_type = tensor_type
        self.tensor_shape = tensor_shape

    def detach(self, *args, **kwargs):
        return self  # as GGMLTensor: nn.Parameter(t) keeps the object and its attributes

    @classmethod
    def quantize(cls, w):
        rows, cols = w.shape
        scale = (w.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(1e-12)
        codes = torch.round(w / scale).to(torch.int8)
        raw = torch.cat([codes.view(torch.uint8), scale.view(torch.uint8).reshape(rows, 4)], dim=1)
        return cls(raw.contiguous(), tensor_type="Q8_ROW", tensor_shape=torch.Size((rows, cols)))

    def dequantize(self, dtype):
        rows, cols = self.tensor_shape
        raw = torch.Tensor.as_subclass(self, torch.Tensor)
        codes = raw[:, :cols].contiguous().view(torch.int8).to(dtype)
        scale = raw[:, cols:].contiguous().view(torch.float32).to(dtype)
        return codes * scale


class QLinear(nn.Module):
    def __init__(self, fin, fout, g):
        super().__init__()
        w = torch.randn(fout, fin, generator=g) / fin**0.5
        self.weight = nn.Parameter(Q8Tensor.quantize(w), requires_grad=False)
        self.bias = nn.Parameter(0.01 * torch.randn(fout, generator=g), requires_grad=False)

    def forward(self, x):
        w = self.weight
        assert isinstance(w, Q8Tensor) and w.tensor_type == "Q8_ROW", type(w)  # attributes kept
        assert w.device == x.device, (w.device, x.device)
        return nn.functional.linear(x, w.dequantize(x.dtype), self.bias)


class Net(nn.Module):
    def __init__(self, dim=64, depth=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = QLinear(dim, dim, g)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(dim), QLinear(dim, 2 * dim, g), nn.GELU(),
                                                   QLinear(2 * dim, dim, g)) for _ in range(depth)])

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_storage_subclass_weights_stream_and_match(mode, target):
    engine, device = target
    m = Net().to(device)
    x = torch.randn(3, 64, device=device)
    with torch.no_grad():
        ref = m(x).clone()
    q = {n: p for n, p in m.named_parameters() if isinstance(p, Q8Tensor)}
    raw_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    kw = {}
    if mode == "budget":
        block = sum(p.numel() * p.element_size() for p in m.blocks[0].parameters())
        kw["budget_gb"] = (raw_bytes - 6 * block + 4 * block) / 2**30
    h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
    assert h.model_bytes == raw_bytes  # the quantized bytes, as stored
    with torch.no_grad():
        assert torch.equal(m(x), ref) and torch.equal(m(x), ref)
    if mode in ("sequential", "budget"):
        st = h.stats()
        assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
    # the very same Python objects, attributes and all
    assert all(dict(m.named_parameters())[n] is p for n, p in q.items())
    assert all(p.tensor_type == "Q8_ROW" and p.tensor_shape[1] * 1 == p.shape[1] - 4 for p in q.values())
    h.unload()
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()
    assert all(dict(m.named_parameters())[n] is p for n, p in q.items())
    with torch.no_grad():
        assert torch.equal(m(x), ref)
