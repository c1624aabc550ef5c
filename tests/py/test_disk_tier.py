"""The disk tier (host engine): a model's blocks beyond its host budget live in a spill file
and stream disk -> pinned read ring -> device; every mode gives full load's outputs bit for
bit, and faults are clear errors after which the next run is correct.

Cases: every mode and transfer form with blocks on disk; which blocks go (device-resident
first, then spread); state_dict, host values and LoRA-style writes of blocks on disk; a spill
file truncated or replaced under the model; a read error in mid-pass; a spill directory that
cannot be made; a write that fails (file size limit, in a child process) keeps the rest in
RAM; 100 offload/run/detach cycles give descriptors, pinned bytes and RSS back.
"""

import os
import subprocess
import sys
import textwrap
import warnings

import psutil
import pytest
import torch
from torch import nn

import pinstream
from pinstream import _C

GIB = 1024**3


class Net(nn.Module):
    def __init__(self, n=8, dim=128, dtype=torch.float32):
        super().__init__()
        self.inp = nn.Linear(dim, dim).to(dtype)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, dim)).to(dtype) for _ in range(n))

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return x


# Timings mean nothing under a sanitizer (many times slower, unevenly): the tests that compare
# measured times there are left to the plain runs.
timed = pytest.mark.skipif(bool(os.environ.get("PINSTREAM_SANITIZER")), reason="compares measured times")


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return Net(**kw).eval()


def _block_bytes(m):
    return sum(p.numel() * p.element_size() for p in m.blocks[0].parameters())


def _offload(m, tmp_path, budget_blocks, **kw):
    kw.setdefault("mode", "sequential")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return pinstream.offload(m, device="cpu", engine="host", spill_dir=str(tmp_path),
                                 host_budget_gb=budget_blocks * _block_bytes(m) / GIB, **kw)


MODES = [
    dict(mode="sequential"),
    dict(mode="sequential", prefetch=3),
    dict(mode="budget", budget_gb=0.5),
    dict(mode="model_offload"),
    dict(mode="full_load"),
    dict(mode="sequential", transfer_dtype="compressed"),
    dict(mode="budget", budget_gb=0.5, transfer_dtype="compressed"),
]


@pytest.mark.parametrize("kw", MODES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_blocks_on_disk_give_full_loads_outputs_in_every_mode(tmp_path, kw):
    dtype = torch.bfloat16 if kw.get("transfer_dtype") == "compressed" else torch.float32
    m = _net(dtype=dtype)
    x = torch.randn(3, 128, dtype=dtype)
    with torch.no_grad():
        ref = m(x)
    kw = dict(kw)
    if "budget_gb" in kw:
        kw["budget_gb"] = kw["budget_gb"] * sum(p.numel() * p.element_size() for p in m.parameters()) / GIB
    h = _offload(m, tmp_path, 2.5, **kw)
    st = h.stats()
    assert st["disk_blocks"] >= 5, st["disk_blocks"]
    assert st["spill_path"].startswith(str(tmp_path)) and os.path.exists(st["spill_path"])
    assert st["host_bytes"] <= 2.5 * _block_bytes(m) + sum(p.numel() * p.element_size() for p in m.inp.parameters())
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    st = h.stats()
    assert st["disk_bytes"] > 0 and st["disk_reads"] > 0
    if kw["mode"] in ("sequential", "budget"):
        assert st["read_ring_bytes"] > 0
    path = st["spill_path"]
    h.detach()
    assert not os.path.exists(path)  # the spill file goes with the model
    with torch.no_grad():
        assert torch.equal(m(x), ref)  # and the weights have their values back


def test_device_resident_blocks_go_to_disk_first_then_spread(tmp_path):
    m = _net(n=10)
    total = sum(p.numel() * p.element_size() for p in m.parameters())
    # a VRAM budget that keeps about four blocks resident
    h = _offload(m, tmp_path, 4.5, mode="budget", budget_gb=(total - 5.5 * _block_bytes(m)) / GIB)
    on_disk = h.stats()["block_on_disk"][:10]
    resident = [b for b in range(10) if h.runtime.resident_blocks[b]]
    assert len(resident) >= 2 and all(on_disk[b] for b in resident)
    # then streamed ones, not next to each other
    streamed_on_disk = [i for i in range(10) if on_disk[i] and i not in resident]
    assert streamed_on_disk, (on_disk, resident)
    streamed = [i for i in range(10) if i not in resident]
    picks = [streamed.index(i) for i in streamed_on_disk]
    assert all(b - a > 1 for a, b in zip(picks, picks[1:])), (on_disk, resident)
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = _net(n=10)(x)
        assert torch.equal(m(x), ref)
    h.detach()


def test_state_dict_host_values_and_writes_of_blocks_on_disk(tmp_path):
    m = _net()
    x = torch.randn(2, 128)
    want = {k: v.clone() for k, v in m.state_dict().items()}
    h = _offload(m, tmp_path, 1)
    got = m.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    w = m.blocks[5][0].weight
    assert h.stored_apart(w)
    assert torch.equal(h.host_value(w), want["blocks.5.0.weight"])
    # a LoRA-style patch: new values into the file, used by the next run
    new = want["blocks.5.0.weight"] + 0.5
    h.write_host_values({w: new})
    assert torch.equal(h.host_value(w), new)
    m2 = _net()
    m2.blocks[5][0].weight.data.copy_(new)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    h.detach()
    assert torch.equal(m.blocks[5][0].weight, new)


def test_compressed_blocks_on_disk_take_their_coded_size(tmp_path):
    m = _net(dtype=torch.bfloat16)
    h = _offload(m, tmp_path, 1, transfer_dtype="compressed")
    st = h.stats()
    assert st["disk_blocks"] > 0
    assert st["disk_block_bytes"] < 0.9 * st["disk_blocks"] * _block_bytes(m)
    h.detach()


def test_a_spill_file_truncated_or_replaced_is_a_clear_error_and_a_reload_works(tmp_path):
    x = torch.randn(2, 128)
    for damage in ("truncate", "replace"):
        m = _net()
        with torch.no_grad():
            ref = m(x)
        h = _offload(m, tmp_path, 2)
        with torch.no_grad():
            assert torch.equal(m(x), ref)
        h.unload()
        path = h.stats()["spill_path"]
        if damage == "truncate":
            os.truncate(path, 4096)
        else:
            os.replace(path + "", path + ".old")
            with open(path, "wb") as f:
                f.write(b"\0" * 8192)
        with pytest.raises(RuntimeError, match="changed since PinStream opened it"), torch.no_grad():
            m(x)
        if damage == "truncate":
            # the values cannot come back: detach says so, after freeing everything
            with pytest.raises(RuntimeError, match="could not be read back"):
                h.detach()
            assert h.detached
        else:
            # the file PinStream opened is still there under its old name: values come back
            h.detach()
            with torch.no_grad():
                assert torch.equal(m(x), ref)
        # the model is reloaded (as ComfyUI reloads a checkpoint): a fresh one works
        m = _net()
        h = _offload(m, tmp_path, 2)
        with torch.no_grad():
            assert torch.equal(m(x), ref)
        h.detach()
        if os.path.exists(path + ".old"):
            os.remove(path + ".old")


def test_a_read_error_mid_pass_fails_that_run_and_the_next_is_correct(tmp_path):
    m = _net()
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path, 2)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.runtime.fail_next_disk_reads(1000)
    with pytest.raises(RuntimeError, match="Input/output error"), torch.no_grad():
        m(x)
    h.runtime.fail_next_disk_reads(0)
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    h.detach()


