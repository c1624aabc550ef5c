#!/usr/bin/env bash
# The main job on a fresh machine: install, build, run the demo.
# Extra arguments go to `python -m pinstream demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pinstream demo "$@"
