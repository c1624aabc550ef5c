"""pinstream._C.Runtime on torch tensors through the host engine."""

import gc
import os
import threading
import time

import psutil
import pytest
import torch

from pinstream import _C

_ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]


def _blocks(n=6, dim=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(dim, dim, generator=g), torch.randn(dim, generator=g)] for _ in range(n)]


def _pass(rt, blocks, refs, order=None):
    rt.begin_pass()
    for i in order if order is not None else range(len(blocks)):
        rt.acquire(i)
        for t, r in zip(blocks[i], refs[i]):
            assert torch.equal(t, r), f"block {i} differs at acquire"
        rt.release(i)
    rt.end_pass()


@pytest.mark.parametrize("policy,prefetch", [("stream_all", 0), ("stream_all", 1), ("stream_all", 3),
                                             ("budget", 1), ("all_resident", 1)])
def test_acquire_gives_the_original_values(policy, prefetch):
    blocks = _blocks()
    refs = [[t.clone() for t in b] for b in blocks]
    rt = _C.Runtime("cpu", "host", random_delay_us=200, poison=True, seed=3)
    rt.register_blocks(blocks)
    bb = rt.block_bytes
    budget = 2 * bb[0] + (prefetch + 1) * bb[0] if policy == "budget" else -1
    plan = rt.plan(policy, budget, prefetch)
    assert plan["num_blocks"] == 6
    for _ in range(4):
        _pass(rt, blocks, refs)
    _pass(rt, blocks, refs, order=[0, 2, 2, 5, 1])
    st = rt.stats()
    assert st["acquires"] == 4 * 6 + 5
    assert st["hits"] + st["misses"] == st["acquires"]
    rt.close()
    for b, r in zip(blocks, refs):
        assert all(torch.equal(t, x) for t, x in zip(b, r))


def test_tensors_point_at_pinned_host_copy_between_passes():
    blocks = _blocks(4)
    refs = [[t.clone() for t in b] for b in blocks]
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks(blocks)
    rt.plan("stream_all", -1, 1)
    _pass(rt, blocks, refs)
    # Values stay true whether a block is in a slot or back on the host.
    for b, r in zip(blocks, refs):
        assert all(torch.equal(t, x) for t, x in zip(b, r))
    rt.close()


SANITIZED = bool(os.environ.get("PINSTREAM_SANITIZER"))  # ASan keeps freed memory in quarantine


