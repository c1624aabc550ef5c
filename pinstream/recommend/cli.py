"""``python -m pinstream recommend``: options, the recommendation as one dict, and its
text, JSON and shell forms."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys

from pinstream import modes

from .comfyui_flags import SEED_FLAGS, SEED_FLAGS_LEFT_OUT, SEED_ROW_NAMES, dynamic_vram_note
from .flag_check import check_comfyui_flags
from .machine import GIB, RecommendError, comfyui_device, resolve_machine
from .model import SIZE_ONLY_BLOCK_SHARE, SIZE_ONLY_BLOCKS, assumed_model, model_from_file, model_from_size
from .plan import DEFAULT_DISK_GBPS, SATA_DISK_GBPS, cache_dir, plan_mode

EXIT_BAD_INPUT = 2
# Largest size a GB option takes (a million GB): far above any real machine or model,
# small enough that byte counts stay exact integers.
MAX_GB = 1e6


def _positive(name: str, allow_zero: bool = False, unit: str = "GB"):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of {unit}, got {text!r}") from None
        bad = math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero)
        if bad:
            limit = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {limit} ({unit}), got {text!r}")
        if value > MAX_GB:
            raise argparse.ArgumentTypeError(f"must be at most {int(MAX_GB)} {unit}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, never a traceback
        raise RecommendError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pinstream recommend",
        description=(
            "Recommend ComfyUI flags (COMFYUI_ARGS), GPU_MEMORY_MODE and a PinStream mode for this machine "
            "or another one, checked against the ComfyUI that will run. GB means GiB. "
            "ComfyUI flags of your own go after '--' and are checked too."
        ),
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--shell", action="store_true", help="shell assignments for eval (used by start.sh)")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--vram-gb", type=_positive("vram-gb"), help="plan for a GPU with this much VRAM")
    gpu.add_argument("--no-gpu", action="store_true", help="plan for a machine without a GPU")
    p.add_argument("--ram-gb", type=_positive("ram-gb"), help="plan for this much system RAM")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="FILE", help="a .safetensors file (only its header is read)")
    model.add_argument("--model-gb", type=_positive("model-gb"), help="a model of this size (block layout assumed)")
    p.add_argument(
        "--other-models-gb",
        type=_positive("other-models-gb", allow_zero=True),
        default=None,
        help="text encoders, VAE and other models the workflow keeps in RAM (default: 0 with --model/--model-gb)",
    )
    p.add_argument(
        "--pinned-gb",
        type=_positive("pinned-gb"),
        help="host memory the PinStream engine reported for this model (host_bytes in the offload handle's stats()); "
        "replaces the estimate in the RAM figure",
    )
    p.add_argument(
        "--disk-gbps",
        type=_positive("disk-gbps", unit="GB/s"),
        help=f"disk read rate for the disk tier, GB/s (default: {DEFAULT_DISK_GBPS:g}, assumed: a typical NVMe SSD; "
        f"a SATA SSD reads about {SATA_DISK_GBPS:g})",
    )
    p.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder whose argument parser checks the flags")
    p.add_argument(
        "--comfyui-args",
        metavar="ARGS",
        default="",
        help="ComfyUI flags of your own, as one string split like a shell line; the word after --comfyui-args is "
        "always its value, even when it starts with '--' (--comfyui-args \"--lowvram --port 8189\"); "
        '--comfyui-args="--lowvram ..." works too',
    )
    p.add_argument("--platform", choices=("linux", "windows"), help="OS of the planned machine (pinning cap)")
    return p


def recommend(ns: argparse.Namespace, extra_args: list, *, detect_gpu_fn=None, detect_ram_fn=None) -> dict:
    """The recommendation as the JSON-ready dict."""
    try:
        env_mode = modes.env_default_mode()
    except modes.ModeError as e:
        raise RecommendError(str(e)) from None
    try:
        user = shlex.split(ns.comfyui_args)
    except ValueError as e:
        raise RecommendError(
            f"--comfyui-args {ns.comfyui_args!r} cannot be split into words ({e}); balance its quotes, "
            f"or pass the flags after '--' instead"
        ) from None
    user += list(extra_args)
    device = None if (ns.no_gpu or ns.vram_gb is not None) else comfyui_device(user)
    machine = resolve_machine(
        vram_gb=ns.vram_gb,
        ram_gb=ns.ram_gb,
        no_gpu=ns.no_gpu,
        platform=ns.platform,
        detect_gpu_fn=detect_gpu_fn,
        detect_ram_fn=detect_ram_fn,
        device=device,
    )
    warnings = list(machine.warnings)
    notes = list(machine.notes)
    other = int((ns.other_models_gb or 0) * GIB)
    if ns.model:
        model = model_from_file(ns.model, other)
    elif ns.model_gb:
        model = model_from_size(ns.model_gb, other)
        warnings.append(
            f"--model-gb gives only the size: assumed {SIZE_ONLY_BLOCKS} equal blocks holding "
            f"{int(SIZE_ONLY_BLOCK_SHARE * 100)}% of the bytes; pass --model FILE for exact block sizes"
        )
    else:
        model = assumed_model()
        if ns.other_models_gb is not None:
            model.companion_bytes = other
        notes.append(
            "no --model given: the plan assumes Wan 2.1 14B bf16 (26.6 GB, 40 blocks of 0.65 GB, 0.43 GB "
            "outside the blocks) with its umt5-xxl fp16 text encoder and VAE (10.9 GB); SD1.5-only "
            "workflows need 16 GB RAM and SDXL ones 32 GB (seed table)"
        )
    if (ns.model or ns.model_gb) and ns.other_models_gb is None:
        notes.append("RAM figure counts this model only; add text encoders and VAE with --other-models-gb")
    plan = plan_mode(machine, model, env_mode, ns.pinned_gb, ns.disk_gbps)
    notes.append(f"decision: {plan.reason}")
    notes.extend(plan.notes)

    row = [t for t in SEED_FLAGS[machine.tier] if t not in SEED_FLAGS_LEFT_OUT]
    notes.extend(SEED_FLAGS_LEFT_OUT[t] for t in SEED_FLAGS[machine.tier] if t in SEED_FLAGS_LEFT_OUT)
    try:
        flags = check_comfyui_flags(
            [(row, f"seed table, {SEED_ROW_NAMES[machine.tier]}"), (user, "your arguments")], ns.comfyui
        )
    except FileNotFoundError as e:
        raise RecommendError(str(e)) from None
    warnings.extend(flags.warnings)
    notes.extend(flags.notes)
    dynamic = dynamic_vram_note(flags, machine)
    if dynamic:
        notes.append(dynamic)
    if device is not None and comfyui_device(flags.args) != device:
        warnings.append(
            f"planned for GPU {device} (your --cuda-device/--default-device), but that flag was dropped: "
            f"ComfyUI will use its default GPU"
        )
    warnings.extend(plan.warnings)

    gpu = machine.gpu
    return {
        "gpu": None
        if gpu is None
        else {"name": gpu.name, "vram_gb": round(gpu.vram_gb, 2), "free_vram_gb": round(gpu.free_vram_gb, 2)},
        "ram_gb": round(machine.ram_gb, 2),
        "tier": machine.tier,
        "comfyui_args": flags.args,
        "gpu_memory_mode": plan.gpu_memory_mode,
        "pinstream": {"mode": plan.mode, "budget_gb": plan.budget_gb},
        "ram_needed_gb": plan.ram_needed_gb,
        "warnings": warnings,
        # The disk tier: None while the model fits in RAM.
        "disk_tier": None if plan.disk is None else _disk_dict(plan.disk, ns.disk_gbps is None),
        # Beyond the schema: where the answer came from.
        "free_ram_gb": None if machine.free_ram_gb is None else round(machine.free_ram_gb, 2),
        "model": {
            "name": model.name,
            "source": model.source,
            "total_gb": round(model.total_bytes / GIB, 3),
            "largest_block_gb": round(model.largest_block_bytes / GIB, 3),
            "nonblock_gb": round(model.nonblock_bytes / GIB, 3),
            "blocks": model.block_count,
        },
        "flag_check": {"source": flags.source, "comfyui": flags.comfyui, "comfyui_version": flags.comfyui_version},
        "notes": notes,
    }


def _disk_dict(disk, rate_assumed: bool) -> dict:
    where, source = cache_dir()
    return {**disk.as_dict(), "disk_gbps_assumed": rate_assumed, "cache_dir": where, "cache_dir_source": source}


def format_text(r: dict) -> str:
    g = r["gpu"]
    lines = ["PinStream recommend"]
    if g:
        lines.append(f"  GPU:    {g['name']}: {g['vram_gb']:.1f} GB, {g['free_vram_gb']:.1f} GB free")
    else:
        lines.append("  GPU:    none (CPU)")
    free = f", {r['free_ram_gb']:.1f} GB free" if r["free_ram_gb"] is not None else ""
    lines.append(f"  RAM:    {r['ram_gb']:.1f} GB{free}")
    lines.append(f"  Tier:   {r['tier']}")
    m = r["model"]
    lines.append(
        f"  Model:  {m['name']}: {m['total_gb']:.2f} GB, {m['blocks']} blocks, largest {m['largest_block_gb']:.2f} GB, "
        f"outside blocks {m['nonblock_gb']:.2f} GB"
    )
    fc = r["flag_check"]
    if fc["source"] == "parser":
        lines.append(f"  Flags checked against: ComfyUI {fc['comfyui_version']} at {fc['comfyui']}")
    else:
        lines.append("  Flags checked against: built-in table (no ComfyUI found)")
    lines.append("")
    lines.append(f"COMFYUI_ARGS={shlex.quote(shlex.join(r['comfyui_args']))}")
    lines.append(f"GPU_MEMORY_MODE={r['gpu_memory_mode']}")
    budget = f", budget {r['pinstream']['budget_gb']} GB" if r["pinstream"]["budget_gb"] is not None else ""
    lines.append(f"PinStream mode: {r['pinstream']['mode']}{budget}")
    d = r["disk_tier"]
    if d:
        lines.append(
            f"Host RAM budget: {d['host_budget_gb']:.1f} GB (ram_budget_gb on PinStream's loader nodes, host_budget_gb "
            f"in pinstream.offload), plus a {d['ring_gb']:.1f} GB pinned read ring"
        )
        rate = f"{d['disk_gbps']:g} GB/s" + (" assumed" if d["disk_gbps_assumed"] else "")
        lines.append(
            f"Disk tier: {d['disk_gb']:.1f} GB of the model on disk; {d['step_read_gb']:.1f} GB read from disk per step "
            f"({d['step_disk_s']:.2f} s at {rate})"
        )
        lines.append(
            f"Spill file: up to {d['disk_gb']:.1f} GB of disk in {d['cache_dir'] or '(none)'} ({d['cache_dir_source']})"
        )
    lines.append(f"RAM needed: {r['ram_needed_gb']:g} GB")
    if r["notes"]:
        lines.append("")
        lines.append("Notes:")
        lines.extend(f"  - {n}" for n in r["notes"])
    if r["warnings"]:
        lines.append("")
        lines.append("Warnings:")
        lines.extend(f"  ! {w}" for w in r["warnings"])
    return "\n".join(lines)


def _disk_field(r: dict, key: str) -> str:
    return "" if r["disk_tier"] is None else str(r["disk_tier"][key])


def format_shell(r: dict) -> str:
    q = shlex.quote
    budget = r["pinstream"]["budget_gb"]
    lines = [
        f"export COMFYUI_ARGS={q(shlex.join(r['comfyui_args']))}",
        f"export GPU_MEMORY_MODE={q(r['gpu_memory_mode'])}",
        f"PINSTREAM_MODE={q(r['pinstream']['mode'])}",
        f"PINSTREAM_BUDGET_GB={q('' if budget is None else str(budget))}",
        f"PINSTREAM_RAM_NEEDED_GB={q(str(r['ram_needed_gb']))}",
        f"PINSTREAM_HOST_BUDGET_GB={q(_disk_field(r, 'host_budget_gb'))}",
        f"PINSTREAM_DISK_GB={q(_disk_field(r, 'disk_gb'))}",
        f"PINSTREAM_DISK_READ_GB_PER_STEP={q(_disk_field(r, 'step_read_gb'))}",
        f"COMFYUI_ROOT={q(r['flag_check']['comfyui'] or '')}",
        "COMFYUI_ARGV=(" + " ".join(q(a) for a in r["comfyui_args"]) + ")",
    ]
    return "\n".join(lines)


def _join_comfyui_args(argv: list) -> list:
    """``--comfyui-args VALUE`` -> ``--comfyui-args=VALUE``: argparse would refuse a VALUE
    that starts with '-' ("expected one argument"), and ComfyUI flags always do."""
    out: list = []
    i = 0
    while i < len(argv):
        if argv[i] == "--comfyui-args" and i + 1 < len(argv):
            out.append("--comfyui-args=" + argv[i + 1])
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv=None, *, detect_gpu_fn=None, detect_ram_fn=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    else:
        extra = []
    argv = _join_comfyui_args(argv)
    as_json = "--json" in argv
    try:
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        result = recommend(ns, extra, detect_gpu_fn=detect_gpu_fn, detect_ram_fn=detect_ram_fn)
    except RecommendError as e:
        if as_json:
            print(json.dumps({"error": str(e)}))
        print(f"pinstream recommend: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if ns.json:
        print(json.dumps(result, indent=2))
    elif ns.shell:
        print(format_shell(result))
        for w in result["warnings"]:
            print(f"pinstream recommend: warning: {w}", file=sys.stderr)
    else:
        print(format_text(result))
    return 0
