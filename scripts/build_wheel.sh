#!/usr/bin/env bash
# Builds PinStream's wheel (pinstream + comfy_nodes + the compiled pinstream._C with the CUDA
# engine) for the torch installed in this Python, with scikit-build-core over CMakeLists.txt.
#
#   bash scripts/build_wheel.sh [--dist DIR] [--build-dir DIR] [--cuda-archs LIST] [--jobs N]
#
#   --dist DIR         where the wheel goes (default dist/)
#   --build-dir DIR    CMake build folder, kept between runs so a rebuild compiles only what
#                      changed (default build-wheel/; CI passes build/ to reuse the objects
#                      install.py compiled)
#   --cuda-archs LIST  CMAKE_CUDA_ARCHITECTURES (default: CMakeLists.txt's list, sm_75 to
#                      sm_120 plus PTX of 120)
#   --jobs N           parallel compile jobs (default: the number of cores)
#
# Environment: PYTHON (default python3) is the Python whose torch the wheel is built against
# and pinned to (the wheel's version is e.g. 0.1.0+torch2.11.0.cu130 and it requires
# torch==2.11.0); NVCC or CUDACXX names nvcc (default: `nvcc` on PATH, then
# $CUDA_HOME/bin/nvcc, /usr/local/cuda/bin/nvcc). For another torch or CUDA see docs/wheel.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dist=dist
build_dir=build-wheel
archs=""
jobs=$(nproc 2>/dev/null || echo 2)
while (( $# )); do
  case $1 in
    --dist) dist=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --cuda-archs) archs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "[build_wheel] unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "[build_wheel] $*"; }
die() { echo "[build_wheel] ERROR: $1" >&2; echo "[build_wheel] fix: $2" >&2; exit 1; }

torch_info=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none")' 2>/dev/null) \
  || die "$PY cannot import torch; the wheel is built against the installed torch" \
         "install the torch the wheel is for (pip install torch==2.11.0), or set PYTHON to a Python that has it"
read -r torch_version torch_cuda <<<"$torch_info"
[[ $torch_cuda != none ]] \
  || die "torch $torch_version is a CPU-only build; the wheel carries the CUDA engine" \
         "install a CUDA build of torch (e.g. pip install torch==2.11.0, CUDA 13.0 on Linux)"
"$PY" -c 'import scikit_build_core' 2>/dev/null \
  || die "scikit-build-core is not installed in $PY" "$PY -m pip install 'scikit-build-core>=1.1.2'"
for tool in cmake ninja; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH" "$PY -m pip install $tool (or apt-get install ${tool/ninja/ninja-build})"
done
c_compiler=${CXX:-$(command -v c++ || command -v g++ || true)}
[[ -n $c_compiler ]] || die "no C++ compiler" "apt-get install g++ (or set CXX)"

nvcc=${NVCC:-${CUDACXX:-}}
if [[ -z $nvcc ]]; then
  nvcc=$(command -v nvcc || true)
  [[ -z $nvcc && -n ${CUDA_HOME:-} && -x $CUDA_HOME/bin/nvcc ]] && nvcc=$CUDA_HOME/bin/nvcc
  [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
fi
[[ -n $nvcc && -x $nvcc ]] \
  || die "nvcc (the CUDA toolkit's compiler) was not found" \
         "install CUDA toolkit $torch_cuda (the CUDA of torch $torch_version: https://developer.nvidia.com/cuda-downloads, or Debian/Ubuntu's cuda-toolkit-${torch_cuda/./-} from NVIDIA's apt repository), or set NVCC=/path/to/nvcc"
nvcc_cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
[[ ${nvcc_cuda%%.*} == "${torch_cuda%%.*}" ]] \
  || die "nvcc is CUDA $nvcc_cuda but torch $torch_version is built for CUDA $torch_cuda" \
         "use the CUDA $torch_cuda toolkit (NVCC=/usr/local/cuda-$torch_cuda/bin/nvcc), or a torch built for CUDA $nvcc_cuda"

say "torch $torch_version (CUDA $torch_cuda) from $PY; nvcc $nvcc (CUDA $nvcc_cuda); build folder $build_dir; $jobs jobs"
settings=(-C "build-dir=$build_dir" -C cmake.define.PINSTREAM_CUDA=ON -C "cmake.define.CMAKE_CUDA_COMPILER=$nvcc")
[[ -n $archs ]] && settings+=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$archs")
mkdir -p "$dist"
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$PY" -m pip wheel --no-build-isolation --no-deps --disable-pip-version-check -v \
  -w "$dist" "${settings[@]}" . 2>&1 | grep -v -E '^ *(Created temporary directory|Looking up|Skipping link)' || {
  die "the wheel build failed (see the messages above)" \
      "the first error above names the cause; a build folder from another torch or CUDA is cleared with rm -rf $build_dir"
}
label=$("$PY" -c 'import sys; sys.path.insert(0, "build_support"); import pinstream_build_meta as m, torch
print(m.pinstream_version() + "+" + m.torch_label(torch.__version__, torch.version.cuda))')
wheel=$(ls -t "$dist"/pinstream-"$label"-*.whl 2>/dev/null | head -1)
[[ -n $wheel ]] || die "pip finished but no pinstream-$label-*.whl is in $dist" "rerun; if it persists, report it"
say "built $wheel in $(( $(date +%s) - t0 )) s: $(du -h "$wheel" | cut -f1) ($(stat -c %s "$wheel") bytes)"

# cuobjdump: the toolkit's, else the copy triton ships (torch's CUDA wheels bring triton).
cuobjdump=$(command -v cuobjdump || true)
[[ -z $cuobjdump && -x $(dirname "$nvcc")/cuobjdump ]] && cuobjdump=$(dirname "$nvcc")/cuobjdump
if [[ -z $cuobjdump ]]; then
  cuobjdump=$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)
  [[ -x $cuobjdump ]] || cuobjdump=""
fi
if [[ -z $cuobjdump ]]; then
  say "cuobjdump not found: the CUDA architectures in the wheel are not listed"
else
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-wheel.XXXXXX")
  "$PY" -m zipfile -e "$wheel" "$tmp"
  so=$(ls "$tmp"/pinstream/_C*.so)
  say "CUDA code in $(basename "$so"): $("$cuobjdump" --list-elf "$so" | sed -n 's/.*\.\(sm_[0-9a-z]*\)\.cubin$/\1/p' | sort -u | tr '\n' ' ')"
  say "PTX in $(basename "$so"): $("$cuobjdump" --list-ptx "$so" | sed -n 's/.*\.\(sm_[0-9a-z]*\)\.ptx$/\1/p' | sort -u | tr '\n' ' ')"
  rm -rf "$tmp"
fi
