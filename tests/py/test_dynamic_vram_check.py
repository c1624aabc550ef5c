"""bench/dynamic_vram_check.sh, the GPU machine's Dynamic VRAM check, on the CPU: staging
installs only the wheels whose distributions are missing, bad options are refused, and the
dry run collects the CUDA test module (its cases skip without Dynamic VRAM on CUDA)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "dynamic_vram_check.sh"


def _run(*args, tmp_path, timeout=120):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "SITE": str(tmp_path / "site"),
           "COMFY": str(tmp_path / "comfy")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_stage_picks_only_missing_distributions(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "pinstream_absent_dist-1.0-py3-none-any.whl").write_bytes(b"")
    (stage / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    p = _run("--stage", str(stage), "--dry-run", "--no-run", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "would install pinstream_absent_dist-1.0" in p.stdout
    assert "torch present" in p.stdout and "would install torch" not in p.stdout
    assert "staged" in p.stdout
    assert "would install" in (tmp_path / "out" / "dynamic_vram.log").read_text()


def test_bad_options_are_refused(tmp_path):
    p = _run("--stage", tmp_path=tmp_path)
    assert p.returncode == 2 and "--stage needs a folder" in p.stderr
    p = _run("--fast", tmp_path=tmp_path)
    assert p.returncode == 2 and "unknown option --fast" in p.stderr and "--comfy-suite" in p.stderr
    p = _run("--stage", str(tmp_path / "nowhere"), "--dry-run", tmp_path=tmp_path)
    assert p.returncode == 2 and "no such folder" in p.stdout


def test_dry_run_collects_the_cuda_module(tmp_path):
    p = _run("--dry-run", "--comfy-suite", tmp_path=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "would run tests/comfy with PINSTREAM_COMFY_CUDA=1" in p.stdout
    assert "pytest exit status 0" in p.stdout
    assert "skipped" in p.stdout  # collected; its cases need Dynamic VRAM on CUDA
