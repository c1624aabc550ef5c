"""Shared by the ComfyUI tests."""

import os

import pytest

# The coded-weights cache of compressed models goes to a folder of this test run, not the
# user's ~/.cache (a test that wants its own passes cache_dir).
if "PINSTREAM_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["PINSTREAM_CACHE_DIR"] = tempfile.mkdtemp(prefix="pinstream-cache-")
# Spill files of models with blocks on disk (ram_budget_gb) too (they go with their model).
if "PINSTREAM_SPILL_DIR" not in os.environ:
    import tempfile

    os.environ["PINSTREAM_SPILL_DIR"] = tempfile.mkdtemp(prefix="pinstream-spill-")


@pytest.fixture
def no_gc():
    """Memory must come back by reference counting alone: the cycle collector is off for the
    test (after a collection of what earlier tests left)."""
    import gc

    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(autouse=True, scope="module")
def _torch_threads():
    """1 intra-op thread by default (PINSTREAM_TEST_THREADS overrides): on a busy 2-core
    runner 2 spinning OpenMP threads made these tests >10x slower. Restored afterwards,
    so other test modules in the same process keep their setting."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("PINSTREAM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _inference_mode_like_comfyui(request):
    """ComfyUI executes every prompt (loaders, samplers, unloads) inside
    torch.inference_mode(), so every test here runs the nodes that way too: weights
    loaded by ComfyUI are then inference tensors, as in a real server. A test marked
    ``grad_mode`` runs outside it."""
    import torch

    if request.node.get_closest_marker("grad_mode"):
        yield
        return
    with torch.inference_mode():
        yield