def test_a_spill_directory_that_cannot_be_made_keeps_the_model_in_ram(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    m = _net()
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = m(x)
    with pytest.warns(RuntimeWarning, match="stay in RAM"):
        h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", spill_dir=str(blocker / "sub"),
                              host_budget_gb=_block_bytes(m) / GIB)
    st = h.stats()
    assert st["disk_blocks"] == 0 and "cannot make the spill directory" in st["spill_error"]
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_a_failed_spill_write_keeps_the_rest_in_ram_and_says_so(tmp_path):
    # a file size limit makes the writes past it fail (EFBIG), as a full disk would
    script = textwrap.dedent(f"""
        import resource, signal, warnings, torch, pinstream
        sys_path = None
        from torch import nn
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        torch.manual_seed(0)
        m = nn.Sequential(*[nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128)) for _ in range(8)]).eval()
        x = torch.randn(2, 128)
        with torch.no_grad():
            ref = m(x)
        block = sum(p.numel() * p.element_size() for p in m[0].parameters())
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 * block, resource.RLIM_INFINITY))
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", spill_dir={str(tmp_path)!r},
                                  host_budget_gb=1 * block / 1024**3)
        st = h.stats()
        msgs = [str(w.message) for w in rec if "stay in RAM" in str(w.message)]
        assert len(msgs) == 1, [str(w.message) for w in rec]
        assert 0 < st["disk_blocks"] < 7, st["disk_blocks"]
        assert "cannot write the spill file" in st["spill_error"] or "no space" in st["spill_error"], st["spill_error"]
        with torch.no_grad():
            assert torch.equal(m(x), ref)
        h.detach()
        print("ok", st["disk_blocks"])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this run's pinstream first
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_bad_host_budgets_are_clear_errors(tmp_path):
    for bad in (-1, float("nan"), "lots"):
        with pytest.raises(pinstream.modes.ModeError, match="host_budget_gb"):
            pinstream.offload(_net(), mode="sequential", device="cpu", engine="host", host_budget_gb=bad)


@pytest.mark.skipif(bool(os.environ.get("PINSTREAM_SANITIZER")),
                    reason="100 offloads are slow under a sanitizer; test_hardening's cycles run there")
def test_one_hundred_cycles_give_descriptors_pinned_bytes_and_rss_back(tmp_path):

    m = _net(n=8, dim=256)
    x = torch.randn(2, 256)
    with torch.no_grad():
        ref = m(x)
    proc = psutil.Process()

    from fixtures import release_freed_memory as trim

    modes = ["sequential", "budget", "model_offload", "full_load"]
    total = sum(p.numel() * p.element_size() for p in m.parameters())

    def cycle(i):
        h = _offload(m, tmp_path, 2, mode=modes[i % 4], budget_gb=0.6 * total / GIB, prefetch=1 + i % 3)
        assert h.stats()["disk_blocks"] > 0
        with torch.no_grad():
            out = m(x)
        h.detach()
        return out

    for i in range(8):
        cycle(i)
    trim()
    base, fds = _C.live_bytes(), proc.num_fds()
    rss = []
    for half in range(2):
        for i in range(50):
            out = cycle(i)
        trim()
        rss.append(proc.memory_info().rss)
    assert torch.equal(out, ref)
    live = _C.live_bytes()
    assert live["pinned"] == base["pinned"] and live["host"] == base["host"] and live["runtimes"] == base["runtimes"]
    assert proc.num_fds() == fds
    assert os.listdir(tmp_path) == []  # every spill file went with its model
    if os.environ.get("PINSTREAM_SANITIZER"):
        return  # freed memory sits in ASan's quarantine: RSS says nothing there
    # a model's worth (4 MiB) kept per cycle would be 200 MiB over the second 50
    grown = rss[1] - rss[0]
    assert grown < 4 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over the last 50 cycles"


def _saved(tmp_path, m, name="model.safetensors", prefix="model.diffusion_model."):
    from safetensors.torch import save_file

    path = tmp_path / name
    save_file({prefix + k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return str(path)


def test_blocks_on_disk_read_from_the_models_own_file_with_no_copy(tmp_path):
    m = _net()
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = m(x)
    path = _saved(tmp_path, m)
    before = open(path, "rb").read()
    spill = tmp_path / "spill"
    h = _offload(m, spill, 2, source_files=[path])
    st = h.stats()
    assert st["disk_blocks"] >= 5 and st["source_block_bytes"] == st["disk_block_bytes"]
    assert st["spill_bytes"] == 0 and st["spill_path"] == ""  # nothing written
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    assert h.stats()["disk_bytes"] > 0
    # a patch never writes the model's file: that block moves to a spill file
    w = m.blocks[6][0].weight
    assert h.stored_apart(w)
    new = h.host_value(w) * 2
    h.write_host_values({w: new})
    st = h.stats()
    assert st["spill_bytes"] > 0 and st["source_block_bytes"] < st["disk_block_bytes"]
    assert torch.equal(h.host_value(w), new)
    h.detach()
    assert open(path, "rb").read() == before
    assert torch.equal(m.blocks[6][0].weight, new)


def test_weights_that_differ_from_the_file_spill_and_a_changed_file_is_detected(tmp_path):
    m = _net()
    path = _saved(tmp_path, m)
    with torch.no_grad():
        m.blocks[1][0].weight.add_(1)  # changed since it was read: that block cannot read from the file
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path / "spill", 0, source_files=path)
    st = h.stats()
    assert 0 < st["source_block_bytes"] < st["disk_block_bytes"] and st["spill_bytes"] > 0
    assert "blocks.1.0.weight differs from" in st["source_note"]
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.unload()
    with open(path, "r+b") as f:  # the model file is rewritten (a new download, say)
        f.seek(-64, os.SEEK_END)
        f.write(b"\1" * 64)
    with pytest.raises(RuntimeError, match="changed since PinStream opened it"), torch.no_grad():
        m(x)
    # the blocks' own bytes were not touched: detach reads them back whole
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_a_block_larger_than_one_check_read_is_checked_whole(tmp_path):
    """The file's bytes are checked against a block's values 64 MiB of tensors at a time: a
    block of 72 MB takes two, and a weight that differs in the second is found."""
    torch.manual_seed(0)
    m = Net(n=2, dim=3000).eval()
    assert _block_bytes(m) > 64 * 2**20
    path = _saved(tmp_path, m)
    with torch.no_grad():
        m.blocks[1][2].weight[-1, -1] += 1  # the last bytes of block 1's last large weight
    x = torch.randn(2, 3000)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path / "spill", 0, source_files=path)
    st = h.stats()
    assert st["disk_blocks"] == 2 and _block_bytes(m) <= st["source_block_bytes"] < 2 * _block_bytes(m)
    assert "blocks.1.2.weight differs from" in st["source_note"]
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


@timed
@pytest.mark.parametrize("link_gbps,batch,want", [(0.005, 2, "cap"), (1000.0, 512, 1)])
def test_the_look_ahead_follows_measured_upload_and_compute_times(link_gbps, batch, want):
    m = _net(n=6, dim=256)
    x = torch.randn(batch, 256)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", prefetch=3, link_gbps=link_gbps)
    assert h.plan["prefetch"] == 3
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    st = h.stats()
    assert st["compute_spans"] >= 12 and st["compute_ms"] > 0
    expected = 3 if want == "cap" else want
    assert st["suggested_prefetch"] == expected, st["suggested_prefetch"]
    h.unload()  # the next load plans with the look-ahead the times ask for
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert h.stats()["plan"]["prefetch"] == expected and h.stats()["plan"]["slot_count"] == expected + 1
    h.detach()
    # adaptive_prefetch=False keeps the number given
    h = pinstream.offload(m, mode="sequential", device="cpu", engine="host", prefetch=3, link_gbps=link_gbps,
                          adaptive_prefetch=False)
    for _ in range(3):
        with torch.no_grad():
            m(x)
    h.unload()
    with torch.no_grad():
        m(x)
    assert h.stats()["plan"]["prefetch"] == 3
    h.detach()


class Slow(nn.Module):
    """A block whose compute takes 4 ms: reads ahead of it always finish in time."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)

    def forward(self, x):
        import time

        time.sleep(0.004)
        return self.b(torch.tanh(self.a(x)))


class Expert(nn.Module):
    def __init__(self, seed, n=6, dim=128):
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Slow(dim) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


@timed
def test_the_expert_waiting_for_its_turn_reads_its_first_blocks_ahead(tmp_path):
    # Wan 2.2's two experts: high noise runs its steps, then low noise. Each keeps one
    # block in RAM; the rest streams from disk.
    x = torch.randn(2, 128)
    misses = {}
    for warm in (False, True):
        high, low = Expert(1).eval(), Expert(2).eval()
        with torch.no_grad():
            ref = low(high(x))
        block = sum(p.numel() * p.element_size() for p in high.blocks[0].parameters())
        handles = [_offload(m, tmp_path, 1.5) for m in (high, low)]
        hh, hl = handles
        assert hh.stats()["disk_blocks"] == 5 and hl.stats()["disk_blocks"] == 5
        if not warm:
            hh._has_disk = hl._has_disk = False  # no warm standby: the baseline
        with torch.no_grad():
            y = x
            for _ in range(3):
                hh.reset_stats()
                y = high(x)
            hh.unload()
            st = hl.stats()
            if warm:  # while the high-noise expert ran, the low-noise one read its first blocks
                assert st["read_ring_bytes"] >= 3 * block and st["disk_reads"] == 0
                # the disk blocks among its first three
                first = [b for b in range(3) if st["block_on_disk"][b]]
                assert first and st["disk_bytes_total"] >= len(first) * block
            hl.reset_stats()
            assert torch.equal(low(y), ref)
        misses[warm] = hl.stats()["disk_read_misses"]
        for h in handles:
            h.detach()
    # the switch: the first block of the low-noise expert waited for its read only when cold
    assert misses[False] >= 1 and misses[True] == 0, misses


def test_reads_use_whichever_of_o_direct_and_buffered_measured_faster(tmp_path):
    from pinstream import calibrate

    r = calibrate.disk_reads(str(tmp_path))
    assert r.buffered_gbps > 0 and r.o_direct_gbps >= 0 and r.io_uring_gbps >= 0
    # io_uring where it measured fastest, else O_DIRECT (thread pool) where at least as fast as buffered
    assert r.io_uring == (r.io_uring_gbps > max(r.o_direct_gbps, r.buffered_gbps))
    assert r.direct == (r.io_uring or r.o_direct_gbps >= r.buffered_gbps)
    # why says which and the figures (or why a way was not measured)
    assert f"buffered {r.buffered_gbps:.2f} GB/s" in r.why or f"{r.buffered_gbps:.2f} GB/s against" in r.why, r.why
    assert r.io_uring_gbps > 0 or "io_uring not measured" in r.why or "refused" in r.why, r.why
    assert calibrate.disk_reads(str(tmp_path / "sub")) is r  # once per file system
    assert [p for p in os.listdir(tmp_path) if "probe" in p] == []
    h = _offload(_net(), tmp_path, 2)
    how = h.stats()["disk_how"]
    if r.direct:  # (io_uring once the runtime is handed the choice; the thread pool's O_DIRECT until then)
        assert how.startswith(("O_DIRECT", "io_uring")), how
    else:
        assert "measured faster" in how or "refused" in how, how
    h.detach()


def test_disk_reads_keeps_the_fastest_of_io_uring_the_thread_pool_and_buffered(monkeypatch, tmp_path):
    """The choice itself, with a stand-in for the native reader whose three ways read at set
    rates on a clock of the test's own (the real extension may lack the io_uring option, or
    this machine io_uring)."""
    import time
    import types

    from pinstream import calibrate

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def native(seconds, uring=True, refused=False):
        class Reader:
            def __init__(self, threads=4, direct=True, chunk_bytes=8 << 20, **kw):
                if "io_uring" in kw and not uring:
                    raise TypeError("incompatible constructor arguments")
                self.way = "io_uring" if kw.get("io_uring") else "direct" if direct else "buffered"

            def open(self, path):
                return 0

            def direct(self, file):
                return self.way != "buffered" and not refused

            def how(self, file):
                if not self.direct(file):
                    return "buffered (O_DIRECT refused by the file system (open: EINVAL))" if refused else "buffered (x)"
                return "io_uring, O_DIRECT (alignment 4096, queue depth 32)" if self.way == "io_uring" else "O_DIRECT"

            def read(self, file, offset, buf):
                now[0] += seconds[self.way]

        return types.SimpleNamespace(DiskReader=Reader, drop_page_cache=lambda path: True)

    fast, slow = 0.005, 0.06
    cases = [
        ({"io_uring": fast, "direct": slow, "buffered": slow}, True, False, True, True),
        ({"io_uring": slow, "direct": fast, "buffered": slow}, True, False, True, False),
        ({"io_uring": slow, "direct": slow, "buffered": fast}, True, False, False, False),
        ({"io_uring": fast, "direct": slow, "buffered": slow}, False, False, True, False),  # no io_uring option
        ({"io_uring": fast, "direct": fast, "buffered": slow}, True, True, False, False),  # O_DIRECT refused
    ]
    for seconds, uring, refused, direct, use_uring in cases:
        monkeypatch.setattr(calibrate, "load_native", lambda: native(seconds, uring, refused))
        r = calibrate._measure_disk(str(tmp_path), 1, passes=1)
        assert (r.direct, r.io_uring) == (direct, use_uring), (seconds, uring, refused, r)
        assert r.buffered_gbps > 0 and (r.io_uring_gbps > 0) == (uring and not refused), r
        assert f"{r.buffered_gbps:.2f} GB/s" in r.why, r.why
        if use_uring:
            assert r.why.startswith("io_uring with O_DIRECT measured fastest here: io_uring"), r.why
        elif not uring:
            assert "io_uring not measured: this build's DiskReader binding takes no io_uring option" in r.why, r.why
        if refused:
            assert r.why.startswith("O_DIRECT refused by the file system (open: EINVAL)"), r.why
        elif not direct:
            assert "measured faster" in r.why, r.why
    assert calibrate.DiskReads(True, 1.0, 1.0, "").io_uring is False  # existing callers: positional, no io_uring


def test_a_source_file_that_cannot_be_read_is_a_clear_error(tmp_path):
    from pinstream.safetensors_header import SafetensorsError

    for bad in (tmp_path / "missing.safetensors", tmp_path):
        with pytest.raises((SafetensorsError, OSError), match=str(bad)):
            _offload(_net(), tmp_path / "spill", 1, source_files=[str(bad)])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    m = _net()
    with pytest.raises(SafetensorsError, match="garbage.safetensors"):
        _offload(m, tmp_path / "spill", 1, source_files=str(garbage))
    # nothing was left half done: the model offloads and runs after that
    x = torch.randn(2, 128)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path / "spill", 1)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


