"""FlashPortrait Loader (PinStream), against real ComfyUI source: it runs FlashPortrait's own
loader with ComfyUI's device redirected to the CPU, so the pipe is built in host RAM, then
puts each component under its mode. FlashPortrait is not on PyPI: here its loader is a
stand-in module of the same shape (``import comfy.model_management as mm``, every component
built and moved with ``.to(mm.get_torch_device())``, the FLASH_PORTRAIT_PIPE dict and the
face-alignment paths returned), registered as ComfyUI registers a custom node."""

import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_pipeline_offload as T  # the FlashPortrait-shaped pipe, its sampling

from comfy_nodes import flashportrait as FP
from comfy_nodes import nodes as N

ns = T.ns
BUILT_ON = []  # the devices the stand-in loader built on


def _stand_in_pack(monkeypatch, device_seen_by_loader=None):
    """A module like FlashPortrait's nodes.py, with its FlashPortraitLoader registered."""
    import comfy.model_management

    mod = types.ModuleType("flashportrait_stand_in.nodes")
    mod.mm = comfy.model_management

    class FlashPortraitLoader:
        def load_models(self, precision, GPU_memory_mode, download_missing):
            device = mod.mm.get_torch_device()
            BUILT_ON.append((device, GPU_memory_mode, precision))
            if device_seen_by_loader is not None:  # what ComfyUI would give without the redirect
                device = device_seen_by_loader
            pipe = T.flash_portrait_pipe()
            for key in ("transformer", "vae", "text_encoder", "clip_image_encoder", "portrait_encoder"):
                pipe[key].to(device)
            pipe["device"] = device
            return pipe, {"det_path": "face_det.onnx", "align_path": "face_landmark.onnx",
                          "pd_fpg_path": "pd_fpg.pth"}

    FlashPortraitLoader.__module__ = mod.__name__
    mod.FlashPortraitLoader = FlashPortraitLoader
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(ns.nodes.NODE_CLASS_MAPPINGS, FP.LOADER, FlashPortraitLoader)
    return mod


def _gpu_elsewhere(monkeypatch):
    """ComfyUI's device is not the CPU (meta stands in for the GPU this machine lacks);
    the pipe computes on the CPU."""
    import comfy.model_management

    monkeypatch.setattr(comfy.model_management, "get_torch_device", lambda: torch.device("meta"))
    monkeypatch.setattr(FP, "compute_device", lambda: torch.device("cpu"))


def test_the_pipe_is_built_on_the_host_and_each_component_runs_its_mode(monkeypatch):
    ref_frames, ref_proj = T.sample_flash_portrait(T.flash_portrait_pipe())
    mod = _stand_in_pack(monkeypatch)
    _gpu_elsewhere(monkeypatch)
    mm = mod.mm
    BUILT_ON.clear()
    (pipe, face), msg = N.run_load_flashportrait("bf16", False, "vae=full_load", 0.0, 1, True)
    # FlashPortrait's loader ran once, in its default mode, seeing the CPU as ComfyUI's device
    # (without the redirect it builds on ComfyUI's device: the next test)
    assert BUILT_ON == [(torch.device("cpu"), "default", "bf16")]
    assert mod.mm is mm and mm.get_torch_device() == torch.device("meta")  # ComfyUI's device is its own again
    assert pipe["device"] == torch.device("cpu")
    assert face["det_path"] == "face_det.onnx"
    assert "built in host RAM" in msg and "transformer: sequential" in msg and "vae: full_load" in msg, msg
    assert "text_encoder: model_offload" in msg and "portrait_encoder: model_offload" in msg, msg
    frames, proj = T.sample_flash_portrait(pipe)
    assert torch.equal(frames, ref_frames) and torch.equal(proj, ref_proj)
    from comfy_nodes.pipeline_offload import managed_components, release_pipeline

    handles = managed_components(pipe)
    assert {"transformer", "vae", "text_encoder", "clip_image_encoder", "portrait_encoder"} <= set(handles)
    assert handles["transformer"].stats()["acquires"] > 0
    release_pipeline(pipe)


def test_a_device_the_loader_did_not_get_from_comfyui_is_caught(monkeypatch):
    """The redirect works only through ComfyUI's device: a loader that puts a component on
    another device anyway (here: the one it would have without the redirect) is refused,
    not silently streamed from there."""
    _stand_in_pack(monkeypatch, device_seen_by_loader=torch.device("meta"))
    _gpu_elsewhere(monkeypatch)
    with pytest.raises(ValueError, match="put .* on the GPU"):
        N.run_load_flashportrait("bf16", False, "", 0.0, 1, True)


def test_without_flashportrait_installed_it_says_what_to_do(monkeypatch):
    monkeypatch.delitem(ns.nodes.NODE_CLASS_MAPPINGS, FP.LOADER, raising=False)
    with pytest.raises(ValueError, match="needs ComfyUI-FlashPortrait installed"):
        N.run_load_flashportrait("bf16", False, "", 0.0, 1, True)