@pytest.mark.skipif(SANITIZED, reason="RSS is meaningless under AddressSanitizer (freed memory is quarantined)")
def test_registration_releases_the_original_storage():
    n_bytes = 96 * 1024 * 1024
    gc.collect()
    proc = psutil.Process()
    t = torch.empty(n_bytes // 4).uniform_()
    before_ptr = t.data_ptr()
    rss_with_tensor = proc.memory_info().rss
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks([[t]])
    gc.collect()
    rss_after = proc.memory_info().rss
    assert t.data_ptr() != before_ptr
    # A second copy would add ~96 MiB; allow page rounding and allocator noise.
    assert rss_after - rss_with_tensor < 0.05 * n_bytes, (rss_after - rss_with_tensor) / 2**20
    st = rt.stats()
    assert st["host_bytes"] >= n_bytes and st["live_host_bytes"] >= n_bytes
    rt.close()


def _longest_pause_while(call):
    """Runs ``call`` in a thread and counts in this one meanwhile: the longest time this
    thread could not run (it waits for the GIL while ``call`` holds it), and ``call``'s
    own duration."""
    go, done = threading.Event(), threading.Event()
    took = []

    def worker():
        go.wait()
        t0 = time.perf_counter()
        call()
        took.append(time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=worker)
    th.start()
    longest, last = 0.0, time.perf_counter()
    go.set()  # the call starts while this thread is counting
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    th.join()
    return longest, took[0]


def test_gil_is_released_during_a_blocking_acquire():
    blocks = _blocks(2)
    rt = _C.Runtime("cpu", "host", latency_us=400_000)  # every upload takes 0.4 s
    rt.register_blocks(blocks)
    rt.plan("stream_all", -1, 0)
    pause, took = _longest_pause_while(lambda: rt.acquire(0))  # waits ~0.4 s for its upload
    assert took >= 0.3
    # this thread kept running the whole time: no pause near the acquire's length
    assert pause < 0.15, (pause, took)
    rt.release(0)
    rt.close()


def test_the_gil_measurement_sees_a_call_that_holds_the_gil():
    """The control of the test above: a builtin that holds the GIL for as long (one
    bytecode summing a range) shows up as one long pause of this thread."""
    n = 1_000_000
    t0 = time.perf_counter()
    sum(range(n))
    n = int(n * 0.4 / max(time.perf_counter() - t0, 1e-6))  # about 0.4 s
    pause, took = _longest_pause_while(lambda: sum(range(n)))
    assert took >= 0.2
    assert pause > 0.5 * took, (pause, took)


def test_callbacks_run_outside_the_runtime_lock():
    """register_blocks calls its progress callback without the runtime's mutex (and with
    the GIL): the callback can ask the runtime for its stats, and another thread calling
    into the runtime meanwhile gets an answer instead of a deadlock."""
    blocks = _blocks(4)
    rt = _C.Runtime("cpu", "host", chunk_bytes=1)  # one chunk per block: a callback per chunk
    seen, errors = [], []
    stop, packing = threading.Event(), threading.Event()

    def other():
        packing.wait()
        while not stop.is_set():
            try:
                rt.plan("stream_all", -1, 1)
            except RuntimeError as e:  # "register_blocks() is running" / "register blocks before plan()"
                errors.append(str(e))

    th = threading.Thread(target=other, daemon=True)
    th.start()

    def progress(done, total):
        seen.append((done, total, rt.stats()["closed"]))
        packing.set()
        time.sleep(0.01)

    rt.register_blocks(blocks, progress=progress)
    stop.set()
    th.join(timeout=10)
    assert not th.is_alive(), "a call into the runtime from another thread never returned"
    assert [s[:2] for s in seen] == [(i, 4) for i in range(1, 5)]
    assert errors and all("register" in e for e in errors)
    rt.close()


def test_a_failed_registration_leaves_no_block_and_a_retry_works():
    """A host allocation failing half way (the third of four chunks): nothing stays
    registered, the weights keep their values in memory of their own, the host bytes
    come back, and the same runtime then registers the same tensors."""
    gc.collect()
    base = _C.live_bytes()
    blocks = _blocks(4)
    refs = [[t.clone() for t in b] for b in blocks]
    rt = _C.Runtime("cpu", "host", chunk_bytes=1)

    def progress(done, _total):
        if done == 2:
            rt.fail_next_host_allocations(1)

    with pytest.raises(MemoryError, match="injected fault"):
        rt.register_blocks(blocks, progress=progress)
    assert rt.num_blocks == 0
    assert _C.live_bytes()["host"] == base["host"]
    for b, r in zip(blocks, refs):
        assert all(torch.equal(t, x) for t, x in zip(b, r))
    assert rt.register_blocks(blocks, policy="stream_all") == [0, 1, 2, 3]
    _pass(rt, blocks, refs)
    rt.close()
    assert _C.live_bytes()["host"] == base["host"]


def test_only_constructed_runtimes_are_counted():
    base = _C.live_bytes()["runtimes"]
    for kwargs in ({"engine": "gpu"}, {"pin_mode": "locked"}, {"prefetch": -2}, {"chunk_bytes": 0}):
        with pytest.raises(ValueError):
            _C.Runtime("cpu", **kwargs)
        assert _C.live_bytes()["runtimes"] == base, kwargs
    rt = _C.Runtime("cpu", "host")
    assert _C.live_bytes()["runtimes"] == base + 1
    del rt
    gc.collect()
    assert _C.live_bytes()["runtimes"] == base


def test_dense_weights_keep_their_layout():
    """A transposed (dense, non-contiguous) weight stays transposed in the host copy and
    on the device: the same kernels run, so the results are the same bits."""
    a = torch.randn(64, 32).t()  # [32, 64], strides (1, 32)
    x = torch.randn(8, 32)
    ref = x @ a
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks([[a]], policy="stream_all")
    assert a.stride() == (1, 32)
    rt.begin_pass()
    rt.acquire(0)
    assert a.stride() == (1, 32)
    assert torch.equal(x @ a, ref)
    rt.release(0)
    rt.end_pass()
    rt.close()
    assert a.stride() == (1, 32) and torch.equal(x @ a, ref)


def test_extension_shares_torch_cuda_runtime():
    """The extension links the CUDA runtime dynamically and uses the libcudart torch has
    loaded: importing it after torch maps no second CUDA runtime into the process."""
    if not _C.cuda_built():
        pytest.skip("built without the CUDA engine")
    import subprocess
    import sys

    code = ("import torch\n"
            "def cudart(): return {l.split()[-1] for l in open('/proc/self/maps') if 'libcudart' in l.split()[-1]}\n"
            "before = cudart()\n"
            "from pinstream import _C\n"
            "print(sorted(cudart() - before), len(before))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PINSTREAM_TEST_PACKAGE_ROOT"),
                                                                 str(_ROOT), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().startswith("[]"), out
    needed = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True).stdout
    assert "libcudart.so" in needed, "the extension must link the shared CUDA runtime"


