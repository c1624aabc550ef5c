"""Tests of start.sh: it calls recommend, exports COMFYUI_ARGS / GPU_MEMORY_MODE and
starts ComfyUI (never really started here: COMFYUI_PYTHON records what it was given)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "start.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="start.sh needs bash")

LOW = "--lowvram --cpu-vae --preview-method auto"


def _exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def comfyui(tmp_path) -> Path:
    """A ComfyUI tree whose cli_args.py is shaped like the real one (no --normalvram)."""
    root = tmp_path / "Comfy UI"  # a space in the path on purpose
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "options.py").write_text(
        "args_parsing = False\n\ndef enable_args_parsing(enable=True):\n    global args_parsing\n    args_parsing = enable\n"
    )
    (root / "comfy" / "cli_args.py").write_text(
        "import argparse\nimport comfy.options\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--port', type=int, default=8188)\n"
        "parser.add_argument('--listen', nargs='?', const='0.0.0.0')\n"
        "parser.add_argument('--output-directory', type=str)\n"
        "g = parser.add_mutually_exclusive_group()\n"
        "g.add_argument('--force-fp32', action='store_true')\n"
        "g.add_argument('--force-fp16', action='store_true')\n"
        "parser.add_argument('--cpu-vae', action='store_true')\n"
        "parser.add_argument('--cuda-device', type=int)\n"
        "parser.add_argument('--preview-method', choices=['none', 'auto', 'latent2rgb', 'taesd'])\n"
        "v = parser.add_mutually_exclusive_group()\n"
        "for f in ('--gpu-only', '--highvram', '--lowvram', '--novram', '--cpu'):\n"
        "    v.add_argument(f, action='store_true')\n"
        "args = parser.parse_args() if comfy.options.args_parsing else parser.parse_args([])\n"
    )
    (root / "comfy" / "model_management.py").write_text("")
    (root / "comfyui_version.py").write_text('__version__ = "0.9.0"\n')
    (root / "main.py").write_text("raise SystemExit('main.py is never run by these tests')\n")
    return root


@pytest.fixture
def env(tmp_path):
    """Environment with PYTHON routed to this interpreter and a recording COMFYUI_PYTHON."""
    e = {k: v for k, v in os.environ.items() if k not in ("GPU_TIER", "GPU_MEMORY_MODE", "COMFYUI_PATH", "COMFYUI_DIR")}
    record = tmp_path / "started.json"
    _exe(
        tmp_path / "fake-comfy-python",
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'cwd': os.getcwd(), 'COMFYUI_ARGS': os.environ.get('COMFYUI_ARGS'),"
        f" 'GPU_MEMORY_MODE': os.environ.get('GPU_MEMORY_MODE')}}, open({str(record)!r}, 'w'))\n",
    )
    e["COMFYUI_PYTHON"] = str(tmp_path / "fake-comfy-python")
    e["PYTHON"] = str(_python_for_recommend(tmp_path))
    e["RECORD"] = str(record)
    return e


def _python_for_recommend(tmp_path) -> Path:
    """This interpreter; if `python -m pinstream recommend` is not dispatchable yet
    (pinstream/__main__.py lives in another change), route it to pinstream.recommend."""
    if (ROOT / "pinstream" / "__main__.py").exists():
        return _exe(tmp_path / "py", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    return _exe(
        tmp_path / "py",
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pinstream" ] && [ "$3" = "recommend" ]; then\n'
        f'  shift 3; exec "{sys.executable}" -m pinstream.recommend "$@"\nfi\n'
        f'exec "{sys.executable}" "$@"\n',
    )


def start(args, env, cwd=None):
    return subprocess.run(
        ["bash", str(START), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )


def test_executable():
    assert os.access(START, os.X_OK)
    assert START.read_text().startswith("#!/usr/bin/env bash")


def test_dry_run_prints_command(comfyui, env):
    p = start(["--dry-run", "--comfyui", str(comfyui), "--vram-gb", "8", "--ram-gb", "64"], env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3
    # The printed lines are valid shell: run them with `echo` in place of ComfyUI's python.
    script = "\n".join(lines).replace(env["COMFYUI_PYTHON"], "printf '%s\\n'")
    script += '\nprintf "%s\\n" "$COMFYUI_ARGS" "$GPU_MEMORY_MODE" "$PWD"'
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert words[0] == str(comfyui / "main.py")
    assert words[1:-3] == LOW.split()
    assert words[-3] == LOW
    assert words[-2] == "sequential_cpu_offload"
    assert words[-1] == str(comfyui)
    assert not Path(env["RECORD"]).exists()  # nothing started
    assert "GPU_MEMORY_MODE=sequential_cpu_offload (PinStream mode budget, budget 3.0 GB" in p.stderr


def test_starts_comfyui_with_args_and_exports(comfyui, env):
    env["COMFYUI_DIR"] = str(comfyui)
    p = start(
        [
            "--vram-gb",
            "12",
            "--ram-gb",
            "64",
            "--port",
            "8189",
            "--",
            "--medvram",
            "--output-directory",
            "/tmp/out dir",
        ],
        env,
    )
    assert p.returncode == 0, p.stderr
    got = json.loads(Path(env["RECORD"]).read_text())
    # seed 12-24 GB row: --medvram and --cpu-text-encoder dropped, --force-fp16 left out;
    # the user's --medvram is dropped too, the rest passes with spaces intact.
    assert got["argv"] == [
        str(comfyui / "main.py"),
        "--port",
        "8189",
        "--output-directory",
        "/tmp/out dir",
    ]
    assert got["cwd"] == str(comfyui)
    assert got["COMFYUI_ARGS"] == "--port 8189 --output-directory '/tmp/out dir'"
    assert got["GPU_MEMORY_MODE"] == "sequential_cpu_offload"
    assert "--medvram (your arguments) dropped" in p.stderr
    assert "--cpu-text-encoder (seed table, 12-24 GB row) dropped" in p.stderr


def test_gpu_tier_and_no_gpu(comfyui, env):
    env["GPU_TIER"] = "DATACENTER_80GB"
    p = start(["--dry-run", "--comfyui", str(comfyui), "--ram-gb", "64"], env)
    assert p.returncode == 0, p.stderr
    assert "export GPU_MEMORY_MODE=model_full_load" in p.stdout
    assert p.stdout.splitlines()[-1].endswith("main.py")  # no flags for 80 GB
    del env["GPU_TIER"]
    p = start(["--dry-run", "--comfyui", str(comfyui), "--no-gpu", "--ram-gb", "64"], env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].endswith("main.py --cpu")


def test_model_file_passed_through(comfyui, env, tmp_path):
    p = start(
        [
            "--dry-run",
            "--comfyui",
            str(comfyui),
            "--vram-gb",
            "8",
            "--ram-gb",
            "64",
            "--model",
            str(tmp_path / "no.safetensors"),
        ],
        env,
    )
    assert p.returncode == 2
    assert "no.safetensors: no such file" in p.stderr
    assert "nothing started" in p.stderr


def test_bad_env_stops_before_starting(comfyui, env):
    env["GPU_TIER"] = "CONSUMER_16GB"
    p = start(["--comfyui", str(comfyui), "--ram-gb", "64"], env)
    assert p.returncode == 2
    assert "GPU_TIER='CONSUMER_16GB' is not a known tier" in p.stderr
    assert "Traceback" not in p.stderr
    assert not Path(env["RECORD"]).exists()


def test_needs_a_comfyui(env, tmp_path):
    p = start(["--dry-run", "--vram-gb", "8", "--ram-gb", "64"], env, cwd=tmp_path)
    assert p.returncode == 2
    assert "pass --comfyui DIR or set COMFYUI_DIR" in p.stderr
    p = start(["--dry-run", "--comfyui", str(tmp_path), "--vram-gb", "8", "--ram-gb", "64"], env)
    assert p.returncode == 2
    assert "is not a ComfyUI folder" in p.stderr
    p = start(["--comfyui"], env)
    assert p.returncode == 2 and "--comfyui needs a folder" in p.stderr


def test_help(env):
    p = start(["--help"], env)
    assert p.returncode == 0
    assert "--dry-run" in p.stdout and "COMFYUI_DIR" in p.stdout


def test_default_python_runs_pinstream_module(comfyui, env):
    """PYTHON left out: start.sh runs `python3 -m pinstream recommend` itself."""
    if not (ROOT / "pinstream" / "__main__.py").exists():
        pytest.skip("pinstream/__main__.py (the `python -m pinstream` dispatcher) is not in this checkout yet")
    if shutil.which("python3") is None:
        pytest.skip("no python3 on PATH")
    del env["PYTHON"]
    p = start(["--dry-run", "--comfyui", str(comfyui), "--vram-gb", "24", "--ram-gb", "64"], env)
    assert p.returncode == 0, p.stderr
    assert "export GPU_MEMORY_MODE=sequential_cpu_offload" in p.stdout


def _fake_nvidia_smi(env, tmp_path, body: str) -> None:
    """An nvidia-smi first on PATH (the machine's own, if any, is shadowed)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    _exe(bindir / "nvidia-smi", "#!/bin/sh\n" + body)
    env["PATH"] = str(bindir) + os.pathsep + env.get("PATH", "")
    env.pop("CUDA_VISIBLE_DEVICES", None)


def test_cuda_device_plans_for_that_gpu(comfyui, env, tmp_path):
    # GPU 0: RTX 3060 12 GB; GPU 1: A100 80 GB.  ComfyUI --cuda-device 1 runs on the A100.
    _fake_nvidia_smi(
        env,
        tmp_path,
        'case " $* " in\n'
        "  *\" -i 1 \"*) echo 'NVIDIA A100-SXM4-80GB, 81920, 81000' ;;\n"
        "  *) echo 'NVIDIA GeForce RTX 3060, 12288, 11000' ;;\n"
        "esac\n",
    )
    p = start(["--dry-run", "--comfyui", str(comfyui), "--ram-gb", "128", "--", "--cuda-device", "1"], env)
    assert p.returncode == 0, p.stderr
    assert "export GPU_MEMORY_MODE=model_full_load" in p.stdout
    assert "PinStream mode full_load" in p.stderr
    assert p.stdout.splitlines()[-1].endswith("main.py --cuda-device 1")
    p = start(["--dry-run", "--comfyui", str(comfyui), "--ram-gb", "128"], env)
    assert p.returncode == 0, p.stderr
    assert "export GPU_MEMORY_MODE=sequential_cpu_offload" in p.stdout  # the 3060


def test_failing_nvidia_smi_starts_nothing(comfyui, env, tmp_path):
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("torch sees a GPU here: recommend reads it through torch instead")
    except ImportError:
        pass
    _fake_nvidia_smi(
        env, tmp_path, "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n"
    )
    p = start(["--comfyui", str(comfyui), "--ram-gb", "64"], env)
    assert p.returncode == 2
    assert "nvidia-smi failed" in p.stderr and "--vram-gb N" in p.stderr and "nothing started" in p.stderr
    assert "Traceback" not in p.stderr
    assert not Path(env["RECORD"]).exists()  # never started with --cpu on a GPU machine
    p = start(["--dry-run", "--comfyui", str(comfyui), "--ram-gb", "64", "--vram-gb", "24"], env)
    assert p.returncode == 0, p.stderr


def test_comfyui_args_option(comfyui, env):
    p = start(
        [
            "--dry-run",
            "--comfyui",
            str(comfyui),
            "--vram-gb",
            "24",
            "--ram-gb",
            "64",
            "--comfyui-args",
            "--cpu-vae --port 8190",
        ],
        env,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1].endswith("main.py --cpu-vae --port 8190")
    p = start(
        ["--dry-run", "--comfyui", str(comfyui), "--vram-gb", "24", "--ram-gb", "64", "--comfyui-args", "--port '81"],
        env,
    )
    assert p.returncode == 2 and "No closing quotation" in p.stderr and "Traceback" not in p.stderr
