"""PinStream Offload (Pipeline) against the real diffusers and accelerate packages, on the
CPU (host engine), with ComfyUI's source loaded as the node runs in it.

The stand-ins have the structure of what users hand the node: a tiny diffusers
``WanImageToVideoPipeline`` (real diffusers/transformers classes from tiny configs,
random weights) offloaded by diffusers' ``enable_sequential_cpu_offload`` (weights on the
meta device, their values in accelerate's weights map) or ``enable_model_cpu_offload``;
a dict of the shape ComfyUI-FlashPortrait's loader returns (``FLASH_PORTRAIT_PIPE``: the
pipeline plus its transformer, VAE, tokenizer, text encoder, CLIP image encoder and
portrait encoder, with config, device and dtype); and a plain ``nn.Module``. Every output
is compared bit for bit with the unmanaged full-load run of the same weights.
"""

import gc
import os
import sys
import weakref

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import harness

ns = harness.load_comfyui()

import numpy as np
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

from comfy_nodes import nodes as N
from comfy_nodes import pipeline_offload as PO
from comfy_nodes.classic import NODE_CLASS_MAPPINGS
from pinstream import _C, pin_cap

NODE = "PinStreamOffloadPipeline"
PROMPT, NEGATIVE = "a portrait of a person singing", "blurry static"
STEPS = 2


# ---- the stand-ins ---------------------------------------------------------------------------

def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>"] + f"{PROMPT} {NEGATIVE}".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_wan_i2v(seed=0):
    """diffusers' Wan 2.1 image-to-video pipeline from tiny configs (random weights, eval)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, UMT5Config,
                              UMT5EncoderModel)

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                               relative_attention_num_buckets=8))
    # FlashPortrait's umt5 (WanT5EncoderModel) ties nothing; accelerate's sequential offload
    # on a CPU execution device mishandles transformers' tied input embedding, so untie it.
    text_encoder.encoder.embed_tokens.weight = nn.Parameter(text_encoder.shared.weight.detach().clone())
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=36, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=4, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32, image_dim=4)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2,
                                                                   num_attention_heads=2, image_size=32,
                                                                   intermediate_size=16, patch_size=1))
    for m in (vae, text_encoder, transformer, image_encoder):
        m.eval()
    return WanImageToVideoPipeline(tokenizer=_tokenizer(), text_encoder=text_encoder, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                                   image_processor=CLIPImageProcessor(crop_size=32, size=32),
                                   image_encoder=image_encoder, transformer=transformer)


class PortraitEncoder(nn.Module):
    """FlashPortrait's PortraitEncoder's shape: three projection models, used through
    get_adapter_proj (not forward)."""

    def __init__(self, dim=8, proj=16):
        super().__init__()
        self.proj_model = nn.Sequential(nn.Linear(dim, proj), nn.GELU(), nn.Linear(proj, proj))
        self.mouth_proj_model = nn.Sequential(nn.Linear(dim, proj), nn.LayerNorm(proj))
        self.emo_proj_model = nn.Sequential(nn.Linear(dim, proj), nn.LayerNorm(proj))

    def get_adapter_proj(self, feat):
        return self.proj_model(feat) + self.mouth_proj_model(feat) + self.emo_proj_model(feat)


def flash_portrait_pipe(seed=0):
    """A dict with the keys and module types FlashPortrait's loader returns."""
    pipeline = tiny_wan_i2v(seed)
    torch.manual_seed(seed + 1)
    return {"pipeline": pipeline, "transformer": pipeline.transformer, "vae": pipeline.vae,
            "tokenizer": pipeline.tokenizer, "text_encoder": pipeline.text_encoder,
            "clip_image_encoder": pipeline.image_encoder, "portrait_encoder": PortraitEncoder().eval(),
            "config": {"vae_kwargs": {"temporal_compression_ratio": 4}}, "device": torch.device("cpu"),
            "dtype": torch.float32}


def _image():
    from PIL import Image

    return Image.fromarray((np.random.RandomState(0).rand(16, 16, 3) * 255).astype("uint8"))


