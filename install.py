#!/usr/bin/env python3
"""Put PinStream's native runtime (pinstream/_C*.so) into this folder, for the installed torch.

ComfyUI-Manager runs this file; it never installs, upgrades or replaces torch (only
`--with-deps` installs torch==2.11.0, and only where torch is missing). In order:

1. a prebuilt wheel that matches this Python, torch and CUDA: the one named by --wheel or
   PINSTREAM_WHEEL (a .whl file or a folder of them), else one in ./dist or ./wheels, else
   a pinstream wheel installed in this environment (pip install pinstream-...whl). Its _C
   is copied into ./pinstream and imported as a check. A wheel matches when its version's
   label names this torch and CUDA (0.1.0+torch2.11.0.cu130 for torch 2.11.0+cu130), its
   tags this Python and platform, and its pinstream version this folder's. An earlier
   source build in ./build (a developer's checkout) is rebuilt instead unless a wheel is
   named explicitly; --from-source skips wheels.
2. else a build from source: CMake with LibTorch from torch.utils.cmake_prefix_path,
   incremental in ./build, the CUDA engine when nvcc is found. `--tests` (CI) always builds
   from source and adds the GoogleTest binaries.
3. else it names what is missing (C++ compiler, CMake, nvcc) and how to get it, and says
   that until then the pack runs as a pass-through: its nodes load and change nothing.

Wheels are built with `bash scripts/build_wheel.sh` (docs/wheel.md).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH_PIN = "torch==2.11.0"
RUNTIME_REQUIREMENTS = ["numpy", "psutil", "safetensors"]
WHEEL_FOLDERS = [ROOT / "dist", ROOT / "wheels"]
PASS_THROUGH = ("UNTIL pinstream._C IS INSTALLED, PINSTREAM RUNS AS A PASS-THROUGH: its nodes load in ComfyUI but "
                "leave every model as it is (no offloading, no streaming) and say so in their output and log.")


def say(msg: str) -> None:
    print(f"[pinstream install] {msg}", flush=True)


def fail(msg: str, fix: str) -> None:
    print(f"[pinstream install] ERROR: {msg}\n[pinstream install] fix: {fix}", file=sys.stderr, flush=True)
    sys.exit(1)


def loud(lines: list[str]) -> None:
    bar = "!" * 100
    print("\n".join([bar, *(f"!! {line}" for line in lines), bar]), file=sys.stderr, flush=True)


def pip_install(args: list[str], required: bool = True) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    say("running " + " ".join(cmd))
    if subprocess.call(cmd) == 0:
        return True
    if required:
        fail(f"pip install {' '.join(args)} failed", "check the network access to PyPI and rerun")
    return False


def ensure_runtime_deps(with_deps: bool) -> None:
    if importlib.util.find_spec("torch") is None:
        if not with_deps:
            fail(
                "torch is not installed in this Python",
                f"run inside ComfyUI's Python environment, or `python install.py --with-deps` to install {TORCH_PIN}",
            )
        pip_install([TORCH_PIN])
    missing = [r for r in RUNTIME_REQUIREMENTS if importlib.util.find_spec(r) is None]
    if missing:  # small pure runtime deps; never touches torch
        pip_install(missing)


def build_meta():
    """build_support/pinstream_build_meta.py: the version label rules shared with the wheel build."""
    spec = importlib.util.spec_from_file_location("pinstream_build_meta", ROOT / "build_support" / "pinstream_build_meta.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- prebuilt wheels ----------------------------------------------------------------


def supported_tags() -> list[str]:
    """The wheel tags this Python accepts, the most specific first."""
    for mod in ("packaging.tags", "pip._vendor.packaging.tags"):
        try:
            tags = importlib.import_module(mod)
            return [str(t) for t in tags.sys_tags()]
        except ImportError:
            continue
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    return [f"{py}-{py}-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"]


class Candidate:
    """A pinstream._C that could serve this folder: from a wheel file or an installed distribution."""

    def __init__(self, origin: str, version: str, tags: list[str], extract):
        self.origin, self.version, self.tags, self.extract = origin, version, tags, extract

    def mismatch(self, want_version: str, sys_tags: list[str]) -> str | None:
        if self.version != want_version:
            return f"it is pinstream {self.version}, this folder and torch need {want_version}"
        if not set(self.tags) & set(sys_tags):
            return f"it is for {', '.join(self.tags)}, not this Python and platform ({sys_tags[0]})"
        return None


def wheel_candidates(paths: list[Path]) -> list[Candidate]:
    out = []
    for path in paths:
        files = sorted(path.glob("pinstream-*.whl"), key=lambda p: -p.stat().st_mtime) if path.is_dir() else [path]
        for whl in files:
            parts = whl.name[:-4].split("-")
            if len(parts) not in (5, 6) or parts[0] != "pinstream":
                continue
            py, abi, plats = parts[-3:]
            tags = [f"{p}-{a}-{pl}" for p in py.split(".") for a in abi.split(".") for pl in plats.split(".")]

            def extract(dest: Path, whl=whl) -> None:
                with zipfile.ZipFile(whl) as zf:
                    names = [n for n in zf.namelist() if re.fullmatch(r"pinstream/_C[^/]*\.so", n)]
                    if not names:
                        raise RuntimeError(f"{whl.name} holds no pinstream/_C*.so")
                    dest.write_bytes(zf.read(names[0]))

            out.append(Candidate(f"wheel {whl}", parts[1], tags, extract))
    return out


def installed_candidate() -> Candidate | None:
    from importlib import metadata

    try:
        dist = metadata.distribution("pinstream")
    except metadata.PackageNotFoundError:
        return None
    so = [f for f in (dist.files or []) if re.fullmatch(r"pinstream/_C[^/]*\.so", str(f).replace(os.sep, "/"))]
    if not so:
        return None
    src = Path(dist.locate_file(so[0])).resolve()
    if not src.exists() or src.parent == (ROOT / "pinstream").resolve():
        return None
    wheel_file = (dist.read_text("WHEEL") or "").splitlines()
    tags = [line.split(":", 1)[1].strip() for line in wheel_file if line.startswith("Tag:")]
    return Candidate(f"installed distribution pinstream {dist.version} ({src})", dist.version, tags,
                     lambda dest, src=src: shutil.copyfile(src, dest))


def import_check(require_cuda: bool) -> tuple[bool, str]:
    """Import ./pinstream/_C in a fresh Python (after torch, as the pack does)."""
    check = subprocess.run([sys.executable, "-c", "import torch, pinstream._C as c; print(c.cuda_built())"],
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        return False, "it does not import: " + check.stderr.strip()[-1500:]
    cuda = check.stdout.strip() == "True"
    if require_cuda and not cuda:
        return False, "it was built without the CUDA engine"
    return True, f"CUDA engine compiled in: {cuda}"


def try_prebuilt(args, torch, explicit: list[Path], require_cuda: bool) -> bool:
    meta = build_meta()
    want = f"{meta.pinstream_version()}+{meta.torch_label(torch.__version__, torch.version.cuda)}"
    cands = wheel_candidates(explicit or [d for d in WHEEL_FOLDERS if d.is_dir()])
    if not explicit:
        inst = installed_candidate()
        if inst is not None:
            cands.append(inst)
    if explicit and not cands:
        say(f"no pinstream-*.whl at {', '.join(map(str, explicit))}")
    tags = supported_tags()
    ext = importlib.machinery.EXTENSION_SUFFIXES[0]
    dest = ROOT / "pinstream" / f"_C{ext}"
    for cand in cands:
        why = cand.mismatch(want, tags)
        if why:
            say(f"not using {cand.origin}: {why}")
            continue
        say(f"using {cand.origin}: matches torch {torch.__version__} (CUDA {torch.version.cuda})")
        backup = dest.with_name(dest.name + ".previous")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".C-", suffix=".tmp")
        os.close(fd)
        try:
            cand.extract(Path(tmp))
            os.chmod(tmp, 0o755)
        except (OSError, RuntimeError, zipfile.BadZipFile) as e:
            Path(tmp).unlink(missing_ok=True)
            say(f"not using {cand.origin}: {e}")
            continue
        if dest.exists():
            os.replace(dest, backup)
        os.replace(tmp, dest)
        ok, detail = import_check(require_cuda)
        if ok:
            backup.unlink(missing_ok=True)
            say(f"installed {dest.relative_to(ROOT)} from {cand.origin}; import check passed ({detail})")
            return True
        dest.unlink(missing_ok=True)
        if backup.exists():
            os.replace(backup, dest)
        say(f"not using {cand.origin}: {detail}")
    return False


# ---- build from source --------------------------------------------------------------


def tool_path(name: str) -> str | None:
    path = shutil.which(name)
    if path:
        return path
    if importlib.util.find_spec(name) is not None:  # pip's cmake / ninja wheels
        mod = __import__(name)
        for attr in ("CMAKE_BIN_DIR", "BIN_DIR"):
            bindir = getattr(mod, attr, None)
            if bindir and (Path(bindir) / name).exists():
                return str(Path(bindir) / name)
    return None


def find_nvcc() -> str | None:
    cands = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            cands.append(str(Path(os.environ[env]) / "bin" / "nvcc"))
    cands.append("/usr/local/cuda/bin/nvcc")
    for c in cands:
        if c and Path(c).exists() and works(c):
            return c
    return None


def works(program: str) -> bool:
    """`program --version` runs and succeeds (CXX=false or a broken path does not)."""
    try:
        return subprocess.run([program, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_cxx() -> str | None:
    env = os.environ.get("CXX")
    if env:
        prog = shutil.which(env.split()[0]) or env.split()[0]
        return prog if works(prog) else None
    for name in ("c++", "g++", "clang++"):
        prog = shutil.which(name)
        if prog and works(prog):
            return prog
    return None


def cannot_build(missing: list[tuple[str, str]], torch) -> None:
    meta = build_meta()
    label = f"{meta.pinstream_version()}+{meta.torch_label(torch.__version__, torch.version.cuda)}"
    py = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    loud([
        "PinStream cannot build its native runtime (pinstream._C) here. Missing:",
        *(f"  - {what}: {how}" for what, how in missing),
        "Or use a prebuilt wheel instead of building: on a machine with the tools, run `bash scripts/build_wheel.sh`",
        f"  with the same torch {torch.__version__} and Python {platform.python_version()}, copy the wheel",
        f"  (pinstream-{label}-{py}-{py}-linux_{platform.machine()}.whl) here, and run",
        "  `python install.py --wheel /path/to/the.whl` (or put it in ./dist and run `python install.py`).",
        PASS_THROUGH,
    ])
    sys.exit(1)


def build_from_source(args, torch) -> int:
    cmake = tool_path("cmake")
    if cmake is None and pip_install(["cmake>=3.25"], required=False):
        cmake = tool_path("cmake")
    ninja = tool_path("ninja")
    if ninja is None and pip_install(["ninja"], required=False):
        ninja = tool_path("ninja")
    cxx = find_cxx()
    nvcc = find_nvcc() if args.cuda != "off" else None
    say(f"C++ compiler: {cxx or 'not found'}")
    say(f"CMake: {cmake or 'not found'}")
    say(f"CUDA toolkit: {nvcc or 'nvcc not found'}")
    missing = []
    if cxx is None:
        bad = f" (CXX={os.environ['CXX']} does not run)" if os.environ.get("CXX") else ""
        missing.append((f"a C++17 compiler{bad}", "Debian/Ubuntu: `apt-get install g++`; Fedora: `dnf install gcc-c++`; "
                                                  "or set CXX to one"))
    if cmake is None:
        missing.append(("CMake 3.25 or newer", "`pip install cmake` or Debian/Ubuntu: `apt-get install cmake`"))
    cuda_fix = (f"install the CUDA toolkit {torch.version.cuda} (torch's CUDA; https://developer.nvidia.com/cuda-downloads, "
                f"or cuda-toolkit-{str(torch.version.cuda).replace('.', '-')} from NVIDIA's apt repository) and set "
                "CUDA_HOME or put nvcc on PATH")
    if args.cuda == "on" and nvcc is None:
        missing.append(("nvcc (asked for by --cuda on)", cuda_fix))
    if missing and nvcc is None and args.cuda == "auto" and torch.version.cuda:
        missing.append(("nvcc, for the CUDA engine (without it a build has the host engine only)", cuda_fix))
    if missing:
        cannot_build(missing, torch)
    if nvcc is None and args.cuda == "auto" and torch.version.cuda:
        loud([f"nvcc was not found: building WITHOUT the CUDA engine although torch {torch.__version__} has CUDA.",
              "PinStream then streams through the host engine only, which does not use the GPU's copy engine.",
              f"To get the CUDA engine: {cuda_fix}; then rerun `python install.py`.",
              "Or use a prebuilt wheel (it carries the CUDA engine): see `python install.py --help`."])

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
        f"-DPINSTREAM_PYTHON_OUTPUT_DIR={ROOT / 'pinstream'}",
        "-DCMAKE_BUILD_TYPE=Release",
        "-USKBUILD*",  # a plain CMake build, also where a wheel build (scripts/build_wheel.sh) shared this folder
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
    built = ROOT / "pinstream" / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    if not built.exists():
        fail(f"the build finished but {built.relative_to(ROOT)} is missing", "rerun with --clean")
    say(f"built {built.relative_to(ROOT)}")
    ok, detail = import_check(require_cuda=False)
    if not ok:
        fail(f"the extension was built but {detail}", "rerun with --clean; if it persists, report the message above")
    say(f"import check passed ({detail})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-deps", action="store_true", help=f"install missing requirements ({TORCH_PIN} if torch is missing)")
    ap.add_argument("--cuda", choices=["auto", "on", "off"], default=os.environ.get("PINSTREAM_CUDA", "auto").lower(),
                    help="the CUDA engine: auto (built when nvcc is found; a wheel must have it when torch has CUDA), "
                         "on (required), off (a source build without it)")
    ap.add_argument("--wheel", action="append", type=Path, default=[],
                    help="a pinstream .whl, or a folder of them, to take pinstream._C from (repeatable; also "
                         "PINSTREAM_WHEEL, colon-separated)")
    ap.add_argument("--from-source", action="store_true", help="build from source even when a matching wheel exists")
    ap.add_argument("--build-dir", default=str(ROOT / "build"))
    ap.add_argument("--tests", action="store_true", help="build from source, with the GoogleTest binaries")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--clean", action="store_true", help="remove the build folder first")
    args = ap.parse_args(argv)

    ensure_runtime_deps(args.with_deps)
    import torch

    say(f"python {platform.python_version()} at {sys.executable}")
    say(f"torch {torch.__version__} (CUDA {torch.version.cuda}) at {Path(torch.__file__).parent}")
    explicit = list(args.wheel) + [Path(p) for p in os.environ.get("PINSTREAM_WHEEL", "").split(os.pathsep) if p]
    for p in explicit:
        if not p.exists():
            fail(f"the wheel {p} does not exist", "give the path of a pinstream-*.whl file or of a folder holding one")
    require_cuda = args.cuda == "on" or (args.cuda == "auto" and torch.version.cuda is not None)
    if args.tests or args.from_source:
        say("building from source (" + ("--tests" if args.tests else "--from-source") + ")")
    elif not explicit and (Path(args.build_dir) / "CMakeCache.txt").exists():
        say(f"an earlier source build is in {args.build_dir}: rebuilding it (only what changed); "
            "--wheel uses a wheel instead")
    elif try_prebuilt(args, torch, explicit, require_cuda):
        return 0
    else:
        if explicit:
            loud([f"none of {', '.join(map(str, explicit))} matches this Python, torch and CUDA (reasons above):",
                  "building from source instead."])
        else:
            say("no matching prebuilt wheel (./dist, ./wheels, or installed): building from source")
    return build_from_source(args, torch)


if __name__ == "__main__":
    sys.exit(main())
