"""ComfyUI's flags for ``recommend``: the seed's flags per tier, the flags ComfyUI
does not accept (with their working equivalents), the built-in table of what every
supported release accepts, and the probe that reads the argument parser of the
ComfyUI that will run (in a subprocess: nothing else of ComfyUI is imported).
:mod:`.flag_check` checks flags against these tables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .machine import TIER_BELOW, TIER_CPU

if TYPE_CHECKING:
    from .flag_check import FlagCheck

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


DYNAMIC_VRAM_OFF_FLAGS = ("--disable-dynamic-vram", "--highvram", "--gpu-only", "--novram", "--cpu")


def dynamic_vram_note(flags: FlagCheck, machine) -> str | None:
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
    return (
        "this ComfyUI runs the models of its own loaders under Dynamic VRAM (NVIDIA): the PinStream "
        "loaders opt out for the models they manage, and 'PinStream Offload' on a core loader's model "
        "manages the non-dynamic copy ComfyUI rebuilds; add --disable-dynamic-vram to turn it off for all"
    )
