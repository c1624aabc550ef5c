"""The README's "How much RAM" table, computed with ``recommend``'s own planner
(:func:`.plan.plan_mode`): what each host RAM size runs for common models on a 12 GB GPU,
fully in RAM or with the disk tier.  ``python -m pinstream.recommend.ram_table`` prints
it; the tests check that the README holds exactly this table."""

from __future__ import annotations

import math

from .machine import GIB, GpuInfo, Machine, tier_for_vram
from .model import model_from_size
from .plan import BASE_RAM_GB, DEFAULT_DISK_GBPS, Plan, disk_tier_plan, plan_mode

HOSTS_GB = (16, 32, 64, 128)
VRAM_GB = 12
# (row label, model GiB, experts).  recommend's GB is GiB; model files are sized in decimal
# GB (Wan 2.1 14B bf16: 28.6e9 bytes, 26.6 GiB).  Wan 2.2 A14B is two experts of the 14B size.
MODELS = (
    ("Wan 2.1/2.2 14B bf16 (28.6 GB file, 26.6 GiB)", 26.6, 1),
    ("Wan 2.1/2.2 14B fp8 (14.3 GB file, 13.3 GiB)", 13.3, 1),
    ("Wan 2.2 A14B bf16: two experts of 26.6 GiB (disk figures per expert)", 26.6, 2),
    ("Wan 2.2 A14B fp8: two experts of 13.3 GiB (disk figures per expert)", 13.3, 2),
    ("FLUX.1 dev bf16 (23.8 GB file, 22.2 GiB)", 22.2, 1),
    ("SDXL UNet fp16 (5.1 GB file, 4.8 GiB)", 4.8, 1),
)


def plan_for(model_gb: float, ram_gb: float, other_gb: float = 0.0) -> Plan:
    """recommend --vram-gb 12 --ram-gb RAM --model-gb MODEL --other-models-gb OTHER."""
    gpu = GpuInfo(f"planned GPU with {VRAM_GB} GB", VRAM_GB, VRAM_GB, "--vram-gb")
    machine = Machine(gpu, float(ram_gb), None, tier_for_vram(VRAM_GB), "linux")
    return plan_mode(machine, model_from_size(model_gb, int(other_gb * GIB)), None)


def expert_plan(model_gb: float, ram_gb: float) -> Plan:
    """One of two experts of ``model_gb``, the other one in RAM beside it: whole while
    both fit, else with the same host budget as this one (half of what the system and
    the two read rings leave): recommend with --other-models-gb = that budget + ring."""
    whole = plan_for(model_gb, ram_gb, model_gb)
    if whole.disk is None:
        return whole
    model = model_from_size(model_gb)
    ring = disk_tier_plan(model, model.total_bytes, whole.mode, None, ram_gb, DEFAULT_DISK_GBPS).ring_gb
    half = math.floor(round((ram_gb - BASE_RAM_GB - 2 * ring) * 5, 6)) / 10
    return plan_for(model_gb, ram_gb, max(half, model.nonblock_bytes / GIB) + ring)


def cell(plan: Plan, ram_gb: float) -> str:
    if plan.ram_needed_gb > ram_gb:
        return f"no (needs {plan.ram_needed_gb:g} GB)"
    d = plan.disk
    if d is None:
        return "in RAM"
    return (
        f"disk tier: budget {d.host_budget_gb:.1f} GB, {d.disk_gb:.1f} GB on disk, "
        f"{d.step_read_gb:.1f} GB/step ({d.step_disk_s:.1f} s)"
    )


def ram_table() -> str:
    lines = [
        "| model | whole in RAM needs | " + " | ".join(f"{h} GB RAM" for h in HOSTS_GB) + " |",
        "| :-- | :-- |" + " :-- |" * len(HOSTS_GB),
    ]
    for label, gb, experts in MODELS:
        plans = [expert_plan(gb, h) if experts == 2 else plan_for(gb, h) for h in HOSTS_GB]
        whole = plan_for(gb, max(HOSTS_GB), gb * (experts - 1))
        cells = [f"{whole.ram_needed_gb:g} GB"] + [cell(p, h) for p, h in zip(plans, HOSTS_GB)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(ram_table())
