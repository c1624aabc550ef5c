"""Weights that are wrapper tensor subclasses: comfy-kitchen's QuantizedTensor, which
ComfyUI 0.8+ makes of scaled fp8 (and fp4) checkpoints. PinStream registers their inner
tensors (fp8 codes and scale) as stored, moves them like any weight, and while a block runs
the module holds a wrapper whose device is the device: outputs equal the model run
without PinStream, bit for bit, in every mode.
"""

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import pinstream
from pinstream.discovery import discover_blocks

try:
    from comfy_kitchen.tensor import QuantizedTensor
    _NO_KITCHEN = ""
except ImportError:  # the second kind below still runs
    QuantizedTensor = None
    _NO_KITCHEN = "comfy-kitchen (ComfyUI 0.8+'s quantized tensors) is not installed"
except Exception as e:  # noqa: BLE001 - installed but unusable here (its native backend): say why
    QuantizedTensor = None
    _NO_KITCHEN = f"comfy-kitchen is installed but cannot be imported here: {e!r}"


class ScaledFp8(torch.Tensor):
    """A minimal wrapper subclass of the same shape as QuantizedTensor (fp8 codes and a
    scale inside, the logical dtype outside; every op dequantizes), so the mechanism is
    tested without comfy-kitchen too, on the CUDA engine included."""

    @staticmethod
    def __new__(cls, q, scale, dtype):
        return torch.Tensor._make_wrapper_subclass(cls, q.shape, dtype=dtype, device=q.device, requires_grad=False)

    def __init__(self, q, scale, dtype):
        self._q, self._s = q, scale

    def __tensor_flatten__(self):
        return ["_q", "_s"], {"dtype": self.dtype}

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return ScaledFp8(inner["_q"], inner["_s"], ctx["dtype"])

    @classmethod
    def from_float(cls, w):
        s = (w.abs().amax() / 448.0).float()
        return cls((w / s).to(torch.float8_e4m3fn), s, w.dtype)

    def dequantize(self):
        return self._q.to(self.dtype) * self._s.to(self.dtype)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.detach.default:
            return ScaledFp8(args[0]._q.detach(), args[0]._s.detach(), args[0].dtype)
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") in (None, args[0].dtype):
            # .to(device) moves the inner tensors and keeps the wrapper, as QuantizedTensor does;
            # a plain result would let Module._apply set only the outer tensor's data and leave
            # the codes behind on the old device
            device = kwargs.get("device") or args[0].device
            return ScaledFp8(args[0]._q.to(device), args[0]._s.to(device), args[0].dtype)

        def plain(x):
            return x.dequantize() if isinstance(x, ScaledFp8) else x
        return func(*pytree.tree_map(plain, args), **pytree.tree_map(plain, kwargs))


KINDS = ["comfy_kitchen", "own"]
_quantize = {
    "comfy_kitchen": lambda w: QuantizedTensor.from_float(w, "TensorCoreFP8Layout"),
    "own": ScaledFp8.from_float,
}


@pytest.fixture(params=KINDS)
def kind(request):
    if request.param == "comfy_kitchen" and QuantizedTensor is None:
        pytest.skip(_NO_KITCHEN)
    return request.param


def _wrapped(t):
    return isinstance(t, ScaledFp8) or (QuantizedTensor is not None and isinstance(t, QuantizedTensor))


def _inner(t):
    return (t._q, t._s) if isinstance(t, ScaledFp8) else (t._qdata, t._params.scale)


class QLinear(nn.Module):
    """A Linear whose weight is a wrapper subclass, used the way ComfyUI's mixed-precision
    ops use it when the weight is already on the input's device (F.linear dispatches on
    the subclass, which dequantizes)."""

    def __init__(self, fin, fout, g, kind):
        super().__init__()
        w = torch.randn(fout, fin, generator=g) / fin**0.5
        self.weight = nn.Parameter(_quantize[kind](w), requires_grad=False)
        self.bias = nn.Parameter(0.01 * torch.randn(fout, generator=g), requires_grad=False)

    def forward(self, x):
        assert self.weight.device == x.device, (self.weight.device, x.device)  # the wrapper says where it is
        return nn.functional.linear(x, self.weight, self.bias)


