"""The torch a PinStream build compiles against, and the wheel metadata that pins it.

pinstream._C links LibTorch, so a wheel works only with the torch it was built against.
This module finds that torch and gives the wheel:

* version ``<pinstream version>+torch<torch version>.<cuNNN or cpu>``, e.g.
  ``0.1.0+torch2.11.0.cu130`` (a PEP 440 local label: install.py reads it to tell whether
  a wheel matches the running torch);
* the runtime dependency ``torch==<torch version>``.

Used in two ways:

* as scikit-build-core's dynamic-metadata provider (pyproject.toml,
  ``[[tool.dynamic-metadata]]``);
* by CMakeLists.txt under scikit-build-core: ``python pinstream_build_meta.py cmake-prefix-path``
  prints torch's CMake prefix (``torch.utils.cmake_prefix_path``).

Which torch: the one the build's Python imports. pip's build isolation hides the
environment's packages, and downloading a second torch for the build would be slow and
could differ from the one that runs the extension, so builds are meant to run with
``--no-build-isolation``. When isolation is on anyway, the torch of the environment pip
runs in is used (the same interpreter without pip's overlay) and a note says so.
``PINSTREAM_TORCH_PYTHON=/path/to/python`` names another interpreter whose torch to use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = (
    "import json, sys, torch, torch.utils; "
    "print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
    "'cmake_prefix_path': torch.utils.cmake_prefix_path, 'file': torch.__file__, 'python': sys.executable}))"
)
# Set by pip for an isolated build (its overlay of build requirements).
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")


class TorchNotFound(RuntimeError):
    pass


def _probe(python: str, env: dict[str, str]) -> dict | None:
    try:
        out = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_torch() -> dict:
    """{'version', 'cuda', 'cmake_prefix_path', 'file', 'python', 'how'} of the torch to build against."""
    named = os.environ.get("PINSTREAM_TORCH_PYTHON")
    if named:
        info = _probe(named, dict(os.environ))
        if info is None:
            raise TorchNotFound(f"PINSTREAM_TORCH_PYTHON={named} does not import torch; "
                                "point it at the Python of the environment that has torch, or unset it")
        info["how"] = f"PINSTREAM_TORCH_PYTHON={named}"
        return info
    info = _probe(sys.executable, dict(os.environ))
    if info is not None:
        info["how"] = "the build's Python"
        return info
    outside = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    if outside != dict(os.environ):
        info = _probe(sys.executable, outside)
        if info is not None:
            info["how"] = ("the environment pip runs in: build isolation hides it from the build; "
                           "pass --no-build-isolation to make this explicit")
            return info
    raise TorchNotFound(
        f"torch is not importable by {sys.executable}, and PinStream's extension is built against "
        "LibTorch from the installed torch. Install torch first (the one that will run PinStream, "
        "e.g. `pip install torch==2.11.0`), then build without build isolation: "
        "`pip install --no-build-isolation .` or `pip wheel --no-build-isolation .`; "
        "or set PINSTREAM_TORCH_PYTHON to a Python that has torch.")


def cuda_tag(cuda: str | None) -> str:
    """'13.0' -> 'cu130'; None (a CPU-only torch) -> 'cpu'."""
    if not cuda:
        return "cpu"
    major, minor = (cuda.split(".") + ["0"])[:2]
    return f"cu{major}{minor}"


def torch_label(version: str, cuda: str | None) -> str:
    """The local version label a wheel built against this torch carries: 'torch2.11.0.cu130'."""
    base = version.split("+", 1)[0]
    return f"torch{base}.{cuda_tag(cuda)}"


def pinstream_version() -> str:
    text = (ROOT / "pinstream" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise RuntimeError("pinstream/__init__.py has no __version__ line")
    return m.group(1)


def dynamic_metadata(settings, project) -> dict:
    """scikit-build-core dynamic-metadata hook: the version and the torch pin."""
    torch = find_torch()
    base = torch["version"].split("+", 1)[0]
    print(f"[pinstream build] torch {torch['version']} (CUDA {torch['cuda']}) from {torch['how']}: "
          f"{torch['file']}", file=sys.stderr, flush=True)
    return {
        "version": f"{pinstream_version()}+{torch_label(torch['version'], torch['cuda'])}",
        "dependencies": [f"torch=={base}"],
    }


def main(argv: list[str]) -> int:
    if argv[1:] != ["cmake-prefix-path"]:
        print(f"usage: {argv[0]} cmake-prefix-path", file=sys.stderr)
        return 2
    try:
        torch = find_torch()
    except TorchNotFound as e:
        print(e, file=sys.stderr)
        return 1
    print(f"torch {torch['version']} (CUDA {torch['cuda']}) from {torch['how']}: {torch['file']}", file=sys.stderr)
    print(torch["cmake_prefix_path"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
