"""Planning for ``recommend``: the PinStream mode and budget
(:func:`pinstream.modes.choose_auto`, or ``GPU_MEMORY_MODE``), its GPU_MEMORY_MODE
spelling, and the RAM the plan needs: the seed's table refined with the bytes the
engine pins, or, when the model does not fit in RAM, a host RAM budget with the rest
of the model on disk (:func:`disk_tier_plan`)."""

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

# The disk tier (modes that stream blocks: budget, sequential).  A model that does not
# fit in RAM gets a host RAM budget (ram_budget_gb on the loader nodes, host_budget_gb in
# pinstream.offload); its bytes beyond the budget live on disk, in a spill file PinStream
# writes once in its cache directory (or in the model's own .safetensors file), and
# stream disk -> pinned read ring -> GPU.  Blocks the VRAM budget keeps on the GPU need
# no host copy (they are read once at load), so they go to disk first, then streamed
# blocks, which are read every step; the part outside the blocks stays in RAM.  Reads
# use O_DIRECT: they bypass the page cache, which therefore holds no copy of them.
DISK_MODES = ("budget", "sequential")
# prefetch_blocks the plan assumes (the nodes' default).  The VRAM ring holds
# prefetch + 1 blocks; the pinned read ring prefetch + 2 blocks, on top of the host budget.
DISK_PREFETCH = 1
# Sequential O_DIRECT reads of a typical NVMe SSD, GB/s (a SATA SSD reads about 0.5).
DEFAULT_DISK_GBPS = 3.0
SATA_DISK_GBPS = 0.5


@dataclass
class DiskPlan:
    """The disk tier's plan for one model (sizes in GB, to 0.01 unless said)."""

    fits: bool  # False: even the smallest host budget leaves too little RAM
    host_budget_gb: float  # ram_budget_gb / host_budget_gb to set (to 0.1, rounded down)
    ring_gb: float  # the pinned read ring, on top of the budget (to 0.1, rounded up)
    other_gb: float  # other models in RAM (to 0.1, rounded up)
    disk_gb: float  # the model's bytes on disk: the spill file's size
    resident_disk_gb: float  # of them, blocks the GPU keeps: read once at load
    step_read_gb: float  # of them, streamed blocks: read from disk every step
    disk_gbps: float
    step_disk_s: float  # step_read_gb at disk_gbps: a lower bound of the step time
    need_gb: float  # system + host budget + read ring + other models

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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
    disk: DiskPlan | None = None


def _gb(b: float) -> str:
    return f"{b / GIB:.1f} GB"


def _tenth_down(gb: float) -> float:
    return math.floor(round(gb * 10, 6)) / 10


def _tenth_up(gb: float) -> float:
    return math.ceil(round(gb * 10, 6)) / 10


def cache_dir() -> tuple[str, str]:
    """Where the spill file goes, and where that came from (:func:`pinstream.paths.spill_dir`)."""
    from ..paths import spill_dir_and_source

    return spill_dir_and_source()


