"""PinStream beside ComfyUI's real Dynamic VRAM, on a CUDA machine.

Runs only when the harness started ComfyUI as main.py does with Dynamic VRAM on
(``PINSTREAM_COMFY_DYNAMIC_VRAM=1``: comfy-aimdo initialised, ``CoreModelPatcher`` is
``ModelPatcherDynamic``), i.e. on the GPU machine (``bench/gpu_check.sh --dynamic-vram``).
On the CPU the same logic runs against a stand-in in test_dynamic_vram.py.

References are the core loaders' models, which are dynamic here. The PinStream copies run
the same kernels from the same weights, so they are compared exactly where the sampler is
deterministic; the tolerance below only absorbs cuBLAS choosing another algorithm, and the
largest difference is printed.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # its helpers: files, names, ComfyUI

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm = T.ns, T.pl, T.mm

pytestmark = pytest.mark.skipif(not ns.features.get("dynamic_vram_active"),
                                reason="needs ComfyUI with Dynamic VRAM running on CUDA (PINSTREAM_COMFY_DYNAMIC_VRAM=1)")


def _close(a, b, what):
    a, b = a.float().cpu(), b.float().cpu()
    diff = (a - b).abs().max().item()
    print(f"{what}: max |difference| {diff:.3g}")
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), f"{what}: max |difference| {diff}"


@pytest.fixture(autouse=True)
def _unload_after():
    yield
    mm.unload_all_models()


@pytest.fixture(scope="module")
def dynamic_ref():
    core = pl.load_unet(ns, T.f("wan21_t2v"))
    assert isinstance(core, ns.model_patcher.ModelPatcherDynamic) and core.is_dynamic()
    return core, T._sample("wan21_t2v", core)


@pytest.mark.parametrize("mode", ["model_offload", "sequential"])
def test_pinstream_loader_beside_dynamic_models(mode, dynamic_ref):
    core, ref = dynamic_ref
    (model,), msg = T._ps_unet("wan21_t2v", mode)
    assert isinstance(model, P.PinStreamPatcherMixin) and not model.is_dynamic(), msg
    copies = T._count_copies_in_unload([model.pinstream.handle])
    _close(T._sample("wan21_t2v", model), ref, f"PinStream {mode} vs dynamic core")
    # the two alternate: the dynamic model again, then PinStream again
    _close(T._sample("wan21_t2v", core), ref, "dynamic core after PinStream")
    _close(T._sample("wan21_t2v", model), ref, f"PinStream {mode} after the dynamic core")
    mm.unload_all_models()
    assert copies and sum(copies) == 0, copies  # no unload copied a weight back to the host


def test_offload_node_on_a_dynamic_model(dynamic_ref):
    _core, ref = dynamic_ref
    base = pl.load_unet(ns, T.f("wan21_t2v"))
    assert base.is_dynamic()
    (model,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True)
    assert isinstance(model, P.PinStreamPatcherMixin) and not model.is_dynamic(), msg
    _close(T._sample("wan21_t2v", model), ref, "Offload node on a dynamic model vs dynamic core")


@pytest.mark.parametrize("kind", ["taesd", "wan_vae"])
def test_vae_loader_under_dynamic_vram(kind):
    core, lat = T.core_vae_and_latent(kind)
    assert core.patcher.is_dynamic()
    ref = pl.vae_decode(ns, core, lat)
    (vae,), msg = N.run_load_vae(T.name_of("vae", T.f(kind)), "model_offload", 0.0, 1, True)
    assert isinstance(vae.patcher, P.PinStreamPatcherMixin) and not vae.patcher.is_dynamic(), msg
    _close(pl.vae_decode(ns, vae, lat), ref, f"PinStream VAE {kind} vs dynamic core")


def test_unload_releases_pinstream_device_memory(dynamic_ref):
    _core, ref = dynamic_ref
    mm.unload_all_models()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    (model,), msg = T._ps_unet("wan21_t2v", "model_offload")
    _close(T._sample("wan21_t2v", model), ref, "PinStream model_offload")
    assert mm.loaded_models(), "ComfyUI lists no loaded model after sampling"
    mm.unload_all_models()
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    print(f"device bytes before load {before}, after unload {after}")
    assert after <= before + (1 << 20), (before, after)
