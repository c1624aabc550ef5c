"""The PinStream loaders pin within one cap shared with ComfyUI's own pinned memory
(model_management.TOTAL_PINNED_MEMORY) and with the other PinStream models."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # its helpers: files, names, ComfyUI

from comfy_nodes import patcher as P
from pinstream import pin_cap as E

ns, mm = T.ns, T.mm
GIB = 1024 ** 3


def _pins(model):
    st = model.pinstream.handle.stats()
    return st["pinned_bytes"], st["pageable_bytes"]


def test_loader_leaves_room_for_comfyui_pins(monkeypatch):
    (first,), msg = T._ps_unet("wan21_t2v", "sequential")
    assert isinstance(first, P.PinStreamPatcherMixin), msg
    size = sum(_pins(first))
    assert _pins(first)[1] == 0
    # room for exactly one more such model, beside the PinStream models already live
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", repr((E.pinned_bytes_in_use() + size + 1) / GIB))
    monkeypatch.setattr(mm, "MAX_PINNED_MEMORY", 1 << 40, raising=False)
    monkeypatch.setattr(mm, "TOTAL_PINNED_MEMORY", 0, raising=False)
    assert P.comfy_pinned_bytes() == 0
    (second,), _ = T._ps_unet("wan21_t2v", "sequential")
    assert _pins(second)[1] == 0  # fits
    second.pinstream.handle.detach()
    # ComfyUI has pinned half a model's worth of its own: PinStream keeps within the rest
    monkeypatch.setattr(mm, "TOTAL_PINNED_MEMORY", size // 2)
    assert P.comfy_pinned_bytes() == size // 2
    # the model is larger than what that leaves: its blocks beyond it live on disk (read
    # from its own file), and what it pins stays within the rest
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (third,), _ = T._ps_unet("wan21_t2v", "sequential")
    st = third.pinstream.handle.stats()
    assert st["disk_blocks"] > 0 and st["source_block_bytes"] == st["disk_block_bytes"]
    pinned, pageable = _pins(third)
    assert pinned <= size - size // 2 + 1
    # ComfyUI without pinning (--disable-pinned-memory, or older releases) counts nothing
    monkeypatch.setattr(mm, "MAX_PINNED_MEMORY", -1)
    assert P.comfy_pinned_bytes() == 0
    assert torch.equal(T._sample("wan21_t2v", third), T._ref("wan21_t2v"))
    mm.unload_all_models()