def run_pipeline(pipeline, callback=None):
    """The pipeline's own sampling code: 2 steps, classifier-free guidance, fixed seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, height=16, width=16, num_frames=9,
                    num_inference_steps=STEPS, guidance_scale=5.0, max_sequence_length=16,
                    generator=torch.Generator("cpu").manual_seed(1), output_type="pt",
                    callback_on_step_end=callback).frames


def sample_flash_portrait(pipe, steps_seen=None):
    """What FlashPortrait's sampler does with the pipe: the portrait encoder's projection of
    the head/emotion features, then the pipeline with a progress callback."""
    feat = torch.linspace(-1, 1, 3 * 8).reshape(1, 3, 8)
    proj = pipe["portrait_encoder"].get_adapter_proj(feat.to(pipe["device"], pipe["dtype"]))

    def callback(_pipe, step, _t, kwargs):
        if steps_seen is not None:
            steps_seen.append(step)
        return kwargs

    return run_pipeline(pipe["pipeline"], callback), proj


class Net(nn.Module):
    def __init__(self, n=6, dim=64):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
                                    for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


def node(pipeline, modes="", vram_budget_gb=0.0, prefetch_blocks=1, pin_memory=True, transfer_dtype="auto",
         ram_budget_gb=None):
    """The node as ComfyUI runs it (classic class; the V3 one runs the same function); the
    optional ram_budget_gb is left out, as in a prompt saved before it existed, unless given."""
    extra = {} if ram_budget_gb is None else {"ram_budget_gb": ram_budget_gb}
    out = NODE_CLASS_MAPPINGS[NODE]().run(pipeline=pipeline, modes=modes, vram_budget_gb=vram_budget_gb,
                                          prefetch_blocks=prefetch_blocks, pin_memory=pin_memory,
                                          transfer_dtype=transfer_dtype, **extra)
    return out["result"][0], out["ui"]["text"][0]


def _bytes(m):
    return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))


def _budget_gb(module, resident_fraction=0.5):
    """A budget (GiB) that keeps about half of the blocks resident and streams the rest."""
    from pinstream.discovery import discover_blocks

    d = discover_blocks(module, min_fraction=0.2)
    ring = 2 * d.largest_block_bytes
    return (d.nonblock_bytes + ring + int(resident_fraction * (sum(d.block_bytes) - ring)) + 4096) / 1024**3


@pytest.fixture(scope="module")
def reference():
    """The unmanaged full-load run (frames, portrait projection) of the seed-0 weights."""
    pipe = flash_portrait_pipe()
    return sample_flash_portrait(pipe)


@pytest.fixture(autouse=True)
def _collect_after():
    """What a test leaves in diffusers' own reference cycles (see the drop test) goes before
    the next test, so no managed component of one test is seen by another's memory checks."""
    yield
    gc.collect()


# ---- the tests -----------------------------------------------------------------------------------