@timed
def test_a_loaded_expert_waiting_for_its_turn_has_its_first_blocks_uploaded_ahead(tmp_path):
    x = torch.randn(2, 128)
    misses = {}
    for warm in (False, True):
        high, low = Expert(3).eval(), Expert(4).eval()
        with torch.no_grad():
            ref_low = low(x)
        hh, hl = (_offload(m, tmp_path, 1.5) for m in (high, low))
        if not warm:
            hh._has_disk = hl._has_disk = False  # no warm standby: the baseline
        with torch.no_grad():
            assert torch.equal(low(x), ref_low)  # low has run once: its order learned
            hl.unload()
            hl.load()  # loaded, with empty slots (as after ComfyUI loads it)
            hl.reset_stats()
            for _ in range(2):
                high(x)
            if warm:  # while high ran, low's first blocks were uploaded into its slots
                assert hl.stats()["prefetches"] >= 1
            hl.reset_stats()
            assert torch.equal(low(x), ref_low)
        st = hl.stats()
        misses[warm] = (st["misses"], st["disk_read_misses"])
        for h in (hh, hl):
            h.detach()
    # cold, its first block is uploaded only when its pass asks for it
    assert misses[False][0] >= 1 and misses[True] == (0, 0), misses


def test_set_host_budget_moves_blocks_between_ram_and_disk_between_passes(tmp_path):
    for kw in (dict(mode="sequential"), dict(mode="budget", budget_gb=0.5),
               dict(mode="sequential", transfer_dtype="compressed")):
        dtype = torch.bfloat16 if kw.get("transfer_dtype") else torch.float32
        m = _net(dtype=dtype)
        x = torch.randn(3, 128, dtype=dtype)
        with torch.no_grad():
            ref = m(x)
        want = {k: v.clone() for k, v in m.state_dict().items()}
        kw = dict(kw)
        if "budget_gb" in kw:
            kw["budget_gb"] = kw["budget_gb"] * sum(p.numel() * p.element_size() for p in m.parameters()) / GIB
        h = pinstream.offload(m, device="cpu", engine="host", spill_dir=str(tmp_path), **kw)
        assert h.stats()["disk_blocks"] == 0
        with torch.no_grad():
            assert torch.equal(m(x), ref)  # loaded: the moves below happen to a loaded model
        full = h.host_bytes
        held = h.set_host_budget(2 * _block_bytes(m) / GIB)
        st = h.stats()
        assert held == h.host_bytes <= 2 * _block_bytes(m) + _block_bytes(m) // 8, (held, st["disk_blocks"])
        assert st["disk_blocks"] >= 6 and st["spill_bytes"] > 0
        gone = st["block_on_disk"].index(True)
        assert h.stored_apart(m.blocks[gone][0].weight)
        got = m.state_dict()  # the weights on disk read on demand
        assert all(torch.equal(got[k], want[k]) for k in want)
        for _ in range(2):
            with torch.no_grad():
                assert torch.equal(m(x), ref)
        assert h.stats()["disk_reads"] > 0
        spill = st["spill_bytes"]
        assert h.set_host_budget(None) == full  # every block back in RAM
        assert h.stats()["disk_blocks"] == 0
        assert h.stored_apart(m.blocks[gone][0].weight) == ("transfer_dtype" in kw)  # coded: always apart
        with torch.no_grad():
            assert torch.equal(m(x), ref)
        h.set_host_budget(2 * _block_bytes(m) / GIB)  # out again: nothing written (the copies on disk are the same)
        assert h.stats()["spill_bytes"] == spill and h.stats()["block_on_disk"] == st["block_on_disk"]
        with torch.no_grad():
            assert torch.equal(m(x), ref)
        assert h.ram_moves["moves"] == 3 and h.ram_moves["to_disk_bytes"] > 0 and h.ram_moves["to_ram_bytes"] > 0
        h.detach()
        with torch.no_grad():
            assert torch.equal(m(x), ref)


