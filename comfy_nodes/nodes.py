"""PinStream nodes: loaders with an offload mode, offload nodes for any model, stats.

Each node is defined once here (inputs, tooltips, the function that runs it);
``v3.py`` and ``classic.py`` present the same nodes through ComfyUI's V3 API or the
classic mappings. The pack exports exactly one of the two.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .patcher import (OffloadConfig, UnsupportedModel, collect_stats, comfy_pinned_bytes, disk_note, make_pinstream,
                      managed_states)

log = logging.getLogger("PinStream")

CATEGORY = "PinStream"
MODES = ["auto", "full_load", "model_offload", "sequential", "budget"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
# Load CLIP's `type` list when the running ComfyUI's own CLIPLoader cannot be asked.
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
              "ovis"]
CLIP_DEVICES = ["default", "cpu"]
TRANSFER_DTYPES = ["auto", "compressed", "fp8_e4m3"]


@dataclass
class InputSpec:
    name: str
    kind: str  # combo, float, int, bool, string, model, clip, wanvideo_model, any
    tooltip: str
    default: object = None
    options: Callable[[], list] | None = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    optional: bool = False


@dataclass
class NodeSpec:
    node_id: str
    display_name: str
    description: str
    inputs: list
    outputs: list  # (type, name)
    run: Callable
    output_node: bool = False
    extra: dict = field(default_factory=dict)


def _files(folder):
    def get():
        import folder_paths

        return folder_paths.get_filename_list(folder)

    return get


def _core_node(name: str):
    """The running ComfyUI's own node class ``name`` (from its nodes.py), or None."""
    try:
        import nodes as core_nodes  # ComfyUI's nodes.py

        return getattr(core_nodes, name)
    except Exception:  # noqa: BLE001 - outside ComfyUI, or a release without it
        return None


def _core_options(loader: str, section: str, name: str):
    """The options of input ``name`` of the running ComfyUI's own loader node (so the
    PinStream loader offers what core offers in this release), or None."""
    cls = _core_node(loader)
    try:
        return list(cls.INPUT_TYPES()[section][name][0]) if cls is not None else None
    except Exception:  # noqa: BLE001 - a release that names it otherwise
        return None


def _clip_types():
    return _core_options("CLIPLoader", "required", "type") or CLIP_TYPES


def _vae_names():
    """Core Load VAE's list: the files in models/vae plus the names it builds itself
    (taesd, taesdxl, taesd3, taef1 from models/vae_approx; video TAEs; pixel_space)."""
    names = _core_options("VAELoader", "required", "vae_name")
    if names is None:
        import folder_paths

        names = folder_paths.get_filename_list("vae")
    return names


OFFLOAD_INPUTS = [
    InputSpec("mode", "combo", "How this model's weights live between RAM and VRAM. auto: decide from free VRAM "
              "(GPU_MEMORY_MODE sets the default); full_load: all on the GPU; model_offload: whole model in pinned "
              "RAM, uploaded while used; sequential: blocks streamed through a small ring of GPU slots; budget: as much of "
              "the model resident as fits in vram_budget_gb (whole blocks, or a block's first tensors), the rest "
              "streamed.", "auto", options=lambda: MODES),
    InputSpec("vram_budget_gb", "float", "VRAM for this model in GiB: required by budget mode; caps auto's decision. "
              "0 = no budget (auto uses the free VRAM).", 0.0, min=0.0, max=1024.0, step=0.01),
    InputSpec("prefetch_blocks", "int", "Blocks uploaded ahead of the one running (sequential and budget). 1-2 hides "
              "the transfer when a block's compute is at least its upload time; each costs one block of VRAM.",
              1, min=0, max=16, step=1),
    InputSpec("pin_memory", "bool", "Keep the weights in pinned (page-locked) RAM: uploads run at full link speed "
              "and overlap compute. Turn off only when the system refuses to pin (then uploads are slower).", True),
    InputSpec("transfer_dtype", "combo", "auto: blocks cross the link as stored (exact). compressed: the weights are held "
              "in pinned RAM and sent coded, about two thirds of bf16's bytes, and decoded on the GPU right after the "
              "upload: exact (the same bits), less RAM and fewer bytes on the link. fp8_e4m3: blocks cross as "
              "fp8 with per-row scales and are dequantized on the GPU: about half the bytes of bf16, so streaming is "
              "up to twice as fast when the link is the bottleneck; lossy (the error is shown by PinStream Stats).",
              "auto", options=lambda: list(TRANSFER_DTYPES)),
]

