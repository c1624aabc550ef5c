#!/usr/bin/env python3
"""Build PinStream's native runtime (pinstream._C) into the package.

Works in two places:
* inside an existing ComfyUI Python environment (ComfyUI-Manager runs this file):
  torch is already there and is never reinstalled or upgraded;
* on a fresh machine: `python install.py --with-deps` installs the requirements
  (torch==2.11.0 when torch is missing) before building.

It configures CMake with LibTorch from torch.utils.cmake_prefix_path, builds
incrementally in ./build, and writes pinstream/_C*.so. Running it again only
rebuilds what changed. On failure it prints the cause and the fix.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH_PIN = "torch==2.11.0"
RUNTIME_REQUIREMENTS = ["numpy", "psutil", "safetensors"]


def say(msg: str) -> None:
    print(f"[pinstream install] {msg}", flush=True)


def fail(msg: str, fix: str) -> None:
    print(f"[pinstream install] ERROR: {msg}\n[pinstream install] fix: {fix}", file=sys.stderr, flush=True)
    sys.exit(1)


def pip_install(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    say("running " + " ".join(cmd))
    if subprocess.call(cmd) != 0:
        fail(f"pip install {' '.join(args)} failed", "check the network access to PyPI and rerun")


def ensure_deps(with_deps: bool) -> None:
    have_torch = importlib.util.find_spec("torch") is not None
    if not have_torch:
        if not with_deps:
            fail(
                "torch is not installed in this Python",
                f"run inside ComfyUI's Python environment, or `python install.py --with-deps` to install {TORCH_PIN}",
            )
        pip_install([TORCH_PIN])
    missing = [r for r in RUNTIME_REQUIREMENTS if importlib.util.find_spec(r) is None]
    if missing:
        if with_deps or os.environ.get("COMFYUI_MANAGER") or True:
            # Small pure runtime deps; never touches torch.
            pip_install(missing)
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None and importlib.util.find_spec(tool) is None:
            pip_install([tool])


def tool_path(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    spec = importlib.util.find_spec(name)
    if spec is not None:  # pip's cmake / ninja wheels
        mod = __import__(name)
        bindir = getattr(mod, "BIN_DIR", None)
        if bindir:
            cand = Path(bindir) / name
            if cand.exists():
                return str(cand)
    fail(f"{name} not found", f"install it (`pip install {name}` or your system package manager)")
    return name


def find_nvcc() -> str | None:
    cands = [shutil.which("nvcc")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(str(Path(os.environ[env]) / "bin" / "nvcc"))
    cands.append("/usr/local/cuda/bin/nvcc")
    for c in cands:
        if c and Path(c).exists():
            return c
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-deps", action="store_true", help=f"install missing requirements ({TORCH_PIN} if torch is missing)")
    ap.add_argument("--cuda", choices=["auto", "on", "off"], default=os.environ.get("PINSTREAM_CUDA", "auto").lower(),
                    help="build the CUDA engine (auto: when nvcc is found)")
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--tests", action="store_true", help="also build the GoogleTest binaries")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--clean", action="store_true", help="remove the build folder first")
    args = ap.parse_args(argv)

    ensure_deps(args.with_deps)
    import torch

    cmake = tool_path("cmake")
    ninja = shutil.which("ninja") or (tool_path("ninja") if importlib.util.find_spec("ninja") else None)
    nvcc = find_nvcc() if args.cuda != "off" else None
    if args.cuda == "on" and nvcc is None:
        fail("--cuda on but nvcc was not found", "install the CUDA toolkit or set CUDA_HOME; or build with --cuda off")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    say(f"python {platform.python_version()} at {sys.executable}")
    say(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cmake prefix {torch.utils.cmake_prefix_path}")
    say(f"C++ compiler: {cxx or 'not found'}")
    say(f"CUDA toolkit: {nvcc or 'not found: building without the CUDA engine (host engine only)'}")
    if cxx is None:
        fail("no C++ compiler found", "install g++ (Debian/Ubuntu: apt-get install g++) or set CXX")

    build = Path(args.build_dir)
    if args.clean and build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    cfg = [
        cmake, "-S", str(ROOT), "-B", str(build),
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        f"-DPINSTREAM_CUDA={'ON' if args.cuda == 'on' else 'OFF' if args.cuda == 'off' or nvcc is None else 'AUTO'}",
        f"-DPINSTREAM_TESTS={'ON' if args.tests else 'OFF'}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    if nvcc:
        cfg.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    if ninja and not (build / "CMakeCache.txt").exists():
        cfg += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    say("configuring: " + " ".join(cfg))
    if subprocess.call(cfg) != 0:
        fail("CMake configuration failed (see above)",
             "check that torch is a complete install (its share/cmake folder), and that the compiler works; "
             "rerun with --clean after fixing")
    bld = [cmake, "--build", str(build), "-j", str(args.jobs)]
    say("building: " + " ".join(bld))
    if subprocess.call(bld) != 0:
        fail("the native build failed (see the compiler errors above)",
             "a mismatched nvcc and torch CUDA version is the usual cause: build with --cuda off, or install the "
             f"CUDA toolkit matching torch's CUDA {torch.version.cuda}")
    built = sorted((ROOT / "pinstream").glob("_C*.so"))
    if not built:
        fail("the build finished but pinstream/_C*.so is missing", "rerun with --clean")
    say(f"built {built[0].relative_to(ROOT)}")
    check = subprocess.run([sys.executable, "-c", "import pinstream._C as c; print(c.cuda_built())"],
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        fail("the extension was built but does not import:\n" + check.stderr.strip()[-2000:],
             "rerun with --clean; if it persists, report the message above")
    say(f"import check passed (CUDA engine compiled in: {check.stdout.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