def test_accelerate_sequential_offload_removed_and_output_equals_full_load(reference):
    pipe = tiny_wan_i2v()
    budget = _budget_gb(pipe.transformer)
    pipe.enable_sequential_cpu_offload(device="cpu")
    assert pipe.transformer.patch_embedding.weight.device.type == "meta"  # values in accelerate's weights map
    out, text = node(pipe, f"transformer=budget:{budget}")
    assert out is pipe
    assert "accelerate's offload hooks removed" in text
    assert not any(hasattr(m, "_hf_hook") for c in PO.find_components(pipe).components.values() for m in c.modules())
    assert not getattr(pipe, "_all_hooks", None)
    handles = PO.managed_components(pipe)
    assert {n: h.mode.name for n, h in handles.items()} == {
        "transformer": "budget", "text_encoder": "model_offload", "image_encoder": "model_offload",
        "vae": "model_offload"}
    # while the transformer runs, it is the only component on the device
    others_on_device = []
    probe = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *_: others_on_device.append(
        sum(h.device_bytes for n, h in handles.items() if n != "transformer")))
    assert torch.equal(run_pipeline(pipe), reference[0])
    probe.remove()
    assert others_on_device and set(others_on_device) == {0}
    # each component's memory as its mode says: the transformer held its budget's resident
    # part and streamed the rest; the components took turns, the VAE ran last
    st = {n: h.stats() for n, h in handles.items()}
    tr = st["transformer"]
    assert tr["streamed_bytes"] > 0 and tr["resident_bytes"] > 0
    assert 0 < tr["peak_device_bytes"] <= budget * 1024**3
    assert tr["device_bytes"] == 0 and st["text_encoder"]["device_bytes"] == 0
    assert st["image_encoder"]["device_bytes"] == 0
    assert st["vae"]["device_bytes"] >= _bytes(pipe.vae)
    for n, h in handles.items():
        assert st[n]["pinned_bytes"] >= h.model_bytes, n
    # the pipeline's own moves are harmless; a dtype change is refused with what to do
    assert pipe.to("cpu") is pipe and pipe.transformer.to("cuda:0") is pipe.transformer
    assert pipe.transformer.cuda() is pipe.transformer
    assert pipe.device == torch.device("cpu") and pipe._execution_device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="PinStream keeps the dtype"):
        pipe.vae.to(torch.float16)
    assert torch.equal(run_pipeline(pipe), reference[0])
    PO.release_pipeline(pipe)
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel" and not PO.managed_components(pipe)
    assert torch.equal(run_pipeline(pipe), reference[0])


def test_a_skipped_component_keeps_accelerates_sequential_offload():
    """(Not run here: accelerate's sequential offload with the CPU as its execution device
    fails inside accelerate on these transformers models, with or without PinStream.)"""
    pipe = tiny_wan_i2v()
    pipe.enable_sequential_cpu_offload(device="cpu")
    _, text = node(pipe, "image_encoder=skip")
    assert "image_encoder: skip (not managed; its weights are on meta)" in text
    assert hasattr(pipe.image_encoder, "_hf_hook") and "image_encoder" not in PO.managed_components(pipe)
    assert not hasattr(pipe.transformer, "_hf_hook") and "transformer" in PO.managed_components(pipe)
    PO.release_pipeline(pipe)


def test_accelerate_model_cpu_offload_removed_and_output_equals_full_load(reference):
    pipe = tiny_wan_i2v()
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe._all_hooks
    assert torch.equal(run_pipeline(pipe), reference[0])  # accelerate's own run, for the record
    out, text = node(pipe, "transformer=sequential, vae=full_load, image_encoder=skip")
    assert "accelerate's offload hooks removed from vae, text_encoder, transformer" in text and not pipe._all_hooks
    assert hasattr(pipe.image_encoder, "_hf_hook")  # skip: left as it is, accelerate's hook included
    handles = PO.managed_components(pipe)
    assert {n: h.mode.name for n, h in handles.items()} == {"transformer": "sequential",
                                                           "text_encoder": "model_offload", "vae": "full_load"}
    assert torch.equal(run_pipeline(pipe), reference[0])
    s = handles["transformer"].stats()
    assert s["resident_bytes"] < handles["transformer"].model_bytes and s["streamed_bytes"] > 0
    assert handles["vae"].stats()["device_bytes"] >= _bytes(pipe.vae)
    PO.release_pipeline(pipe)