def _run(m, x, ref, passes):
    """``passes`` forwards of ``m`` on ``x``, each giving ``ref``."""
    for _ in range(passes):
        with torch.no_grad():
            assert torch.equal(m(x), ref)


@pytest.fixture
def alone():
    """No other live PinStream model in the process (one a failed test left behind would
    share the pinning cap), and no moves of RAM made before (their pace is judged by)."""
    import gc

    from pinstream import handle, pin_cap

    gc.collect()
    for h in pin_cap.live_handles():
        h.detach()
    handle._MOVE_COST[:] = [0.0, 0]
    yield


def test_ram_follows_the_model_that_runs_and_the_waiting_one_lives_on_disk(tmp_path, monkeypatch, alone):
    """Two models (Wan 2.2's experts) in a process whose pinning cap holds one and a half of
    them: from a model's second pass in a row, the other's blocks go to disk (read from its
    own file, nothing written) and the running one's come back to RAM; every output stays
    full load's."""
    from pinstream.handle import OffloadHandle

    # as where the disk sets the pace (these small blocks may keep up with the compute)
    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(lambda st, prev: float("inf")))
    a, b = _net(seed=1), _net(seed=2)
    x = torch.randn(3, 128)
    with torch.no_grad():
        ref_a, ref_b = a(x), b(x)
    path_a = _saved(tmp_path, a, "a.safetensors")
    size = sum(p.numel() * p.element_size() for p in a.parameters())
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", str(1.5 * size / GIB))
    spill = tmp_path / "spill"
    ha = pinstream.offload(a, device="cpu", engine="host", spill_dir=str(spill), mode="sequential",
                           source_files=path_a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hb = pinstream.offload(b, device="cpu", engine="host", spill_dir=str(spill), mode="sequential")
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    cap = int(1.5 * size)

    _run(b, x, ref_b, 1)  # its first pass: it streams from disk, nothing moves
    assert hb.ram_moves["moves"] == 0 and ha.stats()["disk_blocks"] == 0
    _run(b, x, ref_b, 1)  # its second: A's blocks go to disk, B's come to RAM
    sa, sb = ha.stats(), hb.stats()
    assert sb["disk_blocks"] == 0, sb["disk_blocks"]
    assert sa["disk_blocks"] > 0 and sa["source_block_bytes"] == sa["disk_block_bytes"]  # from a.safetensors
    assert sa["spill_bytes"] == 0  # nothing of A written
    assert ha.host_bytes + hb.host_bytes + sb["read_ring_bytes"] <= cap
    reads = hb.stats()["disk_reads"]
    _run(b, x, ref_b, 3)
    assert hb.stats()["disk_reads"] == reads  # B runs from RAM now
    _run(a, x, ref_a, 2)  # and back: A from its second pass
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    assert hb.stats()["spill_bytes"] > 0  # B has no file of its own: its copy was written once
    written = hb.stats()["spill_bytes"]
    _run(b, x, ref_b, 2)
    _run(a, x, ref_a, 2)
    assert hb.stats()["spill_bytes"] == written  # written once, not at every move
    assert ha.host_bytes + hb.host_bytes <= cap
    # alternating every pass moves nothing
    moves = ha.ram_moves["moves"] + hb.ram_moves["moves"]
    for _ in range(3):
        _run(b, x, ref_b, 1)
        _run(a, x, ref_a, 1)
    assert ha.ram_moves["moves"] + hb.ram_moves["moves"] == moves
    hb.detach()
    ha.detach()
    _run(a, x, ref_a, 1)
    _run(b, x, ref_b, 1)


def test_the_running_model_takes_only_the_ram_that_hides_its_disk_time(tmp_path, monkeypatch, alone):
    """Where the disk outlasts a model's compute by the read of 3 blocks a pass, it takes
    about that much RAM (3 blocks, a block more), not all of itself; the waiting model gives
    only what it is short of and keeps the rest of its blocks in RAM."""
    from pinstream.handle import OffloadHandle

    block = None

    def three_blocks_late(st, prev):  # the time the disk takes for 3 blocks at its measured rate
        return 3 * block / (st["disk_gbps"] * 1e6) if st.get("disk_gbps") else 0.0

    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(three_blocks_late))
    # reads reckoned at that measured rate too (the rate the passes saw has a test of its own)
    monkeypatch.setattr(OffloadHandle, "_pass_read_gbps", staticmethod(lambda read, compute, excess, gbps: gbps))
    a, b = _net(seed=1, n=16), _net(seed=2, n=16)
    block = _block_bytes(a)
    x = torch.randn(3, 128)
    with torch.no_grad():
        ref_a, ref_b = a(x), b(x)
    size = sum(p.numel() * p.element_size() for p in a.parameters())
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", str(1.5 * size / GIB))
    spill = tmp_path / "spill"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ha = pinstream.offload(a, device="cpu", engine="host", spill_dir=str(spill), mode="sequential")
        hb = pinstream.offload(b, device="cpu", engine="host", spill_dir=str(spill), mode="sequential")
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    ha._placed = hb._placed = True  # not placed again by their timed compute: one move to look at
    held = hb.host_bytes

    _run(b, x, ref_b, 4)  # 3 passes counted: 9 blocks' time, past the giver's two reads of the 4 it takes
    assert hb.ram_moves["moves"] == 1
    assert held + 2 * block <= hb.host_bytes <= held + 5 * block, (held, hb.host_bytes, block)
    on_disk_a = ha.stats()["disk_blocks"]
    assert 0 < on_disk_a <= 10, on_disk_a  # A gave what B was short of, not all of itself
    assert ha.host_bytes + hb.host_bytes + hb.stats()["read_ring_bytes"] <= int(1.5 * size)
    _run(b, x, ref_b, 2)
    _run(a, x, ref_a, 1)
    hb.detach()
    ha.detach()
    _run(a, x, ref_a, 1)
    _run(b, x, ref_b, 1)


