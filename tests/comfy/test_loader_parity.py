"""The PinStream loaders offer and do what the core loaders they mirror do in the running
ComfyUI: Load CLIP's type list and its device input, Load VAE's built-in names (TAESD
from models/vae_approx, pixel_space). Compared with the core node, bit for bit."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checkpoints as ck
import test_nodes as T  # its helpers: files, names, ComfyUI

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm = T.ns, T.pl, T.mm
tiny_text_encoder_configs = T.tiny_text_encoder_configs  # a fixture of test_nodes, used here too


def _core(name):
    import nodes as core_nodes

    return getattr(core_nodes, name)


def test_clip_types_are_core_load_clips():
    core_types = list(_core("CLIPLoader").INPUT_TYPES()["required"]["type"][0])
    assert N._clip_types() == core_types
    assert "wan" in core_types
    with pytest.raises(ValueError, match="not offered by this ComfyUI's Load CLIP"):
        N.run_load_clip(T.name_of("text_encoders", T.f("umt5")), "no_such_type", "sequential", 0.0, 1, True)


def test_load_clip_on_the_cpu_equals_core_and_passes_through(tiny_text_encoder_configs):
    name = T.name_of("text_encoders", T.f("umt5"))
    core = _core("CLIPLoader")().load_clip(name, "wan", "cpu")[0]
    ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    (clip,), msg = N.run_load_clip(name, "wan", "sequential", 0.0, 1, True, device="cpu")
    assert "nothing to offload" in msg and not isinstance(clip.patcher, P.PinStreamPatcherMixin)
    assert clip.patcher.load_device == torch.device("cpu")
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], ref)
    with pytest.raises(ValueError, match="device must be one of default, cpu"):
        N.run_load_clip(name, "wan", "sequential", 0.0, 1, True, device="gpu7")
    mm.unload_all_models()


def _write_taesd_approx():
    """TAESD as core's Load VAE finds it: taesd_encoder.* and taesd_decoder.* in models/vae_approx."""
    sd = ck.taesd_state_dict(seed=21)
    folder = ck._dir(None, "vae_approx")
    for part in ("encoder", "decoder"):
        ck._save({k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(f"taesd_{part}.")},
                 folder / f"taesd_{part}.safetensors")
    T.harness.refresh_model_lists(ns)


def test_vae_names_are_core_load_vaes():
    _write_taesd_approx()
    core_names = list(_core("VAELoader").INPUT_TYPES()["required"]["vae_name"][0])
    assert N._vae_names() == core_names
    assert "taesd" in core_names and "pixel_space" in core_names


@pytest.mark.parametrize("mode", ["model_offload", "sequential"])
def test_taesd_from_vae_approx_equals_core(mode):
    _write_taesd_approx()
    lat = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = pl.vae_decode(ns, _core("VAELoader")().load_vae("taesd")[0], lat)
    mm.unload_all_models()
    (vae,), msg = N.run_load_vae("taesd", mode, 0.0, 1, True)
    assert isinstance(vae.patcher, P.PinStreamPatcherMixin), msg
    assert vae.first_stage_model is vae.patcher.model
    assert torch.equal(pl.vae_decode(ns, vae, lat), ref)
    mm.unload_all_models()


def test_pixel_space_vae_loads_as_core():
    (vae,), msg = N.run_load_vae("pixel_space", "sequential", 0.0, 1, True)
    assert msg.startswith("PinStream pixel_space"), msg
    img = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    core = _core("VAELoader")().load_vae("pixel_space")[0]
    assert torch.equal(vae.encode(img), core.encode(img))


def test_missing_vae_file_gives_cores_error():
    with pytest.raises(Exception, match="no_such_vae"):
        N.run_load_vae("no_such_vae.safetensors", "sequential", 0.0, 1, True)