def gpu_resident_block_bytes(model: ModelProfile, mode: str, vram_budget_bytes: int | None) -> int:
    """Block bytes the VRAM budget keeps on the GPU: whole blocks of the largest size in
    what the budget leaves after the part outside the blocks and the ring of
    prefetch + 1 slots (the engine can also keep a block's first tensors: a little more)."""
    if mode != "budget" or not vram_budget_bytes or model.largest_block_bytes <= 0:
        return 0
    largest = model.largest_block_bytes
    left = vram_budget_bytes - model.nonblock_bytes - (DISK_PREFETCH + 1) * largest
    return min(model.total_bytes - model.nonblock_bytes, max(0, left) // largest * largest)


def disk_tier_plan(
    model: ModelProfile, host_model: int, mode: str, vram_budget_bytes: int | None, ram_gb: float, disk_gbps: float
) -> DiskPlan:
    """Host budget and disk bytes for a model that does not fit in ``ram_gb`` of RAM.

    The budget is the RAM left after the system, the other models and the read ring;
    the rest of the model goes to disk, GPU-resident blocks first.  At least the part
    outside the blocks stays in RAM: with less, ``fits`` is False and the budget is
    that smallest one."""
    largest = model.largest_block_bytes
    blocks = model.total_bytes - model.nonblock_bytes
    resident = gpu_resident_block_bytes(model, mode, vram_budget_bytes)
    ring_gb = _tenth_up(modes.read_ring_bytes(DISK_PREFETCH, largest) / GIB)
    other_gb = _tenth_up(model.companion_bytes / GIB)
    smallest = _tenth_up(model.nonblock_bytes / GIB)
    budget_gb = _tenth_down(ram_gb - BASE_RAM_GB - other_gb - ring_gb)
    fits = budget_gb >= smallest
    if not fits:
        budget_gb = smallest
    disk = max(0, host_model - round(budget_gb * GIB))
    resident_disk = min(disk, resident)
    step_read = min(disk - resident_disk, blocks - resident)
    return DiskPlan(
        fits=fits,
        host_budget_gb=budget_gb,
        ring_gb=ring_gb,
        other_gb=other_gb,
        disk_gb=round(disk / GIB, 2),
        resident_disk_gb=round(resident_disk / GIB, 2),
        step_read_gb=round(step_read / GIB, 2),
        disk_gbps=disk_gbps,
        step_disk_s=round(step_read / GIB / disk_gbps, 2),
        need_gb=round(BASE_RAM_GB + budget_gb + ring_gb + other_gb, 1),
    )


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


def plan_mode(
    machine: Machine, model: ModelProfile, env_mode, pinned_gb: float | None = None, disk_gbps: float | None = None
) -> Plan:
    """PinStream mode, budget and GPU_MEMORY_MODE, and the RAM that needs (with the disk
    tier when the model does not fit in RAM; ``disk_gbps``: its read rate, None for
    :data:`DEFAULT_DISK_GBPS`)."""
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
            # RAM below the model is the disk tier's case, planned below (not partial pinning).
            host_ram_bytes=None,
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
    # The disk tier: only where RAM would not do (the model, the system and the other
    # models need more than the machine has), and only in modes that stream blocks.
    disk = None
    if machine.gpu is not None and mode in DISK_MODES and model.has_blocks and computed > machine.ram_gb:
        # Free RAM is MemAvailable (free plus the page cache the kernel can reclaim): the
        # budget fits in it beside the system's share, never in more than the machine has.
        usable = machine.ram_gb
        if machine.free_ram_gb is not None:
            usable = min(usable, machine.free_ram_gb + BASE_RAM_GB)
        gbps = disk_gbps or DEFAULT_DISK_GBPS
        disk = disk_tier_plan(model, host_model, mode, budget_bytes, usable, gbps)
        notes.extend(_disk_notes(disk, model, breakdown, computed, usable < machine.ram_gb, machine, disk_gbps))
        host_model = round((disk.host_budget_gb + disk.ring_gb) * GIB)  # pinned: the budget and the read ring
        breakdown = (
            f"{BASE_RAM_GB:g} GB system + {disk.host_budget_gb:.1f} GB host budget + {disk.ring_gb:.1f} GB read ring"
        )
        if disk.other_gb:
            breakdown += f" + {disk.other_gb:.1f} GB other models"
        need = max(float(SEED_RAM_MINIMUM_GB), disk.need_gb)
        if disk.need_gb < SEED_RAM_MINIMUM_GB:
            breakdown += f"; seed table minimum: {SEED_RAM_MINIMUM_GB} GB"
        if not disk.fits:
            need = float(math.ceil(need))
    else:
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
        if disk is not None:
            warnings.append(
                f"system RAM {machine.ram_gb:.1f} GB is below the {need:g} GB even the disk tier needs ({breakdown}; "
                f"the {_gb(model.nonblock_bytes)} outside the blocks stays in RAM): expect swapping or an "
                f"out-of-memory kill; use a smaller or fp8 model, keep fewer other models in RAM, or add RAM"
            )
        else:
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
    elif disk is not None and not disk.fits:
        warnings.append(
            f"only {machine.free_ram_gb:.1f} GB of the {machine.ram_gb:.1f} GB RAM is available now; even the disk "
            f"tier needs {need:g} GB ({breakdown}): close other programs first"
        )
    elif disk is None and machine.free_ram_gb is not None and machine.free_ram_gb < need:
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
    return Plan(mode, dtype, budget_gb, gmm, reason, need, breakdown, host_model / GIB, warnings, notes, disk)


def _disk_notes(
    disk: DiskPlan, model: ModelProfile, breakdown: str, computed: float, by_free: bool, machine: Machine, gbps
) -> list:
    streamed_disk = round(disk.disk_gb - disk.resident_disk_gb, 2)
    notes = [
        f"the model does not fit in RAM ({breakdown}: {computed:.1f} GB): disk tier. ram_budget_gb "
        f"{disk.host_budget_gb:.1f} keeps that much of it in pinned RAM and {disk.disk_gb:.1f} GB on disk: first "
        f"{disk.resident_disk_gb:.1f} GB of the blocks the GPU keeps (read once at load, no host copy needed), then "
        f"{streamed_disk:.1f} GB of streamed blocks, read every step through a pinned read ring of "
        f"prefetch_blocks + 2 = {DISK_PREFETCH + 2} blocks ({disk.ring_gb:.1f} GB, on top of the budget); the "
        f"{_gb(model.nonblock_bytes)} outside the blocks stays in RAM",
        f"per step the disk tier reads {disk.step_read_gb:.1f} GB: {disk.step_disk_s:.2f} s at "
        f"{disk.disk_gbps:g} GB/s; a step takes at least the longest of compute, upload and disk read time",
    ]
    if gbps is None:
        notes.append(
            f"disk read rate {DEFAULT_DISK_GBPS:g} GB/s is an assumption (a typical NVMe SSD, O_DIRECT sequential "
            f"reads; a SATA SSD reads about {SATA_DISK_GBPS:g} GB/s): pass --disk-gbps for your disk"
        )
    page_cache = (
        "page cache: disk-tier reads use O_DIRECT and bypass it, so it holds no copy of the spill file; the plan "
        "counts none of it as RAM the model can use, and every per-step read comes from the disk"
    )
    if machine.free_ram_gb is not None:
        page_cache += (
            f". Free RAM is MemAvailable ({machine.free_ram_gb:.1f} GB: free memory plus the page cache the kernel "
            f"can reclaim)"
        )
        if by_free:
            page_cache += "; the host budget fits in it: close other programs for a larger one"
    notes.append(page_cache)
    return notes
