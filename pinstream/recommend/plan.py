"""Planning for ``recommend``: the PinStream mode and budget
(:func:`pinstream.modes.choose_auto`, or ``GPU_MEMORY_MODE``), its GPU_MEMORY_MODE
spelling, and the RAM the plan needs: the seed's table refined with the bytes the
engine pins."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from pinstream import modes

from .machine import GIB, Machine
from .model import ModelProfile

# OS, Python, torch with CUDA and ComfyUI itself, before any model.
BASE_RAM_GB = 4.0
# The seed's RAM table (GB): 16 minimum (SD1.5 with --lowvram), 32 for SDXL with
# offload (and the seed's 24 GB row), 64+ for large video models with sequential
# offload.  Used when the model is assumed; real sizes refine it.
SEED_RAM_MINIMUM_GB = 16
SEED_RAM_GB = {
    ("video", True): 64,
    ("video", False): 32,
    ("sdxl", True): 32,
    ("sdxl", False): 16,
    ("sd15", True): 16,
    ("sd15", False): 16,
}
# Share of RAM that can be page-locked: ComfyUI caps pinning at 95% of RAM on Linux;
# Windows (WDDM) caps pinned memory near 50% of RAM.
PIN_CAP_FRACTION = {"linux": 0.95, "windows": 0.50}

GPU_MEMORY_MODE_NAMES = {
    ("full_load", "auto"): "model_full_load",
    ("model_offload", "auto"): "model_cpu_offload",
    ("sequential", "auto"): "sequential_cpu_offload",
    # budget streams part of the model: readers of GPU_MEMORY_MODE that only know the
    # seed's spellings must stream, so budget is exported as sequential.
    ("budget", "auto"): "sequential_cpu_offload",
    ("full_load", "fp8_e4m3"): "model_full_load_and_qfloat8",
    ("model_offload", "fp8_e4m3"): "model_cpu_offload_and_qfloat8",
    ("sequential", "fp8_e4m3"): "sequential_cpu_offload_and_qfloat8",
    ("budget", "fp8_e4m3"): "sequential_cpu_offload_and_qfloat8",
}
STREAMING_MODES = ("budget", "sequential", "model_offload")


@dataclass
class Plan:
    mode: str
    transfer_dtype: str
    budget_gb: float | None
    gpu_memory_mode: str
    reason: str
    ram_needed_gb: float
    ram_breakdown: str
    host_model_gb: float
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def _gb(b: float) -> str:
    return f"{b / GIB:.1f} GB"


# ComfyUI on the CPU (--cpu, or no GPU) computes the diffusion model in fp32: its
# should_use_fp16 / should_use_bf16 are False for a CPU device, so 16-bit weights are
# stored upcast to fp32 (twice their bytes).  fp8 weights stay fp8 only when the model
# is too large for RAM (unet_dtype: params x 2 bytes above 88% of RAM less ComfyUI's
# ~1.2 GB minimum inference memory); otherwise they become fp32 too (four times).
CPU_UPCAST = {"F16": 2, "BF16": 2, "F8_E4M3": 4, "F8_E5M2": 4}
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
CPU_WEIGHT_RAM_SHARE = 0.88
CPU_MIN_INFERENCE_GB = 1.2


def cpu_weight_bytes(model: ModelProfile, ram_gb: float) -> tuple[int, str]:
    """RAM the diffusion model takes when ComfyUI runs it on the CPU, and a note saying why."""
    if model.dtype_bytes is None:
        host = 2 * model.total_bytes
        return host, (
            f"no GPU: ComfyUI runs the diffusion model in fp32 on the CPU (it uses fp16/bf16 only on a GPU); "
            f"--model-gb gives no dtype, so 16-bit weights are assumed: {_gb(host)} of RAM for the "
            f"{_gb(model.total_bytes)} model (pass --model FILE for its real dtypes)"
        )
    elem = {"F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
    params = sum(b // elem.get(dt, 4) for dt, b in model.dtype_bytes.items())
    keep_fp8 = params * 2 > (CPU_WEIGHT_RAM_SHARE * ram_gb - CPU_MIN_INFERENCE_GB) * GIB
    host = 0
    for dt, b in model.dtype_bytes.items():
        factor = CPU_UPCAST.get(dt, 1)
        if dt in FP8_DTYPES and keep_fp8:
            factor = 1
        host += b * factor
    parts = []
    sixteen = sum(b for dt, b in model.dtype_bytes.items() if dt in ("F16", "BF16"))
    fp8 = sum(b for dt, b in model.dtype_bytes.items() if dt in FP8_DTYPES)
    if sixteen:
        parts.append(f"its {_gb(sixteen)} of 16-bit weights count twice")
    if fp8:
        parts.append(
            f"its {_gb(fp8)} of fp8 weights count once (ComfyUI keeps them fp8: in 16-bit the model would "
            f"exceed {int(CPU_WEIGHT_RAM_SHARE * 100)}% of RAM)"
            if keep_fp8
            else f"its {_gb(fp8)} of fp8 weights count four times"
        )
    how = "; ".join(parts) if parts else "its weights count as stored"
    return host, (
        f"no GPU: ComfyUI runs the diffusion model in fp32 on the CPU (it uses fp16/bf16 only on a GPU), so "
        f"{how}: {_gb(host)} of RAM for the {_gb(model.total_bytes)} model"
    )


def plan_mode(machine: Machine, model: ModelProfile, env_mode, pinned_gb: float | None = None) -> Plan:
    """PinStream mode, budget and GPU_MEMORY_MODE, and the RAM that needs."""
    warnings: list = []
    notes: list = []
    dtype = "auto"
    budget_bytes = None
    if machine.gpu is None:
        mode, reason = "full_load", "no GPU: ComfyUI runs on the CPU (--cpu) and the weights stay in RAM"
        if env_mode and env_mode[0] not in ("auto", "full_load"):
            warnings.append(f"GPU_MEMORY_MODE asks for {env_mode[0]}, which needs a GPU: ignored")
        warnings.append("no GPU: inference runs on the CPU and is very slow; PinStream streaming does not apply")
    else:
        free = int(machine.gpu.free_vram_gb * GIB)
        auto = modes.choose_auto(
            free_device_bytes=free,
            model_bytes=model.total_bytes,
            largest_block_bytes=model.largest_block_bytes,
            nonblock_bytes=model.nonblock_bytes,
            host_ram_bytes=int(machine.ram_gb * GIB),
            has_blocks=model.has_blocks,
        )
        if env_mode and env_mode[0] != "auto":
            mode, dtype = env_mode
            reason = f"GPU_MEMORY_MODE={os.environ.get('GPU_MEMORY_MODE', '').strip()} (auto would pick {auto.mode})"
            if mode in ("budget", "sequential") and not model.has_blocks:
                warnings.append(f"the model has no repeated blocks to stream; {mode} cannot work (auto: {auto.mode})")
            if mode == "budget":
                minimum = modes.min_streaming_bytes(model.nonblock_bytes, model.largest_block_bytes, 1)
                budget_bytes = modes.auto_budget_bytes(free, model.total_bytes)
                if budget_bytes < minimum:
                    warnings.append(
                        f"budget {_gb(budget_bytes)} is below the streaming minimum {_gb(minimum)} "
                        f"(non-block part + 2 x largest block {_gb(model.largest_block_bytes)})"
                    )
        else:
            mode, budget_bytes, reason = auto.mode, auto.budget_bytes, auto.reason
        # full_load keeps the whole model on the GPU; model_offload uploads all of it while it runs.
        if mode in ("full_load", "model_offload") and not modes.whole_model_fits(free, model.total_bytes):
            usable = modes.auto_usable_bytes(free)
            what = "full load" if mode == "full_load" else "model_offload, which uploads the whole model while it runs"
            forced = bool(env_mode and env_mode[0] != "auto")
            asked = "GPU_MEMORY_MODE asks for" if forced else "the plan is"
            why = (
                f"auto would pick {auto.mode}"
                if forced
                else "the model has no repeated blocks to stream; use a smaller or fp8 model, or a larger GPU"
            )
            warnings.append(
                f"{asked} {what}, but the model ({_gb(model.total_bytes)}) plus "
                f"{round((modes.AUTO_FULL_LOAD_HEADROOM - 1) * 100)}% activation headroom does not fit in "
                f"{_gb(usable)} of usable VRAM: expect out-of-memory errors ({why})"
            )
    budget_gb = None if budget_bytes is None else math.floor(budget_bytes / GIB * 10) / 10
    gmm = GPU_MEMORY_MODE_NAMES[(mode, dtype)]
    if mode == "budget":
        notes.append(
            f"GPU_MEMORY_MODE has no spelling for PinStream's budget mode: exported as {gmm}; in PinStream "
            f"nodes choose mode budget with budget_gb {budget_gb} (or auto)"
        )

    # RAM: base + the host copy of the model + what the workflow loads beside it.
    # The engine packs every streamed block into pinned chunks sized to their contents
    # (64-byte tensor, 512-byte block alignment) and frees the original storage, so its
    # host_bytes is the model's bytes; --pinned-gb takes the figure it reported.
    # full_load keeps the pinned copy too: unloading it (another model needs the VRAM) is a
    # pointer swap back to that copy, not a device-to-host copy.
    streaming = mode in STREAMING_MODES
    if machine.gpu is None:
        host_model, cpu_note = cpu_weight_bytes(model, machine.ram_gb)
        host_what = "weights in RAM, in fp32 on the CPU"
        notes.append(cpu_note)
    else:
        host_model = int(pinned_gb * GIB) if pinned_gb else model.total_bytes
        host_what = "pinned by PinStream (engine figure, --pinned-gb)" if pinned_gb else "pinned by PinStream"
        if not streaming:
            host_what += ", kept in full_load for an instant unload"
        if dtype == "fp8_e4m3" and not pinned_gb:
            notes.append("fp8 transfer: the RAM figure assumes the host copy keeps the file's dtype (an upper bound)")
    computed = BASE_RAM_GB + (host_model + model.companion_bytes) / GIB
    breakdown = f"{BASE_RAM_GB:g} GB system + {_gb(host_model)} model ({host_what})"
    if model.companion_bytes:
        breakdown += f" + {_gb(model.companion_bytes)} other models"
    if model.source == "assumed":
        seed = SEED_RAM_GB[(model.workload, streaming or machine.gpu is None)]
        need = max(float(seed), computed)
        breakdown += f"; seed table for this workload: {seed} GB"
    else:
        need = max(float(SEED_RAM_MINIMUM_GB), computed)
        if computed < SEED_RAM_MINIMUM_GB:
            breakdown += f"; seed table minimum: {SEED_RAM_MINIMUM_GB} GB"
    need = float(math.ceil(need))

    if machine.ram_gb < need:
        remedy = "use a smaller or fp8 model, close other programs, or add RAM"
        if machine.gpu is not None and not streaming:
            remedy += (
                f"; or load this model with ComfyUI's own loader instead of PinStream's, which keeps no "
                f"host copy once the model is on the GPU (about {_gb(host_model)} less RAM; unloading "
                f"it then copies it back from the GPU)"
            )
        warnings.append(
            f"system RAM {machine.ram_gb:.1f} GB is below the {need:g} GB this plan needs ({breakdown}): expect "
            f"swapping or an out-of-memory kill; {remedy}"
        )
    elif machine.free_ram_gb is not None and machine.free_ram_gb < need:
        warnings.append(
            f"only {machine.free_ram_gb:.1f} GB of the {machine.ram_gb:.1f} GB RAM is free now; this plan needs "
            f"{need:g} GB: close other programs first"
        )
    if machine.gpu is not None:
        cap = PIN_CAP_FRACTION[machine.platform] * machine.ram_gb * GIB
        if host_model > cap:
            warnings.append(
                f"{_gb(host_model)} cannot all be pinned: {machine.platform} lets about "
                f"{int(PIN_CAP_FRACTION[machine.platform] * 100)}% of RAM ({_gb(cap)}) be page-locked; "
                f"the rest is copied from pageable memory, which is slower"
            )
    return Plan(mode, dtype, budget_gb, gmm, reason, need, breakdown, host_model / GIB, warnings, notes)