def test_flash_portrait_pipe_modes_interrupt_unload_and_drop(reference, no_gc):
    pipe = flash_portrait_pipe()
    budget = _budget_gb(pipe["transformer"])
    pipe["pipeline"].enable_sequential_cpu_offload(device="cpu")  # FlashPortrait's sequential_cpu_offload
    base = _C.live_bytes()
    out, text = node(pipe, f"transformer=budget:{budget}\nvae=model_offload", prefetch_blocks=1)
    assert out is pipe
    handles = PO.managed_components(pipe)
    # named as the dict names them; the pipeline's image_encoder is the dict's clip_image_encoder
    assert {n: h.mode.name for n, h in handles.items()} == {
        "transformer": "budget", "vae": "model_offload", "text_encoder": "model_offload",
        "clip_image_encoder": "model_offload", "portrait_encoder": "model_offload"}
    for name in handles:
        assert f"PinStream WanImageToVideoPipeline.{name}: " in text
    steps = []
    frames, proj = sample_flash_portrait(pipe, steps)
    assert steps == list(range(STEPS))  # the sampler's progress callback still runs each step
    assert torch.equal(frames, reference[0]) and torch.equal(proj, reference[1])
    # each model-offloaded component was uploaded for its use, also where the pipeline
    # calls a method other than forward (portrait_encoder.get_adapter_proj, vae.encode/decode)
    for name in ("portrait_encoder", "vae", "text_encoder", "clip_image_encoder"):
        assert handles[name].stats()["bytes_uploaded"] >= handles[name].model_bytes, name
    assert handles["portrait_encoder"].device_bytes == 0  # it made room for the next encoder
    assert handles["vae"].device_bytes >= handles["vae"].model_bytes  # the last one used

    # the Stats node lists each component with its mode
    stats = N.run_stats()[1]
    for name, mode in (("transformer", "budget"), ("portrait_encoder", "model_offload")):
        assert f"WanImageToVideoPipeline.{name}: {mode}" in stats, stats

    # an exception from inside the transformer's forward, in the middle of the steps
    calls = []

    def fail(_mod, _args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")

    hook = pipe["transformer"].blocks[1].ffn.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        sample_flash_portrait(pipe)
    hook.remove()
    frames, proj = sample_flash_portrait(pipe)
    assert torch.equal(frames, reference[0]) and torch.equal(proj, reference[1])

    # unload: nothing on the device, the pinned copies stay; drop: everything back
    PO.unload_pipeline(pipe)
    assert all(h.device_bytes == 0 for h in handles.values())
    assert _C.live_bytes()["device"] == base["device"]
    assert pin_cap.pinned_bytes_in_use() > 0
    del handles, out
    gone = weakref.ref(pipe["transformer"])
    pipeline = weakref.ref(pipe["pipeline"])
    others = {n: weakref.ref(pipe[n]) for n in ("vae", "text_encoder", "clip_image_encoder", "portrait_encoder")}
    del pipe
    # by reference counting (accelerate's hook removal leaves each module's forward bound to
    # it as an instance attribute, a cycle: the node takes those out)
    assert pipeline() is None and not [n for n, r in others.items() if r() is not None]
    if gone() is not None:
        # diffusers' own cycle: maybe_free_model_hooks, at the end of every run of its
        # pipelines, gives its CacheMixin models (its Wan transformer; not FlashPortrait's) a
        # HookRegistry that refers back to the module. Unmanaged models have it too; it goes
        # at the next collection.
        assert "_diffusers_hook" in vars(gone())
        gc.collect()
    assert gone() is None
    live = _C.live_bytes()
    assert live["host"] == base["host"] and live["pinned"] == base["pinned"] and live["device"] == base["device"]
    assert live["runtimes"] == base["runtimes"]
    assert pin_cap.pinned_bytes_in_use() == 0


@pytest.mark.parametrize("modes,want,transfer", [
    ("", "sequential", "auto"), ("model=budget:{b}", "budget", "auto"), ("model=model_offload", "model_offload", "auto"),
    ("model=auto", None, "auto"), ("model=sequential_cpu_offload", "sequential", "auto"),
    ("model=budget:{b}", "budget", "compressed")])
def test_plain_module_equals_full_load(modes, want, transfer, no_gc):
    torch.manual_seed(3)
    x = torch.randn(4, 64)
    m = Net()
    if transfer == "compressed":
        m = m.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    ref = m(x)
    base = _C.live_bytes()
    out, text = node(m, modes.format(b=_budget_gb(m)), transfer_dtype=transfer)
    assert out is m and "PinStream Net.model: " in text
    h = PO.managed_components(m)["model"]
    assert h.mode.transfer_dtype == transfer
    if want is not None:
        assert h.mode.name == want
    assert torch.equal(m(x), ref) and torch.equal(m(x), ref)
    assert isinstance(m, Net) and type(m).__name__ == "Net"
    PO.unload_pipeline(m)
    assert h.device_bytes == 0
    del h
    gone = weakref.ref(m)
    del m, out
    assert gone() is None
    assert _C.live_bytes() == base and pin_cap.pinned_bytes_in_use() == 0


def test_accelerate_cpu_offload_of_a_plain_module(no_gc):
    """accelerate's cpu_offload by itself: weights on the meta device, their values in the
    hooks' weights map; the node takes them back from there."""
    from accelerate import cpu_offload

    torch.manual_seed(4)
    x = torch.randn(4, 64)
    m = Net()
    ref = m(x)
    cpu_offload(m, execution_device="cpu")
    assert m.inp.weight.device.type == "meta"
    assert torch.equal(m(x), ref)
    base = _C.live_bytes()
    out, text = node(m, "model=sequential")
    assert "accelerate's offload hooks removed from model" in text
    assert not any(hasattr(s, "_hf_hook") or "forward" in vars(s) for s in m.modules())
    assert PO.managed_components(m)["model"].mode.name == "sequential"
    assert torch.equal(m(x), ref)
    gone = weakref.ref(m)
    del m, out
    assert gone() is None and _C.live_bytes() == base


def test_a_weight_missing_from_accelerates_weights_map_is_a_clear_error():
    from accelerate import cpu_offload

    m = Net()
    cpu_offload(m, execution_device="cpu")
    del m.inp._hf_hook.weights_map.dataset["inp.weight"]
    with pytest.raises(ValueError, match="component model: accelerate could not put its weights back when its "
                                         "offload hooks were removed .*weight is on the meta device.*Load the pipeline again"):
        node(m)
    assert not PO.managed_components(m)


def test_a_new_mode_for_a_managed_component_replaces_its_handle(reference):
    pipe = flash_portrait_pipe()
    node(pipe, "transformer=sequential")
    first = PO.managed_components(pipe)
    _, text = node(pipe, "transformer=model_offload")  # ComfyUI runs the node again on the cached pipe
    again = PO.managed_components(pipe)
    assert again["transformer"] is not first["transformer"] and again["transformer"].mode.name == "model_offload"
    assert again["vae"] is first["vae"] and "(unchanged)" in text
    assert first["transformer"].detached
    frames, proj = sample_flash_portrait(pipe)
    assert torch.equal(frames, reference[0]) and torch.equal(proj, reference[1])
    _, text = node(pipe, "transformer=skip")  # skip: PinStream lets go of it
    assert "transformer: skip (not managed; PinStream released it; its weights are on cpu)" in text
    assert "transformer" not in PO.managed_components(pipe)
    assert not isinstance(pipe["transformer"], PO.ManagedComponent)
    frames, proj = sample_flash_portrait(pipe)
    assert torch.equal(frames, reference[0]) and torch.equal(proj, reference[1])
    PO.release_pipeline(pipe)


def test_roles_and_turns_on_the_device():
    lin = nn.Linear(2, 2)
    roles = {n: PO.role_of(n, lin) for n in ("transformer", "transformer_2", "unet", "controlnet", "model",
                                             "text_encoder_2", "clip_image_encoder", "portrait_encoder", "vae",
                                             "conditioner", "pipeline.transformer")}
    assert roles == {"transformer": "denoiser", "transformer_2": "denoiser", "unet": "denoiser",
                     "controlnet": "denoiser", "model": "denoiser", "text_encoder_2": "encoder",
                     "clip_image_encoder": "encoder", "portrait_encoder": "encoder", "vae": "vae",
                     "conditioner": "other", "pipeline.transformer": "denoiser"}
    # two streamed components used at every step keep each other on the device; the VAE
    # (run whole) makes them both leave, and they make it leave
    torch.manual_seed(6)
    pipe = {"transformer": Net(), "controlnet": Net(), "vae": Net()}
    x = torch.randn(2, 64)
    refs = {n: m(x) for n, m in pipe.items()}
    node(pipe)
    h = PO.managed_components(pipe)
    assert {n: x.mode.name for n, x in h.items()} == {"transformer": "sequential", "controlnet": "sequential",
                                                     "vae": "model_offload"}
    seen = []
    probe = pipe["transformer"].register_forward_pre_hook(
        lambda *_: seen.append((h["controlnet"].loaded, h["vae"].device_bytes)))
    assert torch.equal(pipe["vae"](x), refs["vae"])
    for _ in range(3):
        assert torch.equal(pipe["controlnet"](x), refs["controlnet"])
        assert torch.equal(pipe["transformer"](x), refs["transformer"])
    probe.remove()
    assert seen == [(True, 0)] * 3
    assert torch.equal(pipe["vae"](x), refs["vae"])
    assert h["transformer"].device_bytes == 0 and h["controlnet"].device_bytes == 0 and h["vae"].loaded


def test_fp8_transfer_applies_to_the_streamed_denoiser_only():
    pipe = flash_portrait_pipe()
    _, text = node(pipe, "vae=model_cpu_offload", transfer_dtype="fp8_e4m3")
    got = {n: (h.mode.name, h.mode.transfer_dtype) for n, h in PO.managed_components(pipe).items()}
    assert got == {"transformer": ("sequential", "fp8_e4m3"), "vae": ("model_offload", "auto"),
                   "text_encoder": ("model_offload", "auto"), "clip_image_encoder": ("model_offload", "auto"),
                   "portrait_encoder": ("model_offload", "auto")}, got
    frames, _proj = sample_flash_portrait(pipe)
    assert frames.shape == (1, 9, 3, 16, 16) and torch.isfinite(frames).all()
    PO.release_pipeline(pipe)


def test_clear_errors_for_bad_modes_and_pipelines():
    pipe = flash_portrait_pipe()
    comps = "transformer, vae, text_encoder, clip_image_encoder, portrait_encoder"
    with pytest.raises(ValueError, match=f"component 'unet' is not in this pipeline; its components: {comps}"):
        node(pipe, "unet=budget:2")
    with pytest.raises(ValueError, match="mode 'fastest' for transformer is not one of auto, full_load, "
                                         "model_offload, sequential, budget, skip"):
        node(pipe, "transformer=fastest")
    with pytest.raises(ValueError, match="has no '='"):
        node(pipe, "transformer budget")
    with pytest.raises(ValueError, match="budget needs the VRAM this component may use"):
        node(pipe, "transformer=budget")
    with pytest.raises(ValueError, match="only budget and auto take GiB"):
        node(pipe, "vae=model_offload:4")
    with pytest.raises(ValueError, match="must be a number > 0"):
        node(pipe, "transformer=budget:lots")
    with pytest.raises(ValueError, match="given a mode twice"):
        node(pipe, "vae=skip, vae=full_load")
    with pytest.raises(ValueError, match="found no torch modules in a str"):
        node("not a pipeline")
    with pytest.raises(ValueError, match="share weights"):
        node({"outer": pipe["transformer"], "inner": pipe["transformer"].blocks[0]})
    assert not PO.managed_components(pipe)  # nothing was managed by a refused call
    with torch.device("meta"):
        ghost = Net()
    with pytest.raises(ValueError, match="weight inp.weight of component model is on the meta device"):
        node(ghost)


def test_without_the_native_build_the_pipeline_passes_through_and_says_so(monkeypatch):
    from pinstream import native

    monkeypatch.setattr(native, "native_available", lambda: False)
    m = Net()
    out, text = node(m, "model=sequential")
    assert out is m and "passed through unchanged" in text and "install.py" in text
    assert not PO.managed_components(m)


def test_registered_for_classic_and_v3():
    import comfy_nodes

    cls = NODE_CLASS_MAPPINGS[NODE]
    req = cls.INPUT_TYPES()["required"]
    assert list(req) == ["pipeline", "modes", "vram_budget_gb", "prefetch_blocks", "pin_memory", "transfer_dtype"]
    assert list(cls.INPUT_TYPES()["optional"]) == ["ram_budget_gb"]
    assert req["pipeline"][0] == "*" and not (req["pipeline"][0] != "FLASH_PORTRAIT_PIPE")  # takes any type
    assert cls.RETURN_TYPES[0] == "*" and not (cls.RETURN_TYPES[0] != "FLASH_PORTRAIT_PIPE")
    if comfy_nodes.has_v3_api():
        from comfy_nodes import v3

        schema = next(n for n in v3.NODES if n.define_schema().node_id == NODE).define_schema()
        assert [i.id for i in schema.inputs] == list(req) + ["ram_budget_gb"]


# ---- in ComfyUI's executor -------------------------------------------------------------------------

class TinyFlashPortraitLoader:
    """FlashPortrait Loader's outputs for the stand-in: a FLASH_PORTRAIT_PIPE under diffusers'
    sequential CPU offload (its GPU_memory_mode sequential_cpu_offload)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("FLASH_PORTRAIT_PIPE",)
    FUNCTION = "load"
    CATEGORY = "tests"

    def load(self, seed):
        pipe = flash_portrait_pipe(seed)
        pipe["pipeline"].enable_sequential_cpu_offload(device="cpu")
        LOADED.append(weakref.ref(pipe["transformer"]))
        return (pipe,)


LOADED = []  # weak references to the transformers the loader made
SAMPLED = []


class TinyFlashPortraitSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pipe": ("FLASH_PORTRAIT_PIPE",), "tag": ("INT", {"default": 0})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "sample"
    CATEGORY = "tests"

    def sample(self, pipe, tag):
        SAMPLED.append(sample_flash_portrait(pipe))
        return {}


def test_in_comfyui_executor_between_a_pipe_loader_and_its_sampler(reference, monkeypatch):
    """The node takes the custom type from the loader and hands it on to the sampler: the
    prompt validates (its input and output are of any type), the frames equal the
    full-load run, a changed mode string runs the node again on the cached pipe."""
    import test_prompt_execution as PE

    import comfy_nodes

    ours = NODE_CLASS_MAPPINGS  # the classes the pack exports on this ComfyUI: V3 or classic
    if comfy_nodes.use_v3():
        from comfy_nodes import v3

        ours = {n.GET_SCHEMA().node_id: n for n in v3.NODES}
    for name, cls in ((NODE, ours[NODE]), ("PinStreamStats", ours["PinStreamStats"]),
                      ("TinyFlashPortraitLoader", TinyFlashPortraitLoader),
                      ("TinyFlashPortraitSampler", TinyFlashPortraitSampler)):
        monkeypatch.setitem(ns.nodes.NODE_CLASS_MAPPINGS, name, cls)
    SAMPLED.clear()
    executor, server = PE.new_executor()

    def prompt(modes, tag):
        return {"1": {"class_type": "TinyFlashPortraitLoader", "inputs": {"seed": 0}},
                "2": {"class_type": NODE, "inputs": {"pipeline": ["1", 0], "modes": modes, "vram_budget_gb": 0.0,
                                                     "prefetch_blocks": 1, "pin_memory": True,
                                                     "transfer_dtype": "auto"}},
                "7": {"class_type": "TinyFlashPortraitSampler", "inputs": {"pipe": ["2", 0], "tag": tag}},
                "8": {"class_type": "PinStreamStats", "inputs": {"anything": ["2", 0]}}}

    PE.run_prompt(executor, server, prompt("transformer=sequential", 0))
    PE.assert_succeeded(executor, server)
    assert "WanImageToVideoPipeline.transformer: sequential" in PE.stats_text(executor)
    PE.run_prompt(executor, server, prompt("transformer=sequential, vae=full_load", 1))
    PE.assert_succeeded(executor, server)
    assert "1" not in server.executed_nodes() and "2" in server.executed_nodes()
    assert len(SAMPLED) == 2
    for frames, proj in SAMPLED:
        assert torch.equal(frames, reference[0]) and torch.equal(proj, reference[1])
    ok, _error, _outputs, node_errors = PE.validate(prompt("unet=budget:2", 2))
    assert ok  # the mode string is checked when the node runs, against the pipe's components

    # "Cancel" pressed while the transformer's third block runs (ComfyUI's check of the flag
    # raises right there), then the same prompt again: the frames are still the full-load ones
    calls = []

    def cancel(_mod, _args):
        calls.append(1)
        if len(calls) == 3:
            ns.nodes.interrupt_processing(True)
            ns.model_management.throw_exception_if_processing_interrupted()

    transformer = LOADED[-1]()  # the transformer of the loader's cached output
    hook = transformer.blocks[1].ffn.register_forward_pre_hook(cancel)
    try:
        PE.run_prompt(executor, server, prompt("transformer=sequential, vae=full_load", 3))
    finally:
        hook.remove()
    assert len(calls) >= 3 and not executor.success
    assert [e["node_id"] for e in server.of("execution_interrupted")] == ["7"], server.events
    PE.run_prompt(executor, server, prompt("transformer=sequential, vae=full_load", 3))
    PE.assert_succeeded(executor, server)
    assert len(SAMPLED) == 3 and torch.equal(SAMPLED[-1][0], reference[0])
    del transformer
    SAMPLED.clear()


# ---- on a CUDA device (the GPU check runs these; they skip elsewhere) -------------------------------

def _cuda_ready():
    try:
        return torch.cuda.is_available() and _C.cuda_built()
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _cuda_ready(), reason="needs a CUDA device and the CUDA engine")
@pytest.mark.parametrize("loaded", ["default", "sequential_cpu_offload"])
def test_on_cuda_the_pipeline_runs_where_pinstream_places_it(loaded):
    """The pipeline's own device logic on a GPU: its components start on the GPU (FlashPortrait's
    default) or under diffusers' sequential CPU offload; the node frees the GPU copies,
    .to("cuda") moves nothing, the execution device is the GPU, the frames equal the
    unmanaged run on the GPU bit for bit, and the transformer runs alone on the device within
    its budget."""
    dev = torch.device("cuda", torch.cuda.current_device())
    ref_pipe = tiny_wan_i2v().to(dev)
    ref = run_pipeline(ref_pipe)
    del ref_pipe
    torch.cuda.empty_cache()
    pipe = tiny_wan_i2v()
    total = sum(_bytes(m) for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.image_encoder))
    budget = _budget_gb(pipe.transformer)
    if loaded == "default":
        pipe.to(dev)
    else:
        pipe.enable_sequential_cpu_offload(device=dev)
    before = torch.cuda.memory_allocated(dev)
    PO.offload_pipeline(pipe, f"transformer=budget:{budget}", device=dev, engine="cuda")
    if loaded == "default":
        assert torch.cuda.memory_allocated(dev) <= before - 0.9 * total  # the GPU copies are gone
    handles = PO.managed_components(pipe)
    assert set(handles) == {"transformer", "vae", "text_encoder", "image_encoder"}
    held = torch.cuda.memory_allocated(dev)
    assert pipe.to(dev) is pipe and pipe.transformer.cuda() is pipe.transformer
    assert torch.cuda.memory_allocated(dev) == held  # nothing moved
    assert pipe._execution_device == dev and pipe.device == dev
    others_on_device = []
    probe = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *_: others_on_device.append(
        sum(h.device_bytes for n, h in handles.items() if n != "transformer")))
    out = run_pipeline(pipe)
    probe.remove()
    assert out.device == ref.device
    assert torch.equal(out, ref), f"max |difference| {(out.float() - ref.float()).abs().max().item():.3g}"
    assert others_on_device and set(others_on_device) == {0}
    assert handles["transformer"].stats()["peak_device_bytes"] <= budget * 1024**3
    PO.release_pipeline(pipe)
