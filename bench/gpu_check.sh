#!/usr/bin/env bash
# PinStream's GPU check: one command on a GPU machine, at most 8 minutes.
#
#   bench/gpu_check.sh             1. build the extension and GoogleTests with CUDA (install.py --tests)
#                                  2. correctness: ctest (CUDA tests included), compute-sanitizer memcheck,
#                                     pytest tests/py -k cuda (the CUDA cases)
#                                  3. benchmarks -> $OUT/results.json + summary.txt (python -m pinstream bench gpu),
#                                     traced steps -> $OUT/profiles.tar
#                                  4. plots -> $OUT/*.png; prints the name to commit results.json under
#   bench/gpu_check.sh --dry-run   the same script on a CPU machine: host engine, tiny sizes; builds only
#                                  if pinstream/_C*.so is missing, skips ctest/pytest (CI runs them);
#                                  output in $OUT or a temp folder. Under 2 minutes on 2 cores.
# Options:
#   --no-tests        skip ctest and pytest (a rerun when time is short)
#   --tests-only      build and correctness only, no benchmarks or plots (about 2 minutes on the GPU)
#   --limit-s N       wall-clock limit of the whole script (default 470; the bench gets what is left)
# Environment: OUT (output folder), PYTHON (default python3), COMFYUI_PATH, GPU_CHECK_PYTEST_ARGS,
#   GPU_CHECK_BENCH_ARGS (more options for `bench gpu`, e.g. "--skip link naive_swap accelerate")
#
# Things the GPU machine lacks come along in .whl/ (ignored by git; name it in the device call's carry):
#   .whl/*.whl   Python wheels (diffusers, comfy-kitchen), each: pip install --no-index --target into a
#                temp folder put on PYTHONPATH
#   .whl/*.deb   Debian packages unpacked with dpkg -x when no GoogleTest is installed (libgtest-dev)
#   .whl/comfyui*.tar.gz   a ComfyUI source tree (its comfy/ package) for the lowvram baseline, used as
#                COMFYUI_PATH unless that is set
# See bench/README.md for the recipe.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
start=$(date +%s)
dry=0
tests=1
bench=1
limit=470
while (( $# )); do
  case "$1" in
    --dry-run) dry=1 ;;
    --no-tests) tests=0 ;;
    --tests-only) bench=0 ;;
    --limit-s) limit=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if (( ! tests && ! bench )); then
  echo "gpu_check.sh: --no-tests and --tests-only leave nothing to run; pick one" >&2
  exit 2
