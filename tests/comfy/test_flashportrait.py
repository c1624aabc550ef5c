"""ComfyUI-FlashPortrait's own code under "PinStream Offload (Pipeline)", in-process against
real ComfyUI source, on the CPU (host engine), with a FlashPortrait checkout named by
FLASHPORTRAIT_PATH (FlashPortrait is not on PyPI, so these run where a checkout exists;
the mechanism is tested everywhere by test_pipeline_offload.py on diffusers stand-ins).

Its real classes (WanTransformer3DModel, AutoencoderKLWan, WanT5EncoderModel, CLIPModel,
PortraitEncoder, WanI2VLongPipeline) are built as its loader builds them, from tiny
configs where the class takes one (the transformer, the umt5 and the CLIP model are made
small; the VAE and the portrait encoder have fixed sizes), with random weights; the pipe
is put under its loader's GPU_memory_mode sequential_cpu_offload; its own "FlashPortrait
Sampler" node function samples. Its imports beyond this project's test requirements:
omegaconf, opencv (cv2) and imageio; onnx and onnxruntime (face detection, not used by the
sampler) are stubbed when missing.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import weakref

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

FP_PATH = os.environ.get("FLASHPORTRAIT_PATH")
pytestmark = pytest.mark.skipif(not FP_PATH, reason="FLASHPORTRAIT_PATH (a ComfyUI-FlashPortrait checkout) is not set")
for _req in ("diffusers", "accelerate", "omegaconf", "cv2", "imageio"):
    pytest.importorskip(_req, reason=f"{_req} (FlashPortrait's requirement) is not installed")

import harness  # noqa: E402

ns = harness.load_comfyui()


import numpy as np  # noqa: E402
import torch  # noqa: E402

import test_pipeline_offload as T  # noqa: E402
from comfy_nodes import nodes as N  # noqa: E402
from comfy_nodes import pipeline_offload as PO  # noqa: E402
from pinstream import _C, pin_cap  # noqa: E402

PACK = "pinstream_test_flashportrait"
FRAMES, STEPS = 9, 2


def _fp():
    """FlashPortrait's nodes module, imported as ComfyUI imports a custom node pack."""
    if PACK not in sys.modules:
        import diffusers  # noqa: F401 - first: it asks whether onnxruntime is installed

        for name in ("onnx", "onnxruntime"):
            if name not in sys.modules and importlib.util.find_spec(name) is None:
                stub = types.ModuleType(name)
                stub.InferenceSession = object
                stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
                sys.modules[name] = stub
        spec = importlib.util.spec_from_file_location(PACK, os.path.join(FP_PATH, "__init__.py"),
                                                      submodule_search_locations=[FP_PATH])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(PACK + ".nodes")


def _tiny_clip(pretrained=False, pretrained_name="open-clip-xlm-roberta-large-vit-huge-14", **kwargs):
    """clip_xlm_roberta_vit_h_14 with a small text tower and 2 vision layers; the vision
    width (1280) and the 257 image tokens stay, as the transformer's img_emb and
    cross-attention expect them."""
    W = sys.modules[PACK + ".wan.models.wan_image_encoder"]
    cfg = dict(embed_dim=32, image_size=224, patch_size=14, vision_dim=1280, vision_mlp_ratio=1, vision_heads=16,
               vision_layers=2, vision_pool="token", activation="gelu", vocab_size=64, max_text_len=16, type_size=1,
               pad_id=1, text_dim=32, text_heads=2, text_layers=1, text_post_norm=True, text_dropout=0.0,
               attn_dropout=0.0, proj_dropout=0.0, embedding_dropout=0.0)
    cfg.update(kwargs)
    return W._clip(pretrained, pretrained_name, W.XLMRobertaCLIP, **cfg)