# The last input of every loader and offload node, optional so that workflows and API prompts
# saved before it existed load unchanged (the frontend gives a trailing widget a saved workflow
# lacks its default; prompt validation lets a missing optional input through, and the node
# function's default is 0).
RAM_BUDGET_INPUT = InputSpec(
    "ram_budget_gb", "float", "Host RAM for this model's weights in GiB (the disk tier). The blocks beyond it live on "
    "disk: in the model's own .safetensors file where its weights are there as stored (nothing written), else in a "
    "spill file on local disk (PINSTREAM_SPILL_DIR, else ~/.cache/pinstream/spill) written once when this node runs. "
    "They are read through a small pinned read ring whenever they are needed: streamed blocks at every step, blocks "
    "kept on the GPU once per load. The outputs stay the same; a step takes longer when the disk reads "
    "its blocks slower than the GPU computes (PinStream Stats shows the bytes read per step and the disk's rate). "
    "The part outside the blocks stays in RAM. 0 = automatic: the whole model stays in RAM while it fits in what "
    "the pinning cap leaves for it (after ComfyUI's and the other models' pins), else that share and the rest on "
    "disk; RAM then follows the model that runs (Wan 2.2's waiting expert goes to disk once streaming costs the "
    "running one more than reading its blocks back). "
    "`python -m pinstream recommend` gives a value for your RAM.", 0.0, min=0.0, max=4096.0, step=0.01, optional=True)
# The pipeline nodes' (a budget for the denoiser, as their vram_budget_gb).
DENOISER_RAM_BUDGET_INPUT = InputSpec(
    "ram_budget_gb", "float", "Host RAM for the denoiser's weights (transformer/unet; each, with a ControlNet) in GiB "
    "(the disk tier): its blocks beyond it live in a spill file on local disk (PINSTREAM_SPILL_DIR, else "
    "~/.cache/pinstream/spill), written once when this node runs, and are read back through a small pinned read "
    "ring each time they are needed. The "
    "encoders and the VAE stay in RAM. 0 = automatic: the denoiser stays in RAM while it fits in what the pinning "
    "cap leaves for it, else that share and the rest on disk, and RAM follows the model that runs.",
    0.0, min=0.0, max=4096.0, step=0.01, optional=True)


def check_ram_budget(ram_budget_gb) -> float:
    """ram_budget_gb as a float (0 = automatic); ValueError says what is allowed."""
    if ram_budget_gb is None:
        return 0.0
    try:
        ram = float(ram_budget_gb)
    except (TypeError, ValueError):
        raise ValueError(f"ram_budget_gb must be a number of GiB >= 0 (0 = automatic), got {ram_budget_gb!r}") from None
    if isinstance(ram_budget_gb, bool) or not math.isfinite(ram) or ram < 0:
        raise ValueError(f"ram_budget_gb must be a finite number >= 0 (GiB of this model's weights held in host RAM, "
                         f"the rest on disk; 0 = automatic), got {ram_budget_gb!r}")
    return ram


