"""Machine detection for ``recommend``: the GPU ComfyUI will use (nvidia-smi, else
torch; its ``--cuda-device N`` when given), system RAM, and the RunPod tier
(``GPU_TIER``) they fall in.  ``--vram-gb`` / ``--ram-gb`` / ``--no-gpu`` plan for
another machine.  An nvidia-smi that is installed but fails is an error, not a CPU
machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from pinstream import modes

GIB = modes.GIB


class RecommendError(ValueError):
    """Bad input (any step of recommend): exits 2 with this message."""


# --------------------------------------------------------------------------- tiers

# RunPod GPU tiers (the seed's GPU_TIER values) -> nominal VRAM in GB.
TIERS = {
    "CONSUMER_8GB": 8,
    "CONSUMER_12GB": 12,
    "PROSUMER_24GB": 24,
    "PROSUMER_48GB": 48,
    "DATACENTER_80GB": 80,
}
# Cards report a little less than their nominal size (an "80 GB" H100 shows 79.6 GiB),
# so a card belongs to a tier when it has at least 90% of the tier's nominal VRAM.
TIER_TOLERANCE = 0.9
TIER_CPU = "CPU"
TIER_BELOW = "BELOW_CONSUMER_8GB"


@dataclass
class GpuInfo:
    name: str
    vram_gb: float
    free_vram_gb: float
    source: str


class GpuDetectError(RuntimeError):
    """nvidia-smi is installed but could not report the GPU."""


def _nvidia_smi(device: int | None = None) -> GpuInfo | None:
    """The GPU ComfyUI will use, from nvidia-smi; None when nvidia-smi is not installed
    or no GPU is visible.  Raises GpuDetectError when nvidia-smi runs but fails.

    ``device``: ComfyUI's ``--cuda-device N`` (or ``--default-device N``).  ComfyUI's
    main.py then sets CUDA_VISIBLE_DEVICES to N itself, replacing any value it had, so N
    is queried as is.  Without it, ComfyUI uses the first GPU of CUDA_VISIBLE_DEVICES.
    """
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    cmd = [exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if device is not None:
        cmd += ["-i", str(device)]
    elif visible is not None:
        first = visible.split(",")[0].strip()
        if not first or first.startswith("-"):
            return None
        cmd += ["-i", first]
    which = f"GPU {cmd[-1]}" if cmd[-2] == "-i" else "the GPU"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GpuDetectError(f"nvidia-smi could not run: {e}") from None
    if out.returncode != 0:
        if "No devices were found" in out.stdout + out.stderr:
            return None  # the driver answers and there is no GPU: a CPU machine
        tail = ((out.stdout + out.stderr).strip().splitlines() or ["no output"])[-1].strip()
        raise GpuDetectError(f"nvidia-smi failed for {which} (exit {out.returncode}: {tail})")
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                total_mib, free_mib = float(parts[1]), float(parts[2])
            except ValueError:
                raise GpuDetectError(f"nvidia-smi reported no memory size for {which} ({line.strip()!r})") from None
            return GpuInfo(parts[0], total_mib / 1024, free_mib / 1024, "nvidia-smi")
    raise GpuDetectError(f"nvidia-smi printed no GPU line for {which} ({out.stdout.strip()[:200]!r})")


def _torch_gpu(device: int | None = None) -> GpuInfo | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = 0
        # ComfyUI makes GPU N the only visible one; this process sees the same
        # numbering only while CUDA_VISIBLE_DEVICES is unset.
        if device is not None and os.environ.get("CUDA_VISIBLE_DEVICES") is None:
            if device >= torch.cuda.device_count():
                return None
            index = device
        free, total = torch.cuda.mem_get_info(index)
        return GpuInfo(torch.cuda.get_device_name(index), total / GIB, free / GIB, "torch")
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return None


def detect_gpu(device: int | None = None) -> GpuInfo | None:
    """The GPU ComfyUI will use (``device``: its --cuda-device), or None (the plan is
    then for the CPU).

    Raises GpuDetectError when nvidia-smi is installed but fails and torch finds no GPU
    either: a GPU machine whose GPU cannot be read must not be planned as a CPU one.
    """
    try:
        found = _nvidia_smi(device)
    except GpuDetectError as e:
        found = _torch_gpu(device)
        if found is None:
            raise
        found.source = f"torch ({e})"
        return found
    return found or _torch_gpu(device)


def comfyui_device(tokens: list) -> int | None:
    """The GPU index ComfyUI's --cuda-device (else --default-device) picks, or None."""
    values: dict = {}
    for i, tok in enumerate(tokens):
        for flag in ("--cuda-device", "--default-device"):
            if tok == flag and i + 1 < len(tokens):
                values[flag] = tokens[i + 1]
            elif tok.startswith(flag + "="):
                values[flag] = tok.split("=", 1)[1]
    for flag in ("--cuda-device", "--default-device"):  # ComfyUI applies --cuda-device last
        v = values.get(flag, "").strip()
        if v.isdigit():
            return int(v)
    return None