fi
if (( dry )) && [[ -z "${OUT:-}" ]]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-gpu-check.XXXXXX")
fi
OUT=${OUT:-$ROOT/out/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
tee_pid=$!
finish() {  # let tee write the last lines before the script ends
  exec 1>&- 2>&-
  wait "$tee_pid" 2>/dev/null
  exit "$1"
}

elapsed() { echo $(( $(date +%s) - start )); }
# a stage's timeout: its own cap, but never eating the last $bench_reserve seconds the bench needs
bench_reserve=150
cap() { local t=$(( limit - $(elapsed) - bench_reserve )); (( t > $1 )) && t=$1; (( t < 30 )) && t=30; echo $t; }
step() { echo; echo "=== $* ($(elapsed) s)"; }
declare -a report=()
note() { report+=("$1: $2"); }

step "PinStream GPU check$( ((dry)) && echo ' (DRY RUN: host engine, tiny sizes)') -> $OUT"
"$PY" --version
if (( ! dry )); then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi

# --- what the machine lacks, carried in .whl/ ---------------------------------------------
if (( ! dry )) && compgen -G ".whl/*.whl" >/dev/null; then
  step "installing carried wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
  site=${TMPDIR:-/tmp}/pinstream-site
  failed=()
  for w in .whl/*.whl; do  # one at a time: a wheel that does not install costs only itself
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$w" ||
      failed+=("$(basename "$w")")
  done
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  if (( ${#failed[@]} )); then note wheels "FAILED: ${failed[*]}"; else note wheels ok; fi
fi

# GoogleTest that CMake's find_package(GTest) will find: a config package under a
# system prefix or a CMAKE_PREFIX_PATH entry, or headers plus a library.
if (( ! dry )) && [[ -z "${COMFYUI_PATH:-}" ]] && compgen -G ".whl/comfyui*.tar.gz" >/dev/null; then
  comfy=${TMPDIR:-/tmp}/pinstream-comfyui
  rm -rf "$comfy" && mkdir -p "$comfy"
  for f in .whl/comfyui*.tar.gz; do tar -xzf "$f" -C "$comfy"; done
  export COMFYUI_PATH=$comfy
  echo "ComfyUI for the lowvram baseline: $COMFYUI_PATH (from $(ls .whl/comfyui*.tar.gz | tr '\n' ' '))"
fi

have_gtest() {
  local p prefixes
  IFS=: read -ra prefixes <<< "/usr:/usr/local:${CMAKE_PREFIX_PATH:-}"
  for p in "${prefixes[@]}"; do
    [[ -z $p ]] && continue
    compgen -G "$p/lib*/cmake/GTest/GTestConfig.cmake" >/dev/null && return 0
    compgen -G "$p/lib/*/cmake/GTest/GTestConfig.cmake" >/dev/null && return 0
    compgen -G "$p/share/cmake/GTest/GTestConfig.cmake" >/dev/null && return 0
  done
  [[ -f /usr/include/gtest/gtest.h ]] &&
    compgen -G "/usr/lib*/libgtest.*" >/dev/null || compgen -G "/usr/lib/*/libgtest.*" >/dev/null
}

# --- 1. build --------------------------------------------------------------------------------
if (( dry )); then
  if compgen -G "pinstream/_C*.so" >/dev/null; then
    step "build: pinstream/_C is built already; not rebuilding (dry run)"
  else
    step "build (host engine)"
    "$PY" install.py && note build ok || note build FAILED
  fi