def check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype="auto",
                         ram_budget_gb=0.0) -> OffloadConfig:
    """Validate node inputs; ValueError says what was wrong and what is allowed."""
    from pinstream.modes import ModeError, normalize_mode

    try:
        normalize_mode(mode)
    except ModeError as e:
        raise ValueError(str(e)) from None
    try:
        budget = float(vram_budget_gb)
    except (TypeError, ValueError):
        raise ValueError(f"vram_budget_gb must be a number of GiB >= 0, got {vram_budget_gb!r}") from None
    if not math.isfinite(budget) or budget < 0:
        raise ValueError(f"vram_budget_gb must be a finite number >= 0 (GiB), got {vram_budget_gb!r}")
    if mode == "budget" and budget <= 0:
        raise ValueError("mode 'budget' needs vram_budget_gb > 0 (the VRAM this model may use, in GiB)")
    if isinstance(prefetch_blocks, bool) or not isinstance(prefetch_blocks, int) or not 0 <= prefetch_blocks <= 16:
        raise ValueError(f"prefetch_blocks must be a whole number from 0 to 16, got {prefetch_blocks!r}")
    if not isinstance(pin_memory, bool):
        raise ValueError(f"pin_memory must be true or false, got {pin_memory!r}")
    if transfer_dtype not in TRANSFER_DTYPES:
        raise ValueError(f"transfer_dtype must be one of {', '.join(TRANSFER_DTYPES)}, got {transfer_dtype!r}")
    return OffloadConfig(mode=mode, vram_budget_gb=budget, prefetch_blocks=prefetch_blocks, pin_memory=pin_memory,
                         transfer_dtype=transfer_dtype, ram_budget_gb=check_ram_budget(ram_budget_gb))


def _progress():
    try:
        import comfy.utils

        bar = None

        def update(done, total):
            nonlocal bar
            if bar is None:
                bar = comfy.utils.ProgressBar(total)
            bar.update_absolute(done, total)

        return update
    except Exception:  # noqa: BLE001
        return None


def apply_offload(patcher, config: OffloadConfig):
    """PinStream clone of ``patcher``, or the patcher unchanged plus the reason."""
    from pinstream.native import NativeUnavailable, native_available, native_error

    if not native_available():
        msg = (f"PinStream: native runtime not built ({native_error()}); {config.label} passed through "
               "unchanged. Run `python install.py` in the PinStream folder and restart ComfyUI.")
        log.warning(msg)
        return patcher, msg
    try:
        new = make_pinstream(patcher, config, progress=_progress())
    except (UnsupportedModel, NativeUnavailable) as e:
        msg = f"PinStream: {config.label} passed through unchanged: {e}"
        log.warning(msg)
        return patcher, msg
    h = new.pinstream.handle
    return new, f"PinStream {config.label}: {h.mode.name} ({h.mode.reason}); {h.plan['describe']}{disk_note(h)}"


# ---- node functions -----------------------------------------------------------------------

def _load_kwargs(fn):
    # Newest ComfyUI: loaders take disable_dynamic; PinStream models opt out of Dynamic VRAM.
    try:
        return {"disable_dynamic": True} if "disable_dynamic" in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):
        return {}


def _safetensors(path) -> tuple:
    """The loaded file, for the disk tier to read blocks from (a .safetensors file only)."""
    return (str(path),) if str(path).lower().endswith(".safetensors") else ()