def test_the_ram_that_hides_a_models_disk_time():
    from pinstream.handle import OffloadHandle

    hide = OffloadHandle._hiding_bytes
    # 20 ms a pass beyond the compute at 1.5 GB/s: 30 MB, and a block of 4 MB
    assert hide(10_000_000, 20.0, 1.5, 4_000_000, 10**9) == 10_000_000 + 30_000_000 + 4_000_000
    assert hide(10_000_000, 20.0, 1.5, 4_000_000, 25_000_000) == 25_000_000  # at most what it can hold
    assert hide(10_000_000, 20.0, 0.0, 4_000_000, 25_000_000) == 25_000_000  # no rate measured yet
    assert hide(10_000_000, float("inf"), 1.5, 4_000_000, 25_000_000) == 25_000_000


def test_the_rate_a_models_passes_read_at():
    from pinstream.handle import OffloadHandle

    rate = OffloadHandle._pass_read_gbps
    # 88 MB read by passes of 30 ms compute the disk held 30 ms longer: it read all along, 1.47 GB/s
    assert rate(88_000_000, 30.0, 30.0, 1.0) == pytest.approx(88 / 60)
    assert rate(88_000_000, 30.0, 0.0, 1.0) == 1.0  # it kept up: the rate per busy second
    assert rate(88_000_000, 30.0, float("inf"), 1.0) == 1.0
    assert rate(88_000_000, 0.0, 30.0, 1.0) == 1.0  # no compute timed
    assert rate(0, 30.0, 30.0, 1.0) == 1.0