def test_modified_weights_are_written_back_once():
    blocks = _blocks(3)
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks(blocks)
    rt.plan("stream_all", -1, 0)
    rt.begin_pass()
    rt.acquire(0)
    with torch.no_grad():
        blocks[0][0].add_(1.0)
    expected = blocks[0][0].clone()
    rt.release(0)
    for i in (1, 2):
        rt.acquire(i)
        rt.release(i)
    rt.end_pass()
    assert torch.equal(blocks[0][0], expected)
    assert rt.stats()["writebacks"] == 1
    rt.close()


def test_device_oom_is_a_memory_error_and_leaves_nothing_loaded():
    blocks = _blocks(4, dim=256)
    rt = _C.Runtime("cpu", "host", device_capacity_bytes=600_000)
    rt.register_blocks(blocks)
    rt.plan("all_resident", -1, 1)
    with pytest.raises(MemoryError, match="nothing stays loaded"):
        rt.load()
    assert not rt.loaded
    assert rt.stats()["device_bytes"] == 0
    rt.plan("stream_all", -1, 1)
    refs = [[t.clone() for t in b] for b in blocks]
    _pass(rt, blocks, refs)
    rt.close()


def test_failed_copy_raises_then_recovers():
    blocks = _blocks(4)
    refs = [[t.clone() for t in b] for b in blocks]
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks(blocks)
    rt.plan("stream_all", -1, 1)
    _pass(rt, blocks, refs)
    rt.fail_next_copies(1)
    with pytest.raises(RuntimeError, match="failed"):
        _pass(rt, blocks, refs)
    rt.end_pass()
    _pass(rt, blocks, refs)
    _pass(rt, blocks, refs)
    assert rt.stats()["upload_failures"] >= 1
    rt.close()


def test_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="allowed: auto, cuda, host"):
        _C.Runtime("cpu", "gpu")
    with pytest.raises(ValueError, match="prefetch must be >= 0"):
        _C.Runtime("cpu", "host", prefetch=-1)
    with pytest.raises(ValueError, match="pin_mode"):
        _C.Runtime("cpu", "host", pin_mode="locked")
    rt = _C.Runtime("cpu", "host")
    t = torch.randn(8)
    with pytest.raises(ValueError, match="tied weights"):
        rt.register_blocks([[t], [t]])
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks(_blocks(3))
    with pytest.raises(ValueError, match="allowed: all_resident, stream_all, budget"):
        rt.plan("some", -1, 1)
    with pytest.raises(ValueError, match="below the minimum"):
        rt.plan("stream_all", 1000, 1)
    rt.plan("stream_all", -1, 1)
    with pytest.raises(IndexError, match="out of range"):
        rt.acquire(7)
    with pytest.raises(RuntimeError, match="not acquired"):
        rt.release(0)
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        rt.acquire(0)


def test_mixed_dtypes_zero_size_and_noncontiguous_tensors():
    a = torch.randn(16, 8).t()  # non-contiguous
    b = torch.arange(10, dtype=torch.int64)
    c = torch.zeros(0, 4)
    d = torch.randn(7, dtype=torch.float16)
    e = torch.tensor(3.5, dtype=torch.bfloat16)  # 0-dim
    refs = [x.clone() for x in (a, b, c, d, e)]
    rt = _C.Runtime("cpu", "host")
    rt.register_blocks([[a, b, c], [d, e]])
    rt.plan("stream_all", -1, 1)
    _pass(rt, [[a, b, c], [d, e]], [refs[:3], refs[3:]])
    rt.close()
    for x, r in zip((a, b, c, d, e), refs):
        assert x.dtype == r.dtype and torch.equal(x, r)


def test_cuda_engine_reports_missing_device_clearly():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="(no CUDA device|no CUDA engine)"):
        _C.Runtime("cuda", "cuda")