def run_load_diffusion_model(unet_name, weight_dtype, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", ram_budget_gb=0.0):
    import comfy.sd
    import folder_paths

    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = unet_name
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    model_options = {}
    if weight_dtype == "fp8_e4m3fn":
        model_options["dtype"] = torch.float8_e4m3fn
    elif weight_dtype == "fp8_e4m3fn_fast":
        model_options["dtype"] = torch.float8_e4m3fn
        model_options["fp8_optimizations"] = True
    elif weight_dtype == "fp8_e5m2":
        model_options["dtype"] = torch.float8_e5m2
    path = folder_paths.get_full_path_or_raise("diffusion_models", unet_name)
    cfg.source_files = _safetensors(path)
    model = comfy.sd.load_diffusion_model(path, model_options=model_options,
                                          **_load_kwargs(comfy.sd.load_diffusion_model))
    model, msg = apply_offload(model, cfg)
    return (model,), msg


def run_load_checkpoint(ckpt_name, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", ram_budget_gb=0.0):
    import comfy.sd
    import folder_paths

    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = ckpt_name
    path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
    cfg.source_files = _safetensors(path)
    out = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                                **_load_kwargs(comfy.sd.load_checkpoint_guess_config))
    model, msg = apply_offload(out[0], cfg)
    return (model, out[1], out[2]), msg


def _offload_clip(clip, cfg):
    new_clip = clip.clone()
    patcher, msg = apply_offload(clip.patcher, cfg)
    new_clip.patcher = patcher
    # Under Dynamic VRAM PinStream manages a non-dynamic copy of the encoder: encode with it.
    new_clip.cond_stage_model = patcher.model
    return new_clip, msg


def run_load_clip(clip_name, type, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", device="default", ram_budget_gb=0.0):
    import comfy.sd
    import folder_paths

    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = clip_name
    allowed = _clip_types()
    if type not in allowed:
        raise ValueError(f"CLIP type {type!r} is not offered by this ComfyUI's Load CLIP; allowed: {', '.join(allowed)}")
    if device not in CLIP_DEVICES:
        raise ValueError(f"device must be one of {', '.join(CLIP_DEVICES)}, got {device!r}")
    # as core's Load CLIP: a type this ComfyUI has no enum member for loads by its file
    clip_type = getattr(comfy.sd.CLIPType, str(type).upper(), comfy.sd.CLIPType.STABLE_DIFFUSION)
    model_options = {}
    if device == "cpu":
        model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
    path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
    cfg.source_files = _safetensors(path)
    clip = comfy.sd.load_clip(ckpt_paths=[path], embedding_directory=folder_paths.get_folder_paths("embeddings"),
                              clip_type=clip_type, model_options=model_options,
                              **_load_kwargs(comfy.sd.load_clip))
    if device == "cpu":
        return (clip,), (f"PinStream {clip_name}: device cpu, so the text encoder runs on the CPU and there is "
                         "nothing to offload; passed through unchanged")
    clip, msg = _offload_clip(clip, cfg)
    return (clip,), msg


def _build_vae(vae_name):
    """The VAE core's Load VAE would give for ``vae_name``: a file in models/vae, or a name
    core's loader builds itself (taesd*, video TAEs, pixel_space)."""
    import comfy.sd
    import comfy.utils
    import folder_paths

    if vae_name in folder_paths.get_filename_list("vae"):
        path = folder_paths.get_full_path_or_raise("vae", vae_name)
        sd = comfy.utils.load_torch_file(path)
        vae = comfy.sd.VAE(sd=sd, **_load_kwargs(comfy.sd.VAE))
        vae.throw_exception_if_invalid() if hasattr(vae, "throw_exception_if_invalid") else None
    else:
        core = _core_node("VAELoader")
        if core is None or vae_name not in _vae_names():
            folder_paths.get_full_path_or_raise("vae", vae_name)  # core's error for a missing file
        vae = core().load_vae(vae_name)[0]
    patcher = getattr(vae, "patcher", None)
    # Newest ComfyUI builds every VAE under Dynamic VRAM (VAE() takes no disable_dynamic). Its
    # non-dynamic copy, which PinStream manages, is rebuilt from cached_patcher_init; core's
    # Load VAE sets one for files only, so set ours for every name.
    if patcher is not None and hasattr(patcher, "cached_patcher_init") and patcher.cached_patcher_init is None:
        patcher.cached_patcher_init = (_rebuild_vae_patcher, (vae_name,))
    return vae


def _rebuild_vae_patcher(vae_name, **_options):
    """cached_patcher_init factory (ComfyUI calls it with disable_dynamic=True, or with no
    options for a per-device copy): the same VAE, built again from its name."""
    return _build_vae(vae_name).patcher


def run_load_vae(vae_name, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", ram_budget_gb=0.0):
    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = vae_name
    vae = _build_vae(vae_name)
    if getattr(vae, "patcher", None) is None or not any(True for _ in vae.patcher.model.parameters()):
        return (vae,), f"PinStream {vae_name}: this VAE has no weights to offload; passed through unchanged"
    patcher, msg = apply_offload(vae.patcher, cfg)
    vae.patcher = patcher
    vae.first_stage_model = patcher.model  # the copy PinStream manages (Dynamic VRAM's delegate)
    return (vae,), msg


def run_offload_model(model, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", ram_budget_gb=0.0):
    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = type(getattr(model.model, "diffusion_model", model.model)).__name__
    new, msg = apply_offload(model, cfg)
    return (new,), msg


def run_offload_clip(clip, mode, vram_budget_gb, prefetch_blocks, pin_memory,
        transfer_dtype="auto", ram_budget_gb=0.0):
    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = type(clip.cond_stage_model).__name__
    new, msg = _offload_clip(clip, cfg)
    return (new,), msg


def run_offload_pipeline(pipeline, modes, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype="auto",
                         ram_budget_gb=0.0):
    """PinStream Offload (Pipeline): see comfy_nodes/pipeline_offload.py."""
    from pinstream.native import native_available, native_error

    from .pipeline_offload import offload_pipeline

    cfg = check_offload_inputs("auto", vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    if not isinstance(modes, str):
        raise ValueError(f"modes must be text (component=mode, ...), got {type(modes).__name__}")
    if not native_available():
        msg = (f"PinStream: native runtime not built ({native_error()}); the pipeline passed through unchanged. "
               "Run `python install.py` in the PinStream folder and restart ComfyUI.")
        log.warning(msg)
        return (pipeline,), msg
    out, lines = offload_pipeline(pipeline, modes, cfg.vram_budget_gb, cfg.prefetch_blocks, cfg.pin_memory,
                                  cfg.transfer_dtype, ram_budget_gb=cfg.ram_budget_gb, progress=_progress())
    return (out,), "\n".join(lines)


def run_load_flashportrait(precision, download_missing, modes, vram_budget_gb, prefetch_blocks, pin_memory,
                           transfer_dtype="auto", ram_budget_gb=0.0):
    """FlashPortrait Loader (PinStream): see comfy_nodes/flashportrait.py."""
    import nodes as comfy_nodes_module
    from pinstream.native import native_available, native_error

    from . import flashportrait
    from .pipeline_offload import offload_pipeline

    cfg = check_offload_inputs("auto", vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    if not isinstance(modes, str):
        raise ValueError(f"modes must be text (component=mode, ...), got {type(modes).__name__}")
    if not native_available():
        raise RuntimeError(f"PinStream: native runtime not built ({native_error()}); FlashPortrait Loader (PinStream) "
                           "cannot keep the pipe off the GPU without it. Run `python install.py` in the PinStream "
                           "folder and restart ComfyUI, or use FlashPortrait's own loader")
    device = flashportrait.compute_device()
    pipe, face, lines = flashportrait.load_flashportrait(
        comfy_nodes_module.NODE_CLASS_MAPPINGS, precision, bool(download_missing),
        lambda p: offload_pipeline(p, modes, cfg.vram_budget_gb, cfg.prefetch_blocks, cfg.pin_memory,
                                   cfg.transfer_dtype, ram_budget_gb=cfg.ram_budget_gb, device=device,
                                   progress=_progress())[1], device)
    return (pipe, face), "FlashPortrait pipe built in host RAM\n" + "\n".join(lines)


def run_offload_wanvideo_model(model, mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype="auto",
                               ram_budget_gb=0.0):
    """PinStream Offload (WanVideo Model): see comfy_nodes/wanvideo.py."""
    import comfy.model_management

    from .wanvideo import offload_wanvideo_model, wanvideo_parts

    cfg = check_offload_inputs(mode, vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, ram_budget_gb)
    cfg.label = "WanVideo " + type(wanvideo_parts(model)[1]).__name__
    new, msg = offload_wanvideo_model(model, cfg, apply_offload, comfy.model_management.load_models_gpu)
    return (new,), msg


def _gb(n) -> str:
    return f"{n / 1024**3:.2f} GiB"


def format_stats(rows: list, pins: dict | None = None) -> str:
    if not rows:
        return "PinStream: no model is managed by PinStream in this session."
    lines = []
    if pins is not None:
        cap = pins["cap_bytes"]
        lines.append(
            f"pinned host memory: PinStream {_gb(pins['pinstream_bytes'])}"
            + (f" of its {_gb(cap)} cap (PINSTREAM_PIN_CAP_GB)" if cap >= 0 else " (no cap: RAM unknown)")
            + (f", ComfyUI's own {_gb(pins['comfyui_bytes'])}" if pins["comfyui_bytes"] else ""))
    for r in rows:
        if r["mode"] == "passthrough":
            lines.append(f"{r['label']}: passed through ({r['reason']})")
            continue
        lines.append(
            f"{r['label']}: {r['mode']} ({r['reason']})\n"
            f"  resident {_gb(r['resident_bytes'])}, streamed {_gb(r['streamed_bytes'])}, "
            f"streamed last run {_gb(r['bytes_streamed_last_run'])}, upload {r['upload_gbps']:.1f} GB/s, "
            f"stall {r['stall_ms_last_run']:.1f} ms, pinned {_gb(r['pinned_bytes'])}"
            + (f" (+{_gb(r['pageable_bytes'])} pageable)" if r["pageable_bytes"] else "")
            + f", on device now {_gb(r['device_bytes'])} [{r['engine']} engine]"
            + (f"\n  fp8 transfer: weight error max {r['fp8_max_abs_error']:.3g}, mean {r['fp8_mean_abs_error']:.3g}"
               if r.get("transfer_dtype") == "fp8_e4m3" else "")
            + (f"\n  compressed (exact): {r['coded_ratio']:.2f} of the stored bytes, {r['coded_tensors']} tensors coded, "
               f"{r['stored_tensors']} as stored"
               + (f", {_gb(r['resident_coded_bytes'])} held coded on the device (decoded into a slot per use)"
                  if r.get("resident_coded_bytes") else "")
               + (" (" + "; ".join(f"{n}: {why}" for why, n in r["stored_why"].items()) + ")" if r["stored_why"] else "")
               + f", decode {r['decode_ms_last_run']:.1f} ms last run at {r['decode_gbps']:.1f} GB/s"
               + (f"\n  coded-weights cache {r['cache_dir']}: {r['cache_hits']} tensors read, {r['cache_stored']} "
                  f"written" + (f", {r['cache_rebuilt']} stale or corrupt entries coded again" if r['cache_rebuilt']
                                else "")
                  + (f"; not writable ({r['cache_error']})" if r['cache_error'] else "")
                  if r.get("cache_dir") else "\n  coded-weights cache off")
               if r.get("transfer_dtype") == "compressed" else "")
            + _disk_lines(r))
    return "\n".join(lines)


def _disk_lines(r: dict) -> str:
    """The disk tier's lines of a model's report: none unless some of it lives on disk (or
    blocks meant for disk stayed in RAM, and why)."""
    out = ""
    if r.get("disk_blocks"):
        over = r.get("disk_over_bytes", 0)
        where = []
        if r.get("source_block_bytes"):
            where.append(f"{_gb(r['source_block_bytes'])} read from the model's own file")
        if r.get("spill_path"):
            where.append(f"spill file {r['spill_path']} ({_gb(r['spill_bytes'])})")
        out += (f"\n  on disk: {r['disk_blocks']} blocks, {_gb(r['disk_block_bytes'])}, beyond the host budget of "
                f"{_gb(r['host_budget_bytes'])}" + (f" ({_gb(over)} above it stays in RAM: what cannot go to disk)"
                                                      if over > 0 else "")
                + "".join(f"; {w}" for w in where)
                + (f" (not all from the model's file: {r['source_note']})" if r.get("source_note") else "")
                + (f"; read {r['disk_how']}" if r.get("disk_how") else "")
                + (f", read ring {_gb(r['read_ring_bytes'])}" if r.get("read_ring_bytes") else ""))
        steps = r.get("disk_steps_last_run", 0)
        read = r.get("disk_bytes_last_run", 0)
        if steps:
            out += (f"\n  disk last run: {_gb(r['disk_bytes_per_step'])} read per step ({steps} steps, "
                    f"{_gb(read)} with the reads at load)")
        elif read:
            out += f"\n  disk last run: {_gb(read)} read at load (the blocks kept on the GPU)"
        else:
            out += "\n  disk last run: nothing read"
        if read:
            out += f", disk {r['disk_gbps']:.2f} GB/s, host waited {r['disk_wait_ms_last_run']:.1f} ms for it"
    if r.get("ram_moves_last_run"):
        out += (f"\n  RAM moves last run: {_gb(r['ram_to_ram_bytes_last_run'])} read back into RAM, "
                f"{_gb(r['ram_to_disk_bytes_last_run'])} moved to disk, in {r['ram_moves_last_run']} moves "
                f"({r['ram_move_ms_last_run']:.0f} ms); host RAM follows the model that runs")
    if r.get("spill_error"):
        out += f"\n  blocks meant for disk stay in RAM: {r['spill_error']}"
    return out


def run_stats(anything=None):
    rows = []
    for st in managed_states():
        row = collect_stats(st)
        rows.append(row)
        # The next report's "last run" counts from here.
        st.last_stats = st.handle.stats()
    from pinstream.pin_cap import default_pin_cap_bytes, pinned_bytes_in_use

    pins = {"pinstream_bytes": pinned_bytes_in_use(), "cap_bytes": default_pin_cap_bytes(),
            "comfyui_bytes": comfy_pinned_bytes()}
    text = format_stats(rows, pins)
    return (text,), text


def _config_inputs(first, more=()):
    """A node's inputs: its own, the offload inputs, its own optional ones, then ram_budget_gb
    (last, so the widgets of workflows saved before it keep their places)."""
    return first + OFFLOAD_INPUTS + list(more) + [RAM_BUDGET_INPUT]


SPECS = [
    NodeSpec("PinStreamLoadDiffusionModel", "Load Diffusion Model (PinStream)",
             "Loads a diffusion model (UNet/DiT: FLUX, SDXL, Wan 2.x, ...) like Load Diffusion Model, with an offload mode.",
             _config_inputs([
                 InputSpec("unet_name", "combo", "Diffusion model file in models/diffusion_models.",
                           options=_files("diffusion_models")),
                 InputSpec("weight_dtype", "combo", "Weight dtype, as in Load Diffusion Model (default keeps the "
                           "file's).", "default", options=lambda: WEIGHT_DTYPES),
             ]), [("MODEL", "MODEL")], run_load_diffusion_model),
    NodeSpec("PinStreamLoadCheckpoint", "Load Checkpoint (PinStream)",
             "Loads a full checkpoint; the offload mode applies to its diffusion model.",
             _config_inputs([InputSpec("ckpt_name", "combo", "Checkpoint file in models/checkpoints.",
                                       options=_files("checkpoints"))]),
             [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], run_load_checkpoint),
    NodeSpec("PinStreamLoadCLIP", "Load CLIP (PinStream)",
             "Loads a text encoder (CLIP, T5, Wan's umt5-xxl, ...) with an offload mode.",
             _config_inputs([
                 InputSpec("clip_name", "combo", "Text encoder file in models/text_encoders.",
                           options=_files("text_encoders")),
                 InputSpec("type", "combo", "Which model family the encoder is for (wan for umt5-xxl).",
                           "stable_diffusion", options=_clip_types),
             ], [InputSpec("device", "combo", "As in Load CLIP: cpu runs the text encoder on the CPU (then "
                           "there is nothing to offload and the encoder is passed through).", "default",
                           options=lambda: CLIP_DEVICES, optional=True)]),
             [("CLIP", "CLIP")], run_load_clip),
    NodeSpec("PinStreamLoadVAE", "Load VAE (PinStream)", "Loads a VAE with an offload mode.",
             _config_inputs([InputSpec("vae_name", "combo", "VAE file in models/vae, or a name Load VAE builds "
                                       "(taesd, taesdxl, taesd3, taef1 from models/vae_approx; pixel_space).",
                                       options=_vae_names)]),
             [("VAE", "VAE")], run_load_vae),
    NodeSpec("PinStreamOffloadModel", "PinStream Offload (Model)",
             "Applies a PinStream offload mode to a model from any loader. LoRAs before or after this node work.",
             _config_inputs([InputSpec("model", "model", "The model to manage.")]), [("MODEL", "MODEL")],
             run_offload_model),
    NodeSpec("PinStreamOffloadCLIP", "PinStream Offload (CLIP)",
             "Applies a PinStream offload mode to a text encoder from any loader.",
             _config_inputs([InputSpec("clip", "clip", "The text encoder to manage.")]), [("CLIP", "CLIP")],
             run_offload_clip),
    NodeSpec("PinStreamOffloadWanVideoModel", "PinStream Offload (WanVideo Model)",
             "Applies a PinStream offload mode to the transformer of ComfyUI-WanVideoWrapper's WANVIDEOMODEL, in place "
             "of the wrapper's block swap: its blocks stream from pinned RAM on a copy stream. Leave the loader's "
             "block_swap_args unconnected or not: the wrapper's own offloading is turned off for this model. LoRA "
             "from the wrapper's loader and its fp8 weights work.",
             _config_inputs([InputSpec("model", "wanvideo_model", "The WANVIDEOMODEL from WanVideo Model Loader.")]),
             [("WANVIDEOMODEL", "model")], run_offload_wanvideo_model),
    NodeSpec("PinStreamLoadFlashPortrait", "FlashPortrait Loader (PinStream)",
             "Loads ComfyUI-FlashPortrait's pipe like its FlashPortrait Loader, but builds every component in host RAM "
             "(its own loader puts all of them, about 40 GB, on the GPU first) and then puts each under a PinStream "
             "mode: the transformer streams within vram_budget_gb, the encoders and the VAE are model-offloaded. "
             "Feeds FlashPortrait's Feature Extractor and Sampler. Needs ComfyUI-FlashPortrait installed.",
             [InputSpec("precision", "combo", "Weight dtype, as in FlashPortrait Loader.", "bf16",
                        options=lambda: ["bf16", "fp16", "fp32"]),
              InputSpec("download_missing", "bool", "As in FlashPortrait Loader: download its models into "
                        "models/flash_portrait when they are missing.", True),
              InputSpec("modes", "string", "One component=mode per line or comma, as in PinStream Offload (Pipeline): "
                        "transformer, vae, text_encoder, clip_image_encoder, portrait_encoder. Empty: the transformer "
                        "streams (budget within vram_budget_gb when set, else sequential), the rest model_offload.", ""),
              InputSpec("vram_budget_gb", "float", "VRAM for the transformer in GiB when the modes do not name its "
                        "budget; 0 = stream it in sequential mode.", 0.0, min=0.0, max=1024.0, step=0.01)]
             + OFFLOAD_INPUTS[2:] + [DENOISER_RAM_BUDGET_INPUT],
             [("FLASH_PORTRAIT_PIPE", "pipe"), ("FACE_ALIGN_MODELS", "face_align_models")], run_load_flashportrait),
    NodeSpec("PinStreamOffloadPipeline", "PinStream Offload (Pipeline)",
             "Puts each torch module of a pipeline under a PinStream mode of its own: a dict like FlashPortrait's "
             "pipe, a diffusers pipeline (its components) or a plain torch module; accelerate's offload hooks are "
             "removed first. Returns the same object; the pipeline's own sampler runs it.",
             [InputSpec("pipeline", "any", "The pipeline to manage: FlashPortrait's FLASH_PORTRAIT_PIPE, a diffusers "
                        "pipeline (also one under accelerate's CPU offload, whose hooks are removed), or any torch "
                        "module. The weights are taken from wherever they are; copies on the GPU are freed."),
              InputSpec("modes", "string", "One component=mode per line or comma, e.g. 'transformer=budget:20, "
                        "text_encoder=model_offload'. Modes: auto, full_load, model_offload, sequential, budget:GiB, "
                        "skip (left as it is). Components not named: the transformer/unet streams (budget within "
                        "vram_budget_gb when it is set, else sequential); encoders and the VAE model_offload. The "
                        "node's text lists the components it found.", ""),
              InputSpec("vram_budget_gb", "float", "VRAM for the denoiser (transformer/unet) in GiB when the modes do "
                        "not name its budget; 0 = stream it in sequential mode.", 0.0, min=0.0, max=1024.0,
                        step=0.01)] + OFFLOAD_INPUTS[2:] + [DENOISER_RAM_BUDGET_INPUT],
             [("*", "pipeline")], run_offload_pipeline),
    NodeSpec("PinStreamStats", "PinStream Stats",
             "Shows, for every model PinStream manages: mode (and why), resident and streamed bytes, bytes "
             "streamed in the last run, upload bandwidth, stall and pinned RAM; for a model with blocks on disk "
             "(ram_budget_gb), its blocks on disk, the bytes read from disk per step and the disk's GB/s.",
             [InputSpec("anything", "any", "Connect any output (e.g. the sampler's LATENT) so the stats are taken "
                        "after it ran.", optional=True)],
             [("STRING", "stats")], run_stats, output_node=True),
]
