"""The pinning cap is one for the whole process: every PinStream model pins within what the
others left, a detached (or collected) model gives its share back, and pinned memory that
PinStream does not own (ComfyUI's own pins) can be left out. Host engine, which pins and
counts as the CUDA engine does."""

import gc

import pytest
import torch
from torch import nn

import pinstream
from pinstream import pin_cap as E

GIB = 1024 ** 3


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)) for _ in range(6)])


def _offload(m, **kw):
    # one block per host chunk, so a cap can pin part of a model
    return pinstream.offload(m, mode="sequential", engine="host", device="cpu", chunk_bytes=1, **kw)


@pytest.fixture
def no_live_handles():
    for h in E.live_handles():
        h.detach()
    assert E.pinned_bytes_in_use() == 0
    yield
    for h in E.live_handles():
        h.detach()


def _pinned(h):
    st = h.stats()
    return st["pinned_bytes"], st["pageable_bytes"]


def test_models_share_one_cap(monkeypatch, no_live_handles):
    x = torch.randn(2, 64)
    a_model, b_model, c_model = _net(1), _net(2), _net(3)
    refs = [m(x) for m in (a_model, b_model, c_model)]
    a = _offload(a_model)
    a_pinned, a_pageable = _pinned(a)
    assert a_pageable == 0 and E.pinned_bytes_in_use() == a_pinned
    # a cap that holds model a and half of model b: b's blocks beyond what the cap leaves
    # (less its pinned read ring) live on disk, and it pins within the rest
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", repr((a_pinned * 1.5 + 1) / GIB))
    assert E.available_pin_bytes() == pytest.approx(a_pinned * 0.5, abs=2)
    with pytest.warns(RuntimeWarning, match="live on disk"):
        b = _offload(b_model)
    st = b.stats()
    assert st["disk_blocks"] == 6 and st["disk_block_bytes"] > 0
    assert st["pageable_bytes"] <= 512  # the non-block part (empty here) stays in RAM
    # a model over the cap still runs, from disk
    with torch.no_grad():
        assert torch.equal(b_model(x), refs[1])
    b_pinned = _pinned(b)[0]  # its read ring, while loaded, is pinned too
    assert b.stats()["read_ring_bytes"] > 0
    assert E.pinned_bytes_in_use() == a_pinned + b_pinned <= a_pinned * 1.5 + 1
    # detaching a gives its share back: c pins all of itself
    a.detach()
    assert E.pinned_bytes_in_use() == b_pinned
    c = _offload(c_model)
    assert _pinned(c)[1] == 0
    with torch.no_grad():
        assert torch.equal(c_model(x), refs[2])
    # a model and handle dropped without detach give it back when collected
    del c, c_model
    gc.collect()
    assert E.pinned_bytes_in_use() == b_pinned


def test_pins_elsewhere_and_an_explicit_cap(monkeypatch, no_live_handles):
    a = _offload(_net(4))
    size = _pinned(a)[0]
    a.detach()
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", repr(2 * size / GIB))
    assert E.available_pin_bytes() == pytest.approx(2 * size, abs=2)
    assert E.available_pin_bytes(pinned_elsewhere=int(1.5 * size)) == pytest.approx(0.5 * size, abs=2)
    assert E.available_pin_bytes(pinned_elsewhere=10 * size) == 0
    with pytest.warns(RuntimeWarning, match="could not be pinned"):
        # a host budget of its own: the model stays in RAM, pinned within the cap
        b = _offload(_net(5), pin_cap_bytes=E.available_pin_bytes(pinned_elsewhere=int(1.5 * size)),
                     host_budget_gb=1.0)
    assert 0 < _pinned(b)[0] <= 0.5 * size + 2
    # an explicit cap is this model's own: it is not reduced by the others
    c = _offload(_net(6), pin_cap_bytes=size)
    assert _pinned(c)[1] == 0