class Block(nn.Module):
    def __init__(self, dim, g, kind):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = QLinear(dim, 4 * dim, g, kind)
        self.down = QLinear(4 * dim, dim, g, kind)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    def __init__(self, kind, dim=64, depth=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = QLinear(dim, dim, g, kind)  # a quantized weight outside the blocks
        self.blocks = nn.ModuleList([Block(dim, g, kind) for _ in range(depth)])
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def _storage_bytes(m):
    total = 0
    for t in list(m.parameters()) + list(m.buffers()):
        if _wrapped(t):
            total += sum(x.numel() * x.element_size() for x in _inner(t))
        else:
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_quantized_tensor_weights_stream_and_match(mode, target, kind):
    engine, device = target
    torch.manual_seed(0)
    m = Net(kind).to(device)
    x = torch.randn(3, 64, device=device)
    with torch.no_grad():
        ref = m(x).clone()
    d = discover_blocks(m, min_fraction=0.2)
    # storage bytes: one byte per fp8 code plus the scale, not the logical fp32 size
    assert d.total_bytes == _storage_bytes(m) < 0.5 * sum(t.numel() * 4 for t in m.parameters())
    kw = {}
    if mode == "budget":
        kw["budget_gb"] = (d.nonblock_bytes + 4 * d.largest_block_bytes) / 2**30
    host_wrappers = {n: p for n, p in m.named_parameters() if _wrapped(p)}
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
        assert p.device.type == torch.device(device).type and _inner(p)[0].device.type == p.device.type
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_quantized_tensor_registration_keeps_codes(kind):
    """The fp8 codes and scales PinStream holds are the stored ones (no upcast on the
    host), and the state dict still reads them."""
    m = Net(kind, seed=1)
    before = {n: tuple(x.clone() for x in _inner(p)) for n, p in m.named_parameters() if _wrapped(p)}
    h = pinstream.offload(m, mode="sequential", engine="host", device="cpu")
    for n, p in m.named_parameters():
        if n in before:
            q, s = before[n]
            q2, s2 = _inner(p)
            assert q2.dtype == torch.float8_e4m3fn
            assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)
    sd = m.state_dict()
    assert _wrapped(sd["blocks.0.up.weight"])
    h.detach()


class IteratedNet(nn.Module):
    """Blocks that are nn.Sequential and are iterated, never called (as ComfyUI's UNet
    runs a TimestepEmbedSequential's children itself): PinStream follows them through
    its per-layer hooks, and the wrappers must follow too."""

    def __init__(self, kind, dim=64, depth=5, seed=2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(dim), QLinear(dim, 2 * dim, g, kind), nn.GELU(),
                                                   QLinear(2 * dim, dim, g, kind)) for _ in range(depth)])

    def forward(self, x):
        for block in self.blocks:
            h = x
            for layer in block:
                h = layer(h)
            x = x + h
        return x


@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_quantized_tensor_weights_in_iterated_sequential_blocks(mode, target, kind):
    engine, device = target
    m = IteratedNet(kind).to(device)
    x = torch.randn(2, 64, device=device)
    with torch.no_grad():
        ref = m(x).clone()
    originals = {n: p for n, p in m.named_parameters() if _wrapped(p)}
    kw = {}
    if mode == "budget":
        block = sum(t.numel() * t.element_size() for t in _storage_tensors(m.blocks[0]))
        kw["budget_gb"] = 3.5 * block / 2**30
    h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
    with torch.no_grad():
        assert torch.equal(m(x), ref) and torch.equal(m(x), ref)
    st = h.stats()
    assert st["plan"]["streamed_blocks"] > 0 and st["acquires"] > 0
    # after a pass every block holds its original wrappers again
    assert all(dict(m.named_parameters())[n] is p for n, p in originals.items())
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def _storage_tensors(module):
    from pinstream.discovery import storage_tensors

    return [x for p in module.parameters() for x in storage_tensors(p)]


def test_own_wrapper_moves_its_inner_tensors_with_the_module():
    """The reference model is moved with Module.to(device) before PinStream sees it: the
    wrapper must carry its codes and scale along (the CUDA cases above rely on it)."""
    m = Net("own").to("meta")
    for q in (m.inp, m.blocks[0].up):
        assert isinstance(q.weight, ScaledFp8)
        assert q.weight.device.type == q.weight._q.device.type == q.weight._s.device.type == "meta"



def test_detach_moves_wrapper_inner_tensors_before_module_to(monkeypatch):
    """A model offloaded from the GPU keeps wrappers that say cuda while their codes sit in
    host memory. Module.to(cuda) skips such a wrapper (.to is a no-op when it already says
    cuda) and swaps in a copy rebuilt from its inner tensors, which then says cpu; so detach
    must move the inner tensors first. The CUDA cases above check the outcome on a GPU;
    here the order is checked on the host engine."""
    from pinstream.wrappers import WrapperSlot

    m = Net("own", seed=3)
    h = pinstream.offload(m, mode="sequential", engine="host", device="cpu")
    calls = []
    real_follow = WrapperSlot.follow_outer_device
    monkeypatch.setattr(WrapperSlot, "follow_outer_device", lambda self: (calls.append("follow"), real_follow(self)))
    real_to = m.to
    monkeypatch.setattr(m, "to", lambda *a, **k: (calls.append("to"), real_to(*a, **k))[1])
    h._original_device = torch.device("meta")  # stands for the GPU the model came from
    h.detach()
    n_wrapped = sum(1 for p in m.parameters() if _wrapped(p))
    assert calls == ["follow"] * n_wrapped + ["to"], calls