def detect_ram(meminfo: str = "/proc/meminfo") -> tuple[float, float | None]:
    """(total GB, available GB) of system RAM.

    Available is Linux's MemAvailable (psutil's ``available`` is the same figure): free
    memory plus the page cache and slab the kernel can reclaim without swapping.  Cached
    is never added on top: not all of it can be reclaimed, and MemAvailable already counts
    the part that can.  A kernel without MemAvailable gives MemFree (no cache counted)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total / GIB, vm.available / GIB
    except ImportError:
        pass
    try:
        info = {}
        with open(meminfo) as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0]) * 1024
        return info["MemTotal"] / GIB, info.get("MemAvailable", info["MemFree"]) / GIB
    except (OSError, KeyError, ValueError):
        raise RecommendError("cannot detect system RAM (install psutil) - pass --ram-gb N") from None


def tier_for_vram(vram_gb: float | None) -> str:
    if vram_gb is None:
        return TIER_CPU
    for name, nominal in sorted(TIERS.items(), key=lambda kv: -kv[1]):
        if vram_gb >= nominal * TIER_TOLERANCE:
            return name
    return TIER_BELOW


def env_tier() -> str | None:
    raw = os.environ.get("GPU_TIER", "").strip()
    if not raw:
        return None
    if raw.upper() in TIERS:
        return raw.upper()
    raise RecommendError(f"GPU_TIER={raw!r} is not a known tier; allowed: {', '.join(TIERS)}")


@dataclass
class Machine:
    gpu: GpuInfo | None
    ram_gb: float
    free_ram_gb: float | None
    tier: str
    platform: str
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def resolve_machine(
    *, vram_gb=None, ram_gb=None, no_gpu=False, platform=None, detect_gpu_fn=None, detect_ram_fn=None, device=None
) -> Machine:
    """``device``: the GPU index of ComfyUI's --cuda-device / --default-device, if any."""
    if detect_gpu_fn is None:

        def detect_gpu_fn():
            return detect_gpu(device)

    detect_ram_fn = detect_ram_fn or detect_ram
    warnings: list = []
    notes: list = []
    if device is not None:
        notes.append(f"ComfyUI is told to use GPU {device} (--cuda-device/--default-device): planning for that GPU")
    tier_env = env_tier()  # validated even when overridden
    gpu: GpuInfo | None
    if no_gpu:
        gpu = None
        notes.append("planning for a machine without a GPU (--no-gpu)")
        if tier_env:
            warnings.append(f"GPU_TIER={tier_env} ignored: --no-gpu given")
    elif vram_gb is not None:
        gpu = GpuInfo(f"planned GPU with {vram_gb:g} GB (--vram-gb)", vram_gb, vram_gb, "--vram-gb")
        notes.append("planning for another machine: VRAM from --vram-gb, all of it assumed free")
        if tier_env:
            warnings.append(f"GPU_TIER={tier_env} ignored: --vram-gb {vram_gb:g} given")
    elif tier_env:
        nominal = float(TIERS[tier_env])
        try:
            found, failed = detect_gpu_fn(), None
        except GpuDetectError as e:
            found, failed = None, e
            warnings.append(f"{e}; planning for GPU_TIER={tier_env} with all of its VRAM assumed free")
        if found is None:
            gpu = GpuInfo(f"{tier_env} (GPU_TIER)", nominal, nominal, "GPU_TIER")
            if failed is None:
                notes.append(f"planning for GPU_TIER={tier_env} ({nominal:g} GB); no GPU detected on this machine")
        else:
            gpu = GpuInfo(found.name, nominal, min(nominal, found.free_vram_gb), "GPU_TIER")
            if tier_for_vram(found.vram_gb) != tier_env:
                warnings.append(
                    f"GPU_TIER={tier_env} ({nominal:g} GB) but the detected {found.name} has "
                    f"{found.vram_gb:.1f} GB: planning for GPU_TIER"
                )
    else:
        try:
            gpu = detect_gpu_fn()
        except GpuDetectError as e:
            # Planning for the CPU here would start ComfyUI with --cpu on a GPU machine.
            raise RecommendError(
                f"{e}, and torch found no GPU either: cannot tell this machine's VRAM. Fix the driver, or "
                f"pass --vram-gb N (or set GPU_TIER) to plan for the GPU, or --no-gpu to plan for the CPU"
            ) from None
        if gpu is None:
            notes.append("no GPU detected (nvidia-smi, torch): planning for the CPU")
        elif gpu.source.startswith("torch ("):
            warnings.append(f"{gpu.source[len('torch (') : -1]}; VRAM read through torch instead")
    if ram_gb is not None:
        ram, free_ram = float(ram_gb), None
        notes.append("system RAM from --ram-gb")
    else:
        ram, free_ram = detect_ram_fn()
    tier = (
        tier_env
        if (tier_env and gpu is not None and gpu.source == "GPU_TIER")
        else tier_for_vram(gpu.vram_gb if gpu else None)
    )
    plat = platform or ("windows" if sys.platform.startswith("win") else "linux")
    return Machine(gpu, ram, free_ram, tier, plat, warnings, notes)