def test_a_block_changed_in_ram_after_it_came_back_is_written_again_when_it_goes(tmp_path):
    m = _net()
    x = torch.randn(3, 128)
    h = pinstream.offload(m, device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
    h.set_host_budget(0)
    gone = h.stats()["block_on_disk"].index(True)
    h.set_host_budget(None)
    spill = h.stats()["spill_bytes"]
    with torch.inference_mode():  # no version counter: only the bytes say it changed
        m.blocks[gone][0].weight.add_(0.25)
    with torch.no_grad():
        ref = m(x)  # from RAM, patched
    h.set_host_budget(0)
    assert h.stats()["spill_bytes"] > spill  # that block was written again; the others were not
    assert h.stats()["spill_bytes"] - spill <= _block_bytes(m) + 4096
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.detach()


def test_moves_that_fail_leave_every_block_where_it_can_be_read(tmp_path):
    m = _net()
    x = torch.randn(3, 128)
    with torch.no_grad():
        ref = m(x)
    h = pinstream.offload(m, device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
    full = h.host_bytes
    # a full disk while blocks go out: the first stays in RAM, says why, and nothing is lost
    h.runtime.fail_next_spill_writes(1)
    h.set_host_budget(0)
    st = h.stats()
    assert "units meant for disk stay in RAM" in st["spill_error"]
    assert st["disk_blocks"] == 0 and h.host_bytes == full
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.set_host_budget(0)
    assert h.stats()["disk_blocks"] > 0
    # a read error while they come back: a clear error, they stay on disk, the next try works
    h.runtime.fail_next_disk_reads(1)
    with pytest.raises(RuntimeError, match="Input/output error"):
        h.set_host_budget(None)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    h.set_host_budget(None)
    assert h.stats()["disk_blocks"] == 0 and h.host_bytes == full
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    with pytest.raises(pinstream.ModeError, match="host_budget_gb must be a finite number"):
        h.set_host_budget(-1)
    h.detach()


def test_the_time_the_disk_held_a_pass_beyond_its_compute():
    from pinstream.handle import OffloadHandle

    excess = OffloadHandle._disk_excess_ms
    prev = (1000, 10.0, 0.0)  # disk bytes, compute ms, disk wait ms when the pass began
    # 100 MB read at 1 GB/s (100 ms) against 50 ms of compute: the disk held it 50 ms longer
    assert excess({"disk_bytes": 1000 + 100_000_000, "compute_ms": 60.0, "disk_wait_ms": 70.0, "disk_gbps": 1.0},
                  prev) == pytest.approx(50.0)
    # ... at most as long as the host waited for reads (the rest hidden by work not timed as compute)
    assert excess({"disk_bytes": 1000 + 100_000_000, "compute_ms": 60.0, "disk_wait_ms": 20.0, "disk_gbps": 1.0},
                  prev) == pytest.approx(20.0)
    # the same read against 150 ms of compute: it kept up
    assert excess({"disk_bytes": 1000 + 100_000_000, "compute_ms": 160.0, "disk_wait_ms": 5.0, "disk_gbps": 1.0},
                  prev) == 0.0
    # no compute timed: the host's waits for reads
    assert excess({"disk_bytes": 5000, "compute_ms": 10.0, "disk_wait_ms": 0.5, "disk_gbps": 0.0}, prev) == 0.5


def test_a_move_pays_once_the_disk_time_counted_reaches_its_read():
    from pinstream.handle import OffloadHandle

    pays = OffloadHandle._move_pays
    # 55 MB at 1.1 GB/s read in 50 ms: the giver reads them twice at its next turn
    assert not pays(99.0, 55_000_000, 1.1)
    assert pays(100.5, 55_000_000, 1.1)
    assert pays(0.0, 55_000_000, 0.0)  # no disk rate measured yet
    # the moves so far took 10 ms per 10 MB brought back (the givers' moves to disk, the
    # new buffers): 55 ms more for 55 MB
    assert not pays(154.0, 55_000_000, 1.1, (10.0, 10_000_000))
    assert pays(155.5, 55_000_000, 1.1, (10.0, 10_000_000))


class _SampledNet(Net):
    """Net whose forward takes a ComfyUI sampler's transformer_options, as core's models do."""

    def forward(self, x, transformer_options=None):
        return super().forward(x)


def _two_sharing(tmp_path, monkeypatch, x, cls=Net):
    """Two models under a pinning cap of one and a half of them, the disk setting the pace:
    the second starts with blocks on disk. Their outputs on ``x`` as they were, before."""
    from pinstream.handle import OffloadHandle

    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(lambda st, prev: float("inf")))
    torch.manual_seed(1)
    a = cls().eval()
    torch.manual_seed(2)
    b = cls().eval()
    with torch.no_grad():
        refs = a(x), b(x)
    size = sum(p.numel() * p.element_size() for p in a.parameters())
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", str(1.5 * size / GIB))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ha = pinstream.offload(a, device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
        hb = pinstream.offload(b, device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    ha._placed = hb._placed = True  # not placed again by their timed compute: the moves looked at are RAM's
    return a, b, ha, hb, *refs


def test_a_model_told_its_passes_takes_ram_only_where_the_passes_left_gain_it(tmp_path, monkeypatch, alone):
    """With the passes left known, the disk time they would save decides: a model with one
    pass left after this one takes no RAM however slow its disk (by the passes run so far it
    would: the waiting model then reads it all back at its turn), one starting a long run
    takes it at its second pass. Outputs stay full load's."""
    x = torch.randn(3, 128)
    a, b, ha, hb, ref_a, ref_b = _two_sharing(tmp_path, monkeypatch, x)
    hb.expect_passes(2)  # its last two passes: handing over after them
    _run(b, x, ref_b, 2)
    assert hb.ram_moves["moves"] == 0 and ha.stats()["disk_blocks"] == 0
    _run(a, x, ref_a, 1)
    hb.expect_passes(6)
    _run(b, x, ref_b, 2)  # at its second pass 5 are left: it takes the RAM
    assert hb.ram_moves["moves"] == 1 and hb.stats()["disk_blocks"] == 0 and ha.stats()["disk_blocks"] > 0
    _run(b, x, ref_b, 4)  # counted out: the passes run so far stand for those to come again
    _run(a, x, ref_a, 2)  # untold, by the rent counted: an endless disk time pays at once
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    with pytest.raises(ValueError, match=r"expect_passes\(\) takes a count of passes \(an int >= 0\) or None"):
        hb.expect_passes(-1)
    hb.detach()
    ha.detach()


def test_under_a_comfyui_sampler_the_steps_left_come_from_its_sigmas(tmp_path, monkeypatch, alone):
    """The forward's transformer_options (the step's sigmas among the run's sample_sigmas)
    give the passes left, a step's passes counted: Wan 2.2's high-noise expert in its last
    steps takes no RAM; in the first steps of its run it does."""
    from pinstream.handle import sampler_step

    run = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])  # 5 steps
    opts = lambda s: {"transformer_options": {"sigmas": torch.tensor([s, s]), "sample_sigmas": run}}  # noqa: E731
    assert sampler_step(opts(1.0)) == (1.0, 5)
    assert sampler_step(opts(0.4)) == (pytest.approx(0.4), 2)
    assert sampler_step(opts(0.2)) == (pytest.approx(0.2), 1)
    assert sampler_step(opts(0.7)) == (pytest.approx(0.7), 3)  # a sampler's stage between two steps
    assert sampler_step({}) is None and sampler_step(None) is None
    assert sampler_step({"transformer_options": {"sample_sigmas": run}}) is None

    x = torch.randn(3, 128)
    a, b, ha, hb, ref_a, ref_b = _two_sharing(tmp_path, monkeypatch, x, _SampledNet)

    def steps(m, ref, sigmas, per_step=1):
        for s in sigmas:
            for _ in range(per_step):  # cond and uncond in passes of their own
                with torch.no_grad():
                    assert torch.equal(m(x, transformer_options=opts(s)["transformer_options"]), ref)

    steps(b, ref_b, [0.4, 0.2])  # the last two steps of its run
    assert hb.ram_moves["moves"] == 0 and ha.stats()["disk_blocks"] == 0
    steps(a, ref_a, [1.0])
    steps(b, ref_b, [0.4, 0.2], per_step=2)  # two passes a step: 3 passes left at the second
    assert hb.ram_moves["moves"] == 1 and hb.stats()["disk_blocks"] == 0
    steps(a, ref_a, [1.0, 0.8])  # 4 steps left at its second pass: it takes the RAM back
    assert ha.stats()["disk_blocks"] == 0 and hb.stats()["disk_blocks"] > 0
    hb.detach()
    ha.detach()


