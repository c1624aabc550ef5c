"""Shared fixtures: the repo on sys.path, the tiny real-layout models as
``fixtures.models`` (tests/fixtures/models), and the engines to test.

Every engine test runs on the host engine (any machine). When a CUDA device is
present the same tests also run on the CUDA engine (the GPU check runs them).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

# The coded-weights cache of compressed models goes to a folder of this test run, not the
# user's ~/.cache (a test that wants its own passes cache_dir).
if "PINSTREAM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["PINSTREAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="pinstream-cache-")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# tests/fixtures is imported as the package `fixtures` from its path: putting tests/ itself on
# sys.path would also make tests/comfy importable as `comfy`, which ComfyUI's package is.
if "fixtures" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("fixtures", ROOT / "tests" / "fixtures" / "__init__.py")
    sys.modules["fixtures"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["fixtures"])
# A sanitizer build of the package (scripts/test.sh) is tested in place of the normal one.
if os.environ.get("PINSTREAM_TEST_PACKAGE_ROOT"):
    sys.path.insert(0, os.environ["PINSTREAM_TEST_PACKAGE_ROOT"])


def _targets():
    out = [pytest.param(("host", "cpu"), id="host")]
    try:
        import torch

        from pinstream import _C

        cuda_ok = torch.cuda.is_available() and _C.cuda_built()
    except Exception:  # noqa: BLE001
        cuda_ok = False
    out.append(pytest.param(("cuda", "cuda"), id="cuda",
                            marks=pytest.mark.skipif(not cuda_ok, reason="no CUDA device or no CUDA engine built")))
    return out


@pytest.fixture(params=_targets())
def target(request):
    """(engine, device) pairs."""
    return request.param
