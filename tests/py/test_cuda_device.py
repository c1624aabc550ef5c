"""On a GPU: PinStream runs a model on the device it was given, whatever device is current,
and every call leaves the caller's current device as it found it. With two GPUs the model
goes to the last one while cuda:0 is current; with one, the same checks on cuda:0. Skipped
without a GPU (the GPU check runs it)."""

import pytest
import torch
from torch import nn

import pinstream
from pinstream import _C

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and _C.cuda_built()),
                                reason="needs a CUDA device and the CUDA engine")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 256)) for _ in range(6)])


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload", "full_load"])
def test_the_model_runs_on_its_device_and_the_current_device_stays(mode):
    target = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.set_device(0)
    m = _net().to(target)
    x = torch.randn(8, 256, device=target)
    with torch.no_grad():
        ref = m(x)
    size = sum(p.numel() * p.element_size() for p in m.parameters())
    budget = 0.5 * size / 1024**3 if mode == "budget" else None
    h = pinstream.offload(m, mode=mode, budget_gb=budget, device=str(target), engine="cuda")
    assert torch.cuda.current_device() == 0
    for call in (h.load, h.unload, h.load):
        call()
        assert torch.cuda.current_device() == 0, call
    with torch.no_grad():
        for _ in range(2):
            out = m(x)
            assert torch.cuda.current_device() == 0
            assert out.device == target and torch.equal(out, ref)
    st = h.stats()
    assert torch.cuda.current_device() == 0
    assert st["device"] == str(target)
    h.unload()
    h.detach()
    assert torch.cuda.current_device() == 0
    assert next(m.parameters()).device == target
