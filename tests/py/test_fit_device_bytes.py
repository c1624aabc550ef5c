"""OffloadHandle.fit_device_bytes(): a full_load or budget plan shrinks to what a host
memory manager allows for the coming run (ComfyUI leaves room for a larger latent's
activations) and grows back to the plan offload() made; outputs stay bit-identical."""

import pytest
import torch
from torch import nn

import pinstream

GIB = 1024**3


class Blk(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.l1, self.l2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


class Net(nn.Module):
    def __init__(self, n=8, d=32):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Blk(d) for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


def _setup(mode, target):
    engine, device = target
    torch.manual_seed(0)
    m = Net().eval().to(device)
    x = torch.randn(3, 32, device=device)
    with torch.no_grad():
        ref = m(x)
    model_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    kw = {"budget_gb": 0.8 * model_bytes / GIB} if mode == "budget" else {}
    h = pinstream.offload(m, mode=mode, device=device, engine=engine, **kw)
    return m, x, ref, h


@pytest.mark.parametrize("mode", ["full_load", "budget"])
def test_shrinks_to_the_allowance_and_grows_back(mode, target):
    m, x, ref, h = _setup(mode, target)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    first = h.plan["device_bytes"]
    allowed = int(0.5 * h.model_bytes)
    assert h.fit_device_bytes(allowed)
    assert not h.loaded  # the next use loads the smaller plan
    assert h.plan["device_bytes"] <= allowed and h.mode.name == "budget"
    assert "fitted to" in h.mode.reason
    with torch.no_grad():
        assert torch.equal(m(x), ref) and torch.equal(m(x), ref)
    assert h.runtime.device_bytes <= allowed and h.stats()["plan"]["streamed_blocks"] > 0
    # a little more room than now: not worth a reload
    assert not h.fit_device_bytes(h.plan["device_bytes"] + int(0.01 * h.model_bytes))
    # no limit again: the plan offload() made
    assert h.fit_device_bytes(None)
    assert h.plan["device_bytes"] == first and h.mode.name == mode
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert not h.fit_device_bytes(10 * first)  # never above the first plan
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_below_the_streaming_minimum_streams_every_block(target):
    m, x, ref, h = _setup("full_load", target)
    assert h.fit_device_bytes(1)
    assert h.mode.name == "sequential" and h.plan["resident_blocks"] == 0
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


@pytest.mark.parametrize("mode", ["sequential", "model_offload"])
def test_modes_with_nothing_to_give_are_left_alone(mode, target):
    m, x, ref, h = _setup(mode, target)
    plan = dict(h.plan)
    assert not h.fit_device_bytes(1)
    assert h.plan == plan and h.mode.name == mode
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_an_allowance_that_varies_a_little_costs_one_reload(target):
    m, x, ref, h = _setup("full_load", target)
    allowed = int(0.6 * h.model_bytes)
    assert h.fit_device_bytes(allowed)
    for wobble in (-0.01, 0.01, -0.005, 0.03):  # the next runs' allowances, within a few % of the model
        assert not h.fit_device_bytes(allowed + int(wobble * h.model_bytes)), wobble
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()
