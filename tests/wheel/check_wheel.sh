#!/usr/bin/env bash
# The wheel test (scripts/test.sh runs it): builds the wheel with scripts/build_wheel.sh,
# installs it into a fresh virtual environment where no compiler, CMake or nvcc can be
# found (PATH holds only the venv's bin; CC, CXX and CUDACXX are `false`), then imports
# pinstream._C from the installed wheel, checks the CUDA engine is compiled in, and runs
# the demo's tiny preset from it.
#
#   bash tests/wheel/check_wheel.sh [--build-dir DIR] [--wheel FILE]
#
#   --build-dir DIR  CMake build folder for the wheel build (default build-wheel/; scripts/test.sh
#                    passes build/, whose objects install.py compiled, so nothing compiles twice)
#   --wheel FILE     test this wheel instead of building one
#
# The venv is made with --system-site-packages: torch (2 GB) and the small runtime
# requirements come from the system Python, and pip installs the wheel with --no-index
# (nothing downloaded, nothing built). pinstream itself is not installed system-wide; the
# test checks that what it imports is the venv's copy.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
build_dir=build-wheel
wheel=""
while (( $# )); do
  case $1 in
    --build-dir) build_dir=$2; shift 2 ;;
    --wheel) wheel=$2; shift 2 ;;
    *) echo "[check_wheel] unknown option $1" >&2; exit 2 ;;
  esac
done
say() { echo "[check_wheel] $*"; }
die() { echo "[check_wheel] FAILED: $*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-check-wheel.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
if [[ -z $wheel ]]; then
  bash scripts/build_wheel.sh --build-dir "$build_dir" --dist "$tmp/dist" --jobs 2
  wheel=$(ls "$tmp"/dist/pinstream-*.whl)
fi
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
t1=$(date +%s)

venv=$tmp/venv
"$PY" -m venv --system-site-packages "$venv"
# The environment the install and the demo run in: nothing inherited but HOME and the locale.
clean=(env -i HOME="$HOME" LANG=C.UTF-8 TMPDIR="$tmp" PATH="$venv/bin" CC=false CXX=false CUDACXX=false
       PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1)
say "PATH=$venv/bin (venv made with --system-site-packages from $("$PY" -c 'import sys; print(sys.executable)')); CC=false CXX=false CUDACXX=false"
for tool in cc c++ gcc g++ clang cmake ninja make nvcc; do
  if "${clean[@]}" sh -c "command -v $tool" >/dev/null 2>&1; then die "$tool is reachable from the test's PATH"; fi
done
say "no cc, c++, gcc, g++, clang, cmake, ninja, make or nvcc on PATH"
if (cd "$tmp" && "${clean[@]}" python -c 'import pinstream' 2>/dev/null); then
  die "pinstream is importable before the wheel is installed (from the system Python?); the test would prove nothing"
fi

say "pip install --no-index --only-binary=:all: $(basename "$wheel")"
(cd "$tmp" && "${clean[@]}" python -m pip install --no-index --only-binary=:all: "$wheel") >"$tmp/pip.log" 2>&1 \
  || { cat "$tmp/pip.log"; die "the wheel did not install without a compiler (see pip's message above)"; }
grep -v '^Requirement already satisfied' "$tmp/pip.log" || true
say "($(grep -c '^Requirement already satisfied' "$tmp/pip.log") requirements, torch's included, already satisfied by the system site-packages)"

say "import pinstream._C from the installed wheel"
(cd "$tmp" && "${clean[@]}" python - "$venv") <<'EOF' || die "pinstream._C from the wheel does not import or lacks the CUDA engine"
import os
import sys
from importlib.metadata import version

import pinstream._C as C

venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(C.__file__)
print(f"pinstream {version('pinstream')}: {where}")
assert where.startswith(venv + os.sep), f"pinstream._C came from {where}, not from the venv {venv}"
print(f"CUDA engine compiled in: {C.cuda_built()}")
assert C.cuda_built(), "the wheel's pinstream._C was built without the CUDA engine"
import torch

print(f"torch {torch.__version__}, GPU available: {torch.cuda.is_available()}")
EOF

say "python -m pinstream demo --preset tiny (from the installed wheel)"
(cd "$tmp" && "${clean[@]}" python -m pinstream demo --preset tiny) || die "the demo's tiny preset failed from the installed wheel"
t2=$(date +%s)
say "passed: wheel $(basename "$wheel"), $(stat -c %s "$wheel") bytes; build $(( t1 - t0 )) s, install and run $(( t2 - t1 )) s"
