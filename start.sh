#!/usr/bin/env bash
# Start ComfyUI with the memory settings `python -m pinstream recommend` chooses.
#
#   ./start.sh [--dry-run] [--comfyui DIR] [recommend options] [--] [your ComfyUI flags]
#
# recommend options (passed to `python -m pinstream recommend`):
#   --model FILE | --model-gb N   plan for this model (default: Wan 2.1 14B bf16)
#   --vram-gb N | --no-gpu        plan for another GPU / no GPU (default: detected, or GPU_TIER)
#   --ram-gb N, --other-models-gb N, --pinned-gb N, --platform linux|windows
#   --comfyui-args "FLAGS"        ComfyUI flags of yours as one string
# Anything else (or everything after --) is a ComfyUI flag of yours: it is checked
# against ComfyUI's parser together with the recommended flags, then passed on.
# --cuda-device N among them makes the plan use GPU N's VRAM.  When nvidia-smi is
# installed but cannot read the GPU (driver error, [N/A]), nothing starts (exit 2):
# pass --vram-gb N (or --no-gpu) rather than have ComfyUI started with --cpu.
#
# Environment: COMFYUI_DIR (ComfyUI folder), GPU_TIER, GPU_MEMORY_MODE (override the
# mode), PYTHON (runs recommend; default python3), COMFYUI_PYTHON (runs ComfyUI;
# default $PYTHON).  Exports COMFYUI_ARGS and GPU_MEMORY_MODE for ComfyUI and its nodes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
die() { echo "start.sh: $*" >&2; exit 2; }

DRY_RUN=0
COMFY_DIR="${COMFYUI_DIR:-}"
REC_ARGS=()
USER_ARGS=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --comfyui)
      (($# >= 2)) || die "--comfyui needs a folder"
      COMFY_DIR="$2"; shift 2 ;;
    --comfyui=*) COMFY_DIR="${1#*=}"; shift ;;
    --model | --model-gb | --vram-gb | --ram-gb | --other-models-gb | --pinned-gb | --platform | --comfyui-args)
      (($# >= 2)) || die "$1 needs a value"
      REC_ARGS+=("$1" "$2"); shift 2 ;;
    --model=* | --model-gb=* | --vram-gb=* | --ram-gb=* | --other-models-gb=* | --pinned-gb=* | --platform=* | \
      --comfyui-args=* | --no-gpu)
      REC_ARGS+=("$1"); shift ;;
    --) shift; USER_ARGS+=("$@"); break ;;
    *) USER_ARGS+=("$1"); shift ;;
  esac
done

if [[ -n "$COMFY_DIR" ]]; then
  REC_ARGS+=(--comfyui "$COMFY_DIR")
fi

# recommend prints shell assignments (values quoted); warnings go to stderr.
set +e
PLAN="$(PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pinstream recommend --shell \
  ${REC_ARGS[@]+"${REC_ARGS[@]}"} -- ${USER_ARGS[@]+"${USER_ARGS[@]}"})"
rc=$?
set -e
((rc == 0)) || die "pinstream recommend failed (exit $rc); nothing started"
COMFYUI_ARGS="" COMFYUI_ARGV=() COMFYUI_ROOT="" PINSTREAM_MODE="" PINSTREAM_BUDGET_GB="" PINSTREAM_RAM_NEEDED_GB=""
eval "$PLAN"

COMFY_DIR="${COMFY_DIR:-${COMFYUI_ROOT:-}}"
[[ -n "$COMFY_DIR" ]] || die "no ComfyUI folder: pass --comfyui DIR or set COMFYUI_DIR"
[[ -f "$COMFY_DIR/main.py" ]] || die "$COMFY_DIR has no main.py: not a ComfyUI folder"
COMFYUI_PYTHON="${COMFYUI_PYTHON:-$PYTHON}"
CMD=("$COMFYUI_PYTHON" "$COMFY_DIR/main.py" ${COMFYUI_ARGV[@]+"${COMFYUI_ARGV[@]}"})

echo "start.sh: COMFYUI_ARGS=${COMFYUI_ARGS}" >&2
echo "start.sh: GPU_MEMORY_MODE=${GPU_MEMORY_MODE} (PinStream mode ${PINSTREAM_MODE}${PINSTREAM_BUDGET_GB:+, budget ${PINSTREAM_BUDGET_GB} GB}; RAM needed ${PINSTREAM_RAM_NEEDED_GB} GB)" >&2

if ((DRY_RUN)); then
  printf 'export COMFYUI_ARGS=%q\n' "$COMFYUI_ARGS"
  printf 'export GPU_MEMORY_MODE=%q\n' "$GPU_MEMORY_MODE"
  printf 'cd %q &&' "$COMFY_DIR"
  printf ' %q' "${CMD[@]}"
  printf '\n'
  exit 0
fi

cd "$COMFY_DIR"
exec "${CMD[@]}"