else
  with_tests=0
  if (( tests )); then
    if ! have_gtest && compgen -G ".whl/*.deb" >/dev/null; then
      debs=${TMPDIR:-/tmp}/pinstream-debs
      mkdir -p "$debs"
      for f in .whl/*.deb; do dpkg -x "$f" "$debs"; done
      export CMAKE_PREFIX_PATH="$debs/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
      echo "GoogleTest from the carried .deb files: $debs/usr"
    fi
    if have_gtest; then with_tests=1; else note ctest "skipped: no GoogleTest on this machine (carry libgtest-dev in .whl/)"; fi
  fi
  step "build with CUDA (install.py$( ((with_tests)) && echo ' --tests'))"
  if (( with_tests )); then
    timeout "$(cap 300)" "$PY" install.py --tests --cuda on
  else
    timeout "$(cap 300)" "$PY" install.py --cuda on
  fi
  rc=$?
  if (( rc == 0 )); then note build ok; else note build "FAILED (exit $rc)"; with_tests=0; fi

  # --- 2. correctness --------------------------------------------------------------------------
  if (( with_tests )); then
    step "GoogleTest (core, host and CUDA engines)"
    timeout "$(cap 150)" ctest --test-dir build --output-on-failure -j4
    rc=$?; (( rc == 0 )) && note ctest ok || note ctest "FAILED (exit $rc)"
  fi
  # compute-sanitizer memcheck over the CUDA engine, fp8 and exact decode kernel tests (not the throughput
  # one: 70 M codes under memcheck take minutes); where the machine's runtime supports it
  if (( with_tests )) && command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer memcheck (CUDA engine and fp8 kernel tests)"
    # its output goes into gpu_check.log (bounded): the device call brings back at most 8 files
    san=${TMPDIR:-/tmp}/pinstream-compute-sanitizer.log
    timeout "$(cap 45)" compute-sanitizer --tool memcheck --error-exitcode 3 \
      build/pinstream_cuda_tests --gtest_filter='CudaEngine.*:Fp8Cuda.*:ExactCuda.*:-Fp8Cuda.LargeBlockAndThroughput:ExactCuda.Throughput' \
      > "$san" 2>&1
    rc=$?
    grep -E "^========|FAILED|PASSED" "$san" | head -n 120
    tail -n 3 "$san"
    if (( rc == 0 )); then note memcheck ok
    elif grep -q "Device not supported\|not supported on this" "$san"; then
      note memcheck "skipped: compute-sanitizer does not support this machine's runtime"
    elif (( rc == 124 )); then note memcheck "FAILED (timed out)"
    else note memcheck "FAILED (exit $rc; its findings are above)"; fi
  fi
  if (( tests )); then
    step "pytest tests/py (host and CUDA engines)"
    # the CUDA cases (the host engine's run in CI on every change), not stopping at the first failure
    # (one failure must not hide the next); GPU_CHECK_PYTEST_ARGS="tests/py -q" runs all of them
    read -ra pytest_args <<< "${GPU_CHECK_PYTEST_ARGS:-tests/py -q -rfs --maxfail=25 -k cuda}"
    PINSTREAM_GPU_CHECK=1 timeout "$(cap 200)" "$PY" -m pytest "${pytest_args[@]}" -p no:cacheprovider
    rc=$?; (( rc == 0 )) && note pytest ok || note pytest "FAILED (exit $rc)"
  else
    note tests "skipped (--no-tests)"
  fi
fi

# --- 3. benchmarks ---------------------------------------------------------------------------
if (( bench )); then
  if (( dry )); then
    budget=90
  else
    budget=$(( limit - $(elapsed) - 30 ))   # 30 s for the plots, the copy and slack
    (( budget < 60 )) && budget=60
  fi
  step "benchmarks (time budget ${budget} s)"
  args=(--out "$OUT" --time-budget-s "$budget")
  (( dry )) && args+=(--dry-run)
  read -ra extra_args <<< "${GPU_CHECK_BENCH_ARGS:-}"
  args+=("${extra_args[@]}")
  timeout -k 10 $(( budget + 45 )) "$PY" -m pinstream bench gpu "${args[@]}"
  rc=$?; (( rc == 0 )) && note bench ok || note bench "FAILED (exit $rc)"
else
  note bench "skipped (--tests-only)"
fi

# --- 4. plots, and the name to commit the results under ---------------------------------------
# the traced steps (profile.py) as one file: the device call brings back at most 8
if [[ -d "$OUT/profiles" ]]; then
  tar -cf "$OUT/profiles.tar" -C "$OUT" profiles && rm -rf "$OUT/profiles" &&
    echo "profiles: $(tar -tf "$OUT/profiles.tar" | grep -c json.gz) traces in $OUT/profiles.tar"
fi
if [[ -f "$OUT/results.json" ]]; then
  step "plots"
  timeout 60 "$PY" -m pinstream bench plot "$OUT/results.json" && note plots ok || note plots FAILED
  name=$("$PY" - "$OUT/results.json" "$ROOT/bench/results" <<'EOF'
import json, os, re, sys
r = json.load(open(sys.argv[1]))
dev = re.sub(r"[^a-z0-9]+", "-", str(r.get("device", "gpu")).lower()).strip("-")[:40] or "gpu"
stem = f"{str(r.get('date', ''))[:10] or 'undated'}-{dev}"
name, n = f"{stem}.json", 1
while os.path.exists(os.path.join(sys.argv[2], name)):  # another run the same day: -run2, -run3, ...
    n += 1
    name = f"{stem}-run{n}.json"
print(name)
EOF
)
  # not copied: a device call brings back at most 8 files
  echo "commit $OUT/results.json as bench/results/$name"
elif (( bench )); then
  note results "MISSING: the benchmark wrote no results.json"
fi

step "done in $(elapsed) s; files in $OUT"
ls -la "$OUT"
[[ -f "$OUT/summary.txt" ]] && cat "$OUT/summary.txt"
status=0
for line in "${report[@]}"; do
  echo "  $line"
  [[ $line == *FAILED* || $line == *MISSING* ]] && status=1
done
finish $status
