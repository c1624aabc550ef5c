#!/usr/bin/env bash
# Every test PinStream has, from a fresh machine: installs what it needs, builds
# (the CUDA engine is compiled by nvcc when the toolkit is present), then runs
#   1. GoogleTest (core, host engine; CUDA tests skip without a GPU)
#   2. the core and host engine under ASan+UBSan, then under TSan
#   3. pytest (binding, engine, ComfyUI nodes against real ComfyUI, recommend, start.sh)
#   4. the GPU check's dry run (host engine, tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PINSTREAM_SEED=${PINSTREAM_SEED:-$(date +%Y%m%d)}
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }

step "setup and build"
bash scripts/setup.sh --ci

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

step "pytest"
"$PY" -m pytest tests/py tests/comfy -q -p no:cacheprovider

if [[ -f bench/gpu_check.sh ]]; then
  step "GPU check dry run"
  bash bench/gpu_check.sh --dry-run
fi
step "all tests passed"