def test_a_move_that_checks_copies_on_disk_for_the_first_time_is_not_the_pace_of_moves(tmp_path, monkeypatch,
                                                                                       alone):
    """A block's copy on disk is checked (or written) on its first move to disk only: that
    move's time is not counted in the pace later moves are judged by (else one slow first
    move would keep every later one from paying); the moves after it are."""
    from pinstream import handle

    x = torch.randn(3, 128)
    a, b, ha, hb, ref_a, ref_b = _two_sharing(tmp_path, monkeypatch, x)
    _run(b, x, ref_b, 2)  # A's blocks go to disk for the first time: its spill file is written
    assert hb.ram_moves["moves"] == 1 and ha._first_to_disk_bytes > 0
    assert handle._MOVE_COST == [0.0, 0]
    for _ in range(3):
        _run(a, x, ref_a, 2)
        _run(b, x, ref_b, 2)
    assert ha.ram_moves["moves"] + hb.ram_moves["moves"] >= 6
    assert handle._MOVE_COST[0] > 0 and handle._MOVE_COST[1] > 0  # the moves with nothing to check
    hb.detach()
    ha.detach()


def test_a_pace_of_moves_that_turns_moves_down_wears_off(tmp_path, monkeypatch, alone):
    """The pace of the moves so far (one slow move, say) that alone turns a move down loses
    a tenth at each move it turns down, so a move comes; without that, RAM would stay with
    the model that has it for a thousand passes here."""
    from pinstream import handle
    from pinstream.handle import OffloadHandle

    x = torch.randn(3, 128)
    a, b, ha, hb, ref_a, ref_b = _two_sharing(tmp_path, monkeypatch, x)
    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(lambda st, prev: 1e6))
    handle._MOVE_COST[:] = [1e3, 1]  # 1000 ms a byte brought back: a move of 1 MB "costs" 1e9 ms
    _run(b, x, ref_b, 60)
    assert hb.ram_moves["moves"] == 1 and hb.stats()["disk_blocks"] == 0
    assert handle._MOVE_COST[0] < 1e3  # worn off (and measured again by the move)
    hb.detach()
    ha.detach()


