#!/usr/bin/env bash
# Every test PinStream has, from a fresh machine: installs what it needs, builds
# (the CUDA engine is compiled by nvcc when the toolkit is present), then runs
#   0. the linters (ruff, clang-format --dry-run)
#   1. GoogleTest (core, host engine, the torch layer; CUDA tests skip without a GPU)
#   2. the core and host engine under ASan+UBSan, then under TSan
#   3. pytest (binding, engine, ComfyUI nodes against real ComfyUI 0.3.75, recommend, start.sh),
#      then the ComfyUI node tests again against ComfyUI 0.30.0 (Dynamic VRAM era)
#   4. the browser test: a real ComfyUI server and web UI, headless Chromium (tests/ui)
#   5. the GPU check's dry run (host engine, tiny sizes), and the ComfyUI prompt benchmark's
#      (bench/comfyui_prompt.py through dynamic_vram_check.sh --bench-only, two configurations),
#      and the disk benchmark's (bench disk --quick)
#   6. the wheel: built from build/'s objects, installed into a fresh venv with no compiler,
#      CMake or nvcc, pinstream._C imported from it with the CUDA engine, the tiny demo run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PINSTREAM_SEED=${PINSTREAM_SEED:-$(date +%Y%m%d)}
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }

step "setup and build"
bash scripts/setup.sh --ci

step "lint: ruff, clang-format"
"$PY" -m ruff check .
git ls-files 'csrc/*.h' 'csrc/*.cc' 'csrc/*.cpp' 'csrc/*.cu' 'tests/cpp/*.h' 'tests/cpp/*.cc' 'tests/cpp/*.cu' \
  | xargs clang-format --dry-run --Werror

step "GoogleTest (Release build; seed $PINSTREAM_SEED)"
ctest --test-dir build --output-on-failure -j2

for san in address thread; do
  step "sanitizer build: $san"
  cmake -S . -B "build-$san" -G Ninja -DPINSTREAM_PYTHON=OFF -DPINSTREAM_CUDA=OFF \
        -DPINSTREAM_SANITIZE=$san -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "build-$san" -j2
  step "GoogleTest under $san sanitizer"
  cases=2000; [[ $san == thread ]] && cases=1000
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 PINSTREAM_CASES=$cases \
    ctest --test-dir "build-$san" --output-on-failure -j2
done

# Python tests that drive the core and host engine, against an extension built
# with sanitizer $1, the runtime preloaded (libstdc++ too, so that the sanitizer finds
# the real __cxa_throw: python is a C program). Extra VAR=value arguments go to pytest's
# environment.
sanitized_pytest() {
  local san=$1 lib=$2; shift 2
  local pkg="$PWD/build-py$san/pkg"
  mkdir -p "$pkg/pinstream"
  for f in pinstream/*.py; do ln -sf "$PWD/$f" "$pkg/pinstream/"; done
  for f in pinstream/*/__init__.py; do ln -sfn "$PWD/${f%/__init__.py}" "$pkg/${f%/__init__.py}"; done
  cmake -S . -B "build-py$san" -G Ninja -DPINSTREAM_SANITIZE=$san -DPINSTREAM_CUDA=OFF -DPINSTREAM_TESTS=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINSTREAM_PYTHON_OUTPUT_DIR="$pkg/pinstream" \
        -DCMAKE_PREFIX_PATH="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
  cmake --build "build-py$san" -j2
  env "$@" PINSTREAM_SANITIZER=$san PINSTREAM_TEST_PACKAGE_ROOT="$pkg" \
      LD_PRELOAD="$(gcc -print-file-name=$lib) $(gcc -print-file-name=libstdc++.so.6)" \
    "$PY" -m pytest tests/py/test_native.py tests/py/test_hardening.py tests/py/test_engine.py \
      tests/py/test_disk_tier.py -q -p no:cacheprovider
}

step "Python tests driving the core and host engine under ASan+UBSan"
sanitized_pytest address libasan.so \
  ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0:alloc_dealloc_mismatch=0:halt_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

step "the same Python tests under TSan"
# torch's OpenMP pool is not instrumented: one intra-op thread keeps TSan's reports about
# PinStream's own threads (the copy worker, the GIL-free acquire) and nothing else.
sanitized_pytest thread libtsan.so OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1

step "pytest"
"$PY" -m pytest tests/py tests/comfy -q -p no:cacheprovider

if [[ -f build-comfyui-0.30.0/comfyui_version.py ]]; then
  step "ComfyUI node tests again, against ComfyUI 0.30.0 (Dynamic VRAM era)"
  COMFYUI_PATH="$PWD/build-comfyui-0.30.0" "$PY" -m pytest tests/comfy -q -p no:cacheprovider
fi

step "browser test: PinStream in ComfyUI's web UI (headless Chromium; screenshots in build-ui-artifacts/)"
PINSTREAM_UI_REQUIRED=1 "$PY" -m pytest tests/ui -q -p no:cacheprovider -rs

if [[ -f bench/gpu_check.sh ]]; then
  step "GPU check dry run"
  dry_out=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-dry-run.XXXXXX")
  OUT=$dry_out bash bench/gpu_check.sh --dry-run
  # what the GPU run must bring back, in at most the 8 files a device call returns
  for f in gpu_check.log results.json summary.txt profiles.tar step_vs_budget.png bandwidth_vs_block.png \
           time_breakdown.png; do
    [[ -s $dry_out/$f ]] || { echo "the GPU check's dry run left no $f in $dry_out" >&2; exit 1; }
  done
  n=$(find "$dry_out" -mindepth 1 | wc -l)
  (( n <= 8 )) || { echo "the GPU check's dry run left $n files; a device call brings back 8" >&2; ls -la "$dry_out"; exit 1; }
  rm -rf "$dry_out"
fi

if [[ -f bench/comfyui_prompt.py && -f build-comfyui-0.30.0/comfyui_version.py ]]; then
  step "ComfyUI prompt benchmark dry run (dynamic_vram_check.sh --bench-only --dry-run; two configurations)"
  dry_out=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-comfyui-bench.XXXXXX")
  OUT=$dry_out COMFYUI_PATH="$PWD/build-comfyui-0.30.0" \
    COMFYUI_BENCH_ARGS="--systems comfyui_legacy:legacy pinstream:sequential --seqs short --limits 0.005" \
    bash bench/dynamic_vram_check.sh --bench-only --dry-run
  for f in results.json summary.txt comfyui_prompt.png comfyui_prompt.log dynamic_vram.log; do
    [[ -s $dry_out/$f ]] || { echo "the ComfyUI benchmark's dry run left no $f in $dry_out" >&2; exit 1; }
  done
  n=$(find "$dry_out" -mindepth 1 | wc -l)
  (( n <= 8 )) || { echo "the ComfyUI benchmark's dry run left $n files; a device call brings back 8" >&2; exit 1; }
  rm -rf "$dry_out"
fi

if [[ -f bench/disk.py ]]; then
  step "disk benchmark dry run (bench disk --quick: the disk's read rate against the disk tier, tiny model)"
  dry_out=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-disk-bench.XXXXXX")
  "$PY" -m pinstream bench disk --quick --spill-dir "$dry_out/spill" --json "$dry_out/disk.json"
  [[ -s $dry_out/disk.json ]] || { echo "the disk benchmark's dry run wrote no disk.json" >&2; exit 1; }
  rm -rf "$dry_out"
fi

step "wheel: built reusing build/, installed without compiler, CMake or nvcc into a fresh venv (tests/wheel)"
bash tests/wheel/check_wheel.sh --build-dir build
step "all tests passed"