def flash_portrait_pipe(seed=0, memory_mode="default"):
    """What "FlashPortrait Loader" returns, from tiny configs and random weights (on the CPU:
    its device), with its GPU_memory_mode applied as it applies it."""
    from omegaconf import OmegaConf

    fpn = _fp()
    M = sys.modules[PACK + ".wan.models"]
    W = sys.modules[PACK + ".wan.models.wan_image_encoder"]
    PE = sys.modules[PACK + ".wan.models.portrait_encoder"]
    P = sys.modules[PACK + ".wan.pipeline.pipeline_wan_long"]
    config = OmegaConf.load(os.path.join(FP_PATH, "config", "wan2.1", "wan_civitai.yaml"))
    device, dtype = torch.device("cpu"), torch.float32
    torch.manual_seed(seed)
    transformer = M.WanTransformer3DModel(model_type="i2v", patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=64,
                                          ffn_dim=128, freq_dim=256, text_dim=32, out_dim=16, num_heads=4, num_layers=4)
    vae = M.AutoencoderKLWan()
    text_encoder = M.WanT5EncoderModel(vocab=32, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2,
                                       num_buckets=8, shared_pos=False, dropout=0.0).eval()
    real_clip = W.clip_xlm_roberta_vit_h_14
    W.clip_xlm_roberta_vit_h_14 = _tiny_clip
    try:
        clip_image_encoder = M.CLIPModel().eval()
    finally:
        W.clip_xlm_roberta_vit_h_14 = real_clip
    portrait_encoder = PE.PortraitEncoder(adapter_in_dim=768, adapter_proj_dim=2048).eval()
    sc = fpn.FlowMatchEulerDiscreteScheduler
    scheduler = sc(**fpn.filter_kwargs(sc, OmegaConf.to_container(config["scheduler_kwargs"])))
    tokenizer = T._tokenizer()
    pipeline = P.WanI2VLongPipeline(transformer=transformer, vae=vae, tokenizer=tokenizer, text_encoder=text_encoder,
                                    scheduler=scheduler, clip_image_encoder=clip_image_encoder,
                                    portrait_encoder=portrait_encoder)
    if memory_mode == "sequential_cpu_offload":  # as its loader does
        fpn.replace_parameters_by_name(transformer, ["modulation"], device=device)
        transformer.freqs = transformer.freqs.to(device=device)
        pipeline.enable_sequential_cpu_offload(device=device)
    return {"pipeline": pipeline, "transformer": transformer, "vae": vae, "tokenizer": tokenizer,
            "text_encoder": text_encoder, "clip_image_encoder": clip_image_encoder,
            "portrait_encoder": portrait_encoder, "config": config, "device": device, "dtype": dtype}


