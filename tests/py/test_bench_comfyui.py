"""The ComfyUI prompt benchmark's dry run (`python -m pinstream bench comfyui --dry-run`, issue 19's
points 2-4): real prompts through ComfyUI's own executor on the CPU with a tiny Wan, one subprocess
per configuration, and results.json in the shape the GPU run writes, with its summary and plot.

Needs the ComfyUI 0.30.0 tree CI unpacks (build-comfyui-0.30.0, scripts/setup.sh) or COMFYUI_PATH.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = {"pinstream", "comfyui_dynamic", "comfyui_legacy"}


def _comfy_root():
    env = os.environ.get("COMFYUI_PATH")
    root = Path(env) if env else ROOT / "build-comfyui-0.30.0"
    return root if (root / "comfy" / "cli_args.py").is_file() else None


def _native_ok() -> bool:
    try:
        from pinstream import _C  # noqa: F401

        return True
    except ImportError:
        return False


pytestmark = [
    pytest.mark.skipif(not _native_ok(), reason="pinstream._C is not built (python install.py)"),
    pytest.mark.skipif(_comfy_root() is None, reason="no ComfyUI tree (build-comfyui-0.30.0 or COMFYUI_PATH)"),
    pytest.mark.skipif(bool(os.environ.get("PINSTREAM_GPU_CHECK")),
                       reason="the GPU machine runs the real benchmark instead"),
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("comfyui-bench")
    models = tmp_path_factory.mktemp("comfyui-bench-models")
    env = dict(os.environ, PYTHONUNBUFFERED="1", COMFYUI_PATH=str(_comfy_root()))
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pinstream", "bench", "comfyui", "--dry-run", "--out", str(out),
         "--models-dir", str(models)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_results_have_the_issue_schema(dry_run):
    out, r = dry_run
    for key in ("device", "driver", "torch", "comfyui_version", "aimdo_version"):
        assert isinstance(r[key], str) and r[key], key
    assert r["dry_run"] is True and r["comfyui_version"] != "unknown"
    assert not r["errors"], r["errors"]
    assert r["runs"] and r["switch"]
    for run in r["runs"]:
        assert run["system"] in SYSTEMS, run
        assert isinstance(run["mode"], str) and run["mode"]
        assert isinstance(run["seq_len"], int) and run["seq_len"] > 0
        for key in ("vram_limit_gb", "step_s", "first_prompt_s", "second_prompt_s", "host_rss_gb"):
            assert _num(run[key]) and run[key] > 0, (key, run)
        assert _num(run["peak_vram_gb"]) and run["peak_vram_gb"] >= 0
        assert isinstance(run["latent_equal_to_core"], bool), run
        assert len(run["steps_s"]) == 3, run  # a warm-up step and the two timed ones
    for s in r["switch"]:
        assert s["system"] in SYSTEMS and _num(s["vram_limit_gb"]), s
        assert _num(s["switch_s"]) and s["switch_s"] > 0, s
    # what comes back from a device call: at most 8 files
    names = sorted(p.name for p in out.iterdir())
    assert names == ["comfyui_prompt.log", "comfyui_prompt.png", "results.json", "summary.txt"], names
    assert (out / "comfyui_prompt.png").stat().st_size > 1000


def test_every_configuration_ran_and_equals_core(dry_run):
    _out, r = dry_run
    limits = sorted({run["vram_limit_gb"] for run in r["runs"]})
    assert len(limits) == 2
    lens = sorted({run["seq_len"] for run in r["runs"]})
    assert len(lens) == 2
    configs = {(run["system"], run["mode"]) for run in r["runs"]}
    assert configs == {("comfyui_dynamic", "default"), ("comfyui_legacy", "legacy"), ("pinstream", "budget"),
                       ("pinstream", "sequential"), ("pinstream", "auto")}, configs
    for system, mode in configs:
        for limit in limits:
            assert any(x["system"] == system and x["mode"] == mode and x["vram_limit_gb"] == limit
                       for x in r["runs"]), (system, mode, limit)
    # the CPU runs are exact: every configuration's latents equal core's bit for bit
    assert all(run["latent_equal_to_core"] for run in r["runs"]), [
        (x["system"], x["mode"], x["seq_len"]) for x in r["runs"] if not x["latent_equal_to_core"]]
    assert {(s["system"], s["mode"]) for s in r["switch"]} == configs
    assert all(s["latent_equal_to_core"] for s in r["switch"])
    # PinStream really managed its models (the loader's plan names the mode), and each child
    # ran with its own ComfyUI command line
    for run in r["runs"]:
        if run["system"] == "pinstream":
            assert run["plan"] and run["mode"] in run["plan"], run
    legacy = [c for c in r["children"] if c["label"].startswith("comfyui_legacy")]
    assert legacy and all("--disable-dynamic-vram" in c["comfy_args"] for c in legacy)
    assert all("--disable-dynamic-vram" not in c["comfy_args"] for c in r["children"] if c not in legacy)
    summary = (_out / "summary.txt").read_text()
    assert "expert switch" in summary and "comfyui_legacy" in summary