class _Block(nn.Module):
    def __init__(self, dim, heavy):
        super().__init__()
        self.a, self.b, self.heavy = nn.Linear(dim, dim), nn.Linear(dim, dim), heavy

    def forward(self, x):
        h = torch.tanh(self.a(x))
        for _ in range(40 if self.heavy else 0):  # compute that no weight bytes show
            h = torch.tanh(h @ h.T @ h * 1e-3)
        return self.b(h)


class _Uneven(nn.Module):
    """Blocks of the same bytes; the first four compute far longer than the rest."""

    def __init__(self, dim=128):
        super().__init__()
        self.blocks = nn.ModuleList(_Block(dim, heavy=i < 4) for i in range(8))

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return x


@timed
def test_blocks_on_disk_are_placed_again_by_their_timed_compute(tmp_path):
    torch.manual_seed(3)
    m = _Uneven().eval()
    x = torch.randn(64, 128)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path, 5.5)
    first = h.stats()["block_on_disk"][:8]
    assert sum(first) == 3 and sum(first[4:]) >= 1, first  # spread by bytes: the light half has some
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    st = h.stats()
    times = st["block_compute_ms"][:8]
    assert min(times[:4]) > 2 * max(times[4:]), times
    now = st["block_on_disk"][:8]
    assert sum(now) == 3 and now != first and sum(now[:4]) == 3, (first, now, times)  # where the compute is
    assert h.ram_moves["moves"] == 1
    for _ in range(3):  # once: the next passes move nothing
        with torch.no_grad():
            assert torch.equal(m(x), ref)
    assert h.ram_moves["moves"] == 1 and h.stats()["block_on_disk"][:8] == now
    h.detach()


@pytest.mark.parametrize("kw", [dict(mode="sequential"), dict(mode="budget", budget_gb=0.5),
                                dict(mode="sequential", transfer_dtype="compressed"), dict(mode="model_offload")],
                         ids=["sequential", "budget", "coded", "model_offload"])
def test_blocks_coming_back_are_read_through_the_next_pass(tmp_path, kw):
    """set_host_budget(read_through=True): nothing is read by the move; the next pass reads
    each block coming back once, into its RAM, and uploads it from there; from then on it is
    in RAM (nothing more is read), outputs are full load's, and the host bytes counted at the
    move are those held after."""
    dtype = torch.bfloat16 if kw.get("transfer_dtype") == "compressed" else torch.float32
    m = _net(dtype=dtype)
    x = torch.randn(3, 128, dtype=dtype)
    with torch.no_grad():
        ref = m(x)
    h = _offload(m, tmp_path, 2, **kw)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    st = h.stats()
    on_disk = st["block_on_disk"]
    assert sum(on_disk) >= 4
    h.runtime.unload()  # no read ahead in flight: every block coming back is read by the pass
    read0, coming = h.stats()["disk_bytes_total"], st["disk_block_bytes"]
    held = h.runtime.set_host_budget(-1, None, False, True)
    st = h.stats()
    assert st["block_arriving"] == on_disk and st["block_on_disk"] == on_disk
    assert st["disk_bytes_total"] == read0  # the move read nothing
    assert held == h.runtime.host_bytes
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    st = h.stats()
    assert not any(st["block_on_disk"]) and not any(st["block_arriving"]) and st["arrival_error"] == ""
    assert st["disk_blocks"] == 0 and h.runtime.host_bytes == held
    assert st["disk_bytes_total"] - read0 == coming  # each block that came back read once, by the pass
    read1 = st["disk_bytes_total"]
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert h.stats()["disk_bytes_total"] == read1  # in RAM now
    h.detach()
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_a_move_or_a_read_through_that_fails_warns_and_the_passes_are_right(tmp_path, monkeypatch, alone):
    from pinstream.handle import OffloadHandle

    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(lambda st, prev: float("inf")))
    a, b = _net(seed=1), _net(seed=2)
    x = torch.randn(3, 128)
    with torch.no_grad():
        ref_b = b(x)
    size = sum(p.numel() * p.element_size() for p in a.parameters())
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", str(1.5 * size / GIB))
    kw = dict(device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
    ha = pinstream.offload(a, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hb = pinstream.offload(b, **kw)
    with torch.no_grad():
        assert torch.equal(b(x), ref_b)
    hb.runtime.fail_next_host_allocations(1)  # the first buffer of its blocks coming back
    with pytest.warns(RuntimeWarning, match="host RAM could not follow the model that runs"), torch.no_grad():
        assert torch.equal(b(x), ref_b)
    assert hb.stats()["disk_blocks"] > 0
    # blocks coming back are read through the pass: one whose read into its RAM fails is read
    # again through the read ring (the pass is right), stays on disk, and the next pass says so
    hb.unload()  # no read ahead in flight: the next read is the first of its blocks coming back
    hb.runtime.fail_next_disk_reads(1)  # that read fails
    with torch.no_grad():
        assert torch.equal(b(x), ref_b)
    left = hb.stats()["disk_blocks"]
    assert left > 0 and "Input/output error" in hb.stats()["arrival_error"]
    with pytest.warns(RuntimeWarning, match="blocks could not come back to RAM.*Input/output error"), torch.no_grad():
        assert torch.equal(b(x), ref_b)  # and it moves again
    with torch.no_grad():
        assert torch.equal(b(x), ref_b)
    assert hb.stats()["disk_blocks"] == 0 and ha.stats()["disk_blocks"] > 0
    hb.detach()
    ha.detach()


def test_memory_of_a_model_whose_blocks_moved_comes_back_when_it_is_dropped(tmp_path):
    import gc

    gc.disable()
    try:
        base = _C.live_bytes()
        fds = len(os.listdir("/proc/self/fd"))
        m = _net()
        x = torch.randn(3, 128)
        h = pinstream.offload(m, device="cpu", engine="host", spill_dir=str(tmp_path), mode="sequential")
        with torch.no_grad():
            m(x)
        h.set_host_budget(2 * _block_bytes(m) / GIB)  # out to the spill file, chunk-mates to buffers of their own
        with torch.no_grad():
            m(x)
        h.set_host_budget(None)  # back into buffers of their own
        with torch.no_grad():
            m(x)
        assert _C.live_bytes()["host"] > base["host"]
        spill = h.stats()["spill_path"]
        del m, h  # the model owns its handle: no garbage collection needed
        live = _C.live_bytes()
        assert live["host"] == base["host"] and live["pinned"] == base["pinned"], (live, base)
        assert not os.path.exists(spill) and len(os.listdir("/proc/self/fd")) == fds
    finally:
        gc.enable()
