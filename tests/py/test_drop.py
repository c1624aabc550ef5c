"""A model PinStream manages gives its memory back the moment its last reference goes: by
reference counting, with the cycle collector off, not at the next gc.collect(). The module
owns its handle, the handle refers to the module weakly, and no hook refers to the handle,
so dropping the model drops everything (pinned host copy, device slots, the runtime)."""

import gc
import os

import psutil
import pytest
import torch
from torch import nn

import pinstream
from pinstream import _C, pin_cap

MIB = 1024**2


class Net(nn.Module):
    def __init__(self, n=6, dim=512):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
                                    for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


def _rss():
    return psutil.Process(os.getpid()).memory_info().rss


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("mode,transfer", [("sequential", "auto"), ("budget", "auto"), ("model_offload", "auto"),
                                           ("full_load", "auto"), ("sequential", "fp8_e4m3")])
def test_dropping_the_model_frees_its_memory_at_once(mode, transfer, no_gc):
    def run(m, x):
        budget = 0.5 * size / 1024**3 if mode == "budget" else None
        h = pinstream.offload(m, mode=mode, budget_gb=budget, device="cpu", engine="host", transfer_dtype=transfer)
        with torch.no_grad():
            m(x)
            m(x)
        return h

    x = torch.randn(4, 1024)
    size = sum(p.numel() * p.element_size() for p in Net(dim=1024).parameters())  # about 100 MiB
    run(Net(dim=1024), x)  # once before measuring: allocator pools, thread pools, kernels
    base = _C.live_bytes()
    rss0 = _rss()
    m = Net(dim=1024)
    h = run(m, x)
    assert _C.live_bytes()["host"] >= base["host"] + size
    assert pin_cap.pinned_bytes_in_use() > 0
    del h  # the module owns its handle: nothing is freed yet, and the model still runs
    with torch.no_grad():
        m(x)
    assert pin_cap.pinned_bytes_in_use() > 0
    del m  # the last reference
    live = _C.live_bytes()
    assert live["host"] == base["host"], "the host copy outlived the model (a reference cycle?)"
    assert live["pinned"] == base["pinned"] and live["device"] == base["device"]
    assert live["runtimes"] == base["runtimes"]
    assert pin_cap.pinned_bytes_in_use() == 0
    assert _rss() - rss0 < 0.15 * size, (_rss() - rss0) / MIB


def test_many_models_one_after_another_stay_flat(no_gc):
    """What a queue of prompts alternating two models does: each new model drops the
    previous one. Host memory stays at one model's worth."""
    base = _C.live_bytes()["host"]
    highest = 0
    for i in range(8):
        m = Net(dim=256)
        pinstream.offload(m, mode="sequential", device="cpu", engine="host")
        with torch.no_grad():
            m(torch.randn(2, 256))
        highest = max(highest, _C.live_bytes()["host"] - base)
        del m
        assert _C.live_bytes()["host"] == base, i
    size = sum(p.numel() * p.element_size() for p in Net(dim=256).parameters())
    assert highest < 1.5 * size


def test_a_handle_outliving_its_model_says_so(no_gc):
    m = Net(n=2, dim=64)
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host")
    del m
    with pytest.raises(RuntimeError, match="no longer exists"):
        h.module
    assert h.detach() is None