class _CpuDeviceContext:
    """torch.cuda.device() for the CPU: FlashPortrait's pipeline enters
    torch.cuda.device(device=device) around each transformer call, which refuses a CPU
    device; on a GPU it is torch's own."""

    def __init__(self, device=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sample(pipe, steps_seen=None, monkeypatch=None, frames=FRAMES, context=(51, 30)):
    """FlashPortrait Sampler's own node function: head/emotion features of `frames` frames,
    a 32x32 reference image, its default prompt and guidance settings; `context`: its
    sliding windows' size and overlap, in frames."""
    fpn = _fp()
    torch.manual_seed(5)
    head_emo = torch.randn(1, frames, 554)  # headpose 6, eye 6, emotion 30, mouth 512
    image = torch.from_numpy(np.random.RandomState(0).rand(1, 32, 32, 3).astype("float32"))
    real_bar = fpn.ProgressBar

    class Bar(real_bar):
        def update(self, value):
            if steps_seen is not None:
                steps_seen.append(value)
            return super().update(value)

    real_device = torch.cuda.device
    torch.cuda.device, fpn.ProgressBar = _CpuDeviceContext, Bar
    try:
        return fpn.FlashPortraitSampler().sample(
            pipe, head_emo, image, T.PROMPT, T.NEGATIVE, seed=42, steps=STEPS, cfg_scale=1.0, guidance_scale=4.0,
            text_cfg_scale=1.0, emo_cfg_scale=4.0, max_size=32, shift=5.0, context_size=context[0],
            context_overlap=context[1])[0]
    finally:
        torch.cuda.device, fpn.ProgressBar = real_device, real_bar


@pytest.fixture(scope="module")
def reference():
    """FlashPortrait's default mode (everything where the loader put it: its device)."""
    return sample(flash_portrait_pipe())


def test_sequential_cpu_offload_pipe_under_pinstream_equals_default(reference, no_gc):
    pipe = flash_portrait_pipe(memory_mode="sequential_cpu_offload")
    budget = T._budget_gb(pipe["transformer"])
    base = _C.live_bytes()
    out, text = T.node(pipe, f"transformer=budget:{budget}")
    assert out is pipe and "accelerate's offload hooks removed" in text
    handles = PO.managed_components(pipe)
    assert {n: h.mode.name for n, h in handles.items()} == {
        "transformer": "budget", "vae": "model_offload", "text_encoder": "model_offload",
        "clip_image_encoder": "model_offload", "portrait_encoder": "model_offload"}
    steps, others_on_device = [], []
    others = [h for n, h in handles.items() if n != "transformer"]
    probe = pipe["transformer"].blocks[0].register_forward_pre_hook(
        lambda *_, others=others: others_on_device.append(sum(h.device_bytes for h in others)))
    assert torch.equal(sample(pipe, steps), reference)
    probe.remove()
    assert others_on_device and set(others_on_device) == {0}  # the transformer ran alone on the device
    assert steps == [1] * STEPS  # the sampler's ComfyUI progress bar moved once per step
    s = handles["transformer"].stats()
    assert s["streamed_bytes"] > 0 and 0 < s["peak_device_bytes"] <= budget * 1024**3
    for name in ("portrait_encoder", "vae", "text_encoder", "clip_image_encoder"):
        assert handles[name].stats()["bytes_uploaded"] >= handles[name].model_bytes, name
    assert "WanI2VLongPipeline.transformer: budget" in N.run_stats()[1]

    # an exception from inside the transformer's forward, then the next run
    calls = []

    def fail(_mod, _args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")

    hook = pipe["transformer"].blocks[2].ffn.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        sample(pipe)
    hook.remove()
    assert torch.equal(sample(pipe), reference)

    PO.unload_pipeline(pipe)
    assert all(h.device_bytes == 0 for h in handles.values())
    del handles, others, out
    gone = weakref.ref(pipe["transformer"])
    del pipe
    assert gone() is None  # by reference counting, the cycle collector off
    live = _C.live_bytes()
    assert live["host"] == base["host"] and live["pinned"] == base["pinned"] and live["device"] == base["device"]
    assert pin_cap.pinned_bytes_in_use() == 0


def test_default_mode_pipe_under_pinstream_sequential_equals_default(reference):
    pipe = flash_portrait_pipe()
    T.node(pipe, "transformer=sequential, vae=full_load")
    handles = PO.managed_components(pipe)
    assert handles["transformer"].mode.name == "sequential" and handles["vae"].mode.name == "full_load"
    assert torch.equal(sample(pipe), reference)
    PO.release_pipeline(pipe)


def test_qfloat8_mode_is_refused_with_what_to_do():
    """FlashPortrait's model_cpu_offload_and_qfloat8 wraps each layer's forward to convert its
    weights with .to() on every call; the node says so and what to use instead."""
    pipe = flash_portrait_pipe()
    fpn = _fp()
    fpn.convert_model_weight_to_float8(pipe["transformer"], exclude_module_name=["modulation"], device="cpu")
    fpn.convert_weight_dtype_wrapper(pipe["transformer"], torch.float32)
    with pytest.raises(ValueError, match="component transformer converts its own weights on every call .*"
                                         "model_cpu_offload_and_qfloat8.*sequential_cpu_offload"):
        T.node(pipe)
    assert not PO.managed_components(pipe)


def test_an_interrupt_inside_its_sliding_windows_then_the_next_run_equals_default():
    """17 frames in windows of 9 overlapping by 4: the transformer runs window after window;
    an exception in a later window's forward, then a full run equal to the default mode's."""
    windows = dict(frames=17, context=(9, 4))
    ref = sample(flash_portrait_pipe(), **windows)
    pipe = flash_portrait_pipe()
    T.node(pipe, "transformer=sequential")
    calls = []
    counter = pipe["transformer"].register_forward_pre_hook(lambda *_: calls.append(1))
    assert torch.equal(sample(pipe, **windows), ref)
    per_run = len(calls)
    assert per_run >= 2 * STEPS  # two windows (at least) per step
    counter.remove()
    calls.clear()

    def fail(_mod, _args):
        calls.append(1)
        if len(calls) == 2:  # the first step's second window
            raise RuntimeError("interrupted")

    hook = pipe["transformer"].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        sample(pipe, **windows)
    hook.remove()
    assert torch.equal(sample(pipe, **windows), ref)
    PO.release_pipeline(pipe)
