"""`python -m pinstream bench disk`: the disk tier on this machine, measured.

1. The disk's own sequential read rate, on one file of the demo model's size
   (--size-mb) written to the spill directory, read whole by the disk tier's reader
   (pinstream._C.DiskReader: 4 threads, 8 MiB chunks, into 4 KiB-aligned memory):
     o_direct   O_DIRECT, the way the disk tier reads (the page cache is bypassed)
     buffered   through the page cache, whose pages of the file are dropped before each
                pass (posix_fadvise DONTNEED; whether the kernel took the advice is
                printed), so that it measures the disk and not RAM
     o_direct_block_requests
                O_DIRECT again in requests of one block of the model, prefetch +
                read-ahead of them in flight: the pattern the disk tier reads in
     o_direct_io_uring
                O_DIRECT through io_uring (where the build and the kernel allow it)
   Where the file system refuses O_DIRECT (tmpfs) the reader reads buffered, and the
   o_direct figures are null with the reason.
2. PinStream's disk tier on the demo model (bf16, preset --preset) with a host budget
   that puts most blocks on disk (--host-budget-fraction of the model), sequential mode,
   on cuda when available else the host engine: after a warm-up step, --steps steps of a
   short latent (so that the disk, not the compute, sets the pace), then the bytes read
   from disk per second of busy disk time (the reader had a read in flight: the
   runtime's disk_gbps) and per second of step wall time, and passes with no compute
   (acquire/release of every block: the disk tier alone). Per-step figures count from
   the end of the first timed step to the end of the last (the first step's own count
   misses the blocks read ahead for it before the stats were reset), and passes whose
   blocks each hold the host for the steps' mean compute time of a block, asleep
   (compute_off_cpu: on a machine of few cores the host engine's compute takes a core the
   I/O path needs; a GPU's compute does not). The outputs are
   compared with full_load's. The ratio pinstream_disk_gbps / disk_read_gbps.o_direct
   is the disk tier's share of the disk (target >= 0.9). On a shared virtual disk, fresh
   files of one size read at rates tens of percent apart, and one file's rate moves
   between seconds: each run's spill file is also read whole with O_DIRECT (2 passes)
   right before its timed steps and right after its passes with no compute, and
   ratio_to_same_file_o_direct compares the disk tier with the disk on those very
   bytes over the same minutes.
   RSS: the process's RSS after a run (the host engine's device arena, host memory
   here, taken out) against its RSS right before that run's offload, less the model's
   bytes (they leave RAM: the budget's share is pinned, the rest goes to disk), plus the
   host budget and the read ring, 5% over those two allowed. The first run is judged
   (nothing ran before it with this model in the process); every run's figure is kept.
3. The same with the blocks held and spilled in the exact coded form
   (transfer_dtype="compressed"): coded_weights_gbps is the stored (plain) bytes of the
   blocks read per second of busy disk time, target >= 1.3x the disk's O_DIRECT rate.
2 and 3 run in --rounds rounds (default 3), each after a fresh O_DIRECT measurement of
the disk (and one more after the last): a shared disk's rate drifts, so the disk and the
disk tier are sampled over the same minutes; the rates are totals over the rounds.
4. Two models taking turns (Wan 2.2's experts): the stall at the switch, cold and with the
   warm standby ("switch").
5. The two for two prompts under one pinning cap: fixed budgets against RAM following the
   model that runs, with the steps told and not, and moves forced ("shared_ram"; see
   shared_run); then the same with each block asleep for half its read at the disk tier's
   rate instead of computing, 10 steps each ("shared_ram_compute_off_cpu": the compute off
   the CPU, as under a GPU, where the disk's cost to a pass is its time beyond the compute
   and not the CPU its reads take from the host engine's compute).

Every figure printed and written is measured in this run. --json PATH writes them:
{"disk_read_gbps": {"o_direct", "buffered", "o_direct_block_requests"},
 "pinstream_disk_gbps", "pinstream_disk_wall_gbps", "transfer_only_disk_gbps",
 "ratio_to_o_direct", "coded_weights_gbps", "coded_ratio_to_o_direct",
 "same_file_o_direct_gbps", "ratio_to_same_file_o_direct", "coded_same_file_o_direct_gbps",
 "compute_off_cpu_disk_gbps", "compute_off_cpu_ratio_to_o_direct",
 "compute_off_cpu_ratio_to_same_file_o_direct",
 "coded_ratio_to_same_file_o_direct", "rss_bytes",
 "rss_limit_bytes", "host_budget_bytes", "read_ring_bytes", "disk_how", "spill_dir",
 "file_system", "disk", "device", "engine", "torch", "date", ...}.
--quick: the tiny preset, an 8 MiB file, 2 steps (seconds; what CI runs).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import sys
import time
import warnings

from pinstream.modes import READ_AHEAD, read_ring_bytes

MIB = 1024**2
GIB = 1024**3
ALIGN = 4096
RAM_FILE_SYSTEMS = ("tmpfs", "ramfs")
# the shared-RAM run with the compute off the CPU: a block's compute against its read at the
# disk tier's rate (the disk sets the pace, as for Wan 14B's blocks at a short length on a GPU)
SHARED_COMPUTE_OF_READ = 0.5


# --------------------------------------------------------------------------- machine


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def malloc_trim() -> None:
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def file_system(path: str) -> dict:
    """The mount that holds ``path``: mount point, file system type, source, options."""
    real = os.path.realpath(path)
    best = None
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4:
                continue
            source, mount, fstype, opts = parts[0], parts[1].replace("\\040", " "), parts[2], parts[3]
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and (best is None or len(mount) > len(best[1])):
                best = (source, mount, fstype, opts)
    if best is None:
        return {"mount": None, "type": "unknown", "source": None}
    return {"mount": best[1], "type": best[2], "source": best[0], "options": best[3]}


def block_device(source: str | None) -> dict | None:
    """What sysfs says of the block device behind a mount source (/dev/vda, /dev/nvme0n1p2)."""
    if not source or not source.startswith("/dev/"):
        return None
    name = os.path.basename(os.path.realpath(source))
    base = f"/sys/class/block/{name}"
    if not os.path.isdir(base):
        return None
    if os.path.exists(f"{base}/partition"):  # a partition: its disk is the parent folder
        name = os.path.basename(os.path.dirname(os.path.realpath(base)))
        base = f"/sys/class/block/{name}"

    def read(rel):
        with contextlib.suppress(OSError), open(f"{base}/{rel}") as f:
            return f.read().strip()
        return None

    out = {"name": name}
    driver = os.path.realpath(f"{base}/device/driver") if os.path.exists(f"{base}/device/driver") else None
    if driver:
        out["driver"] = os.path.basename(driver)
    for key, rel in (("model", "device/model"), ("vendor", "device/vendor"), ("rotational", "queue/rotational"),
                     ("cache_type", "cache_type")):
        v = read(rel)
        if v:
            out[key] = v
    sectors = read("size")
    if sectors and sectors.isdigit():
        out["size_bytes"] = int(sectors) * 512
    return out


def describe_disk(fs: dict, dev: dict | None) -> str:
    s = f"{fs.get('type')} on {fs.get('source')} (mounted at {fs.get('mount')})"
    if dev:
        bits = [dev.get("driver"), dev.get("model"), dev.get("vendor") and f"vendor {dev['vendor']}",
                dev.get("size_bytes") and f"{dev['size_bytes'] / 1e9:.0f} GB",
                dev.get("rotational") is not None and f"rotational={dev.get('rotational')}"]
        s += ": " + ", ".join(b for b in bits if b)
    return s


# --------------------------------------------------------------------------- raw reads


def aligned_buffer(nbytes: int):
    """A uint8 CPU tensor of ``nbytes`` in its own anonymous mapping: page-aligned (O_DIRECT
    reads straight into it, as into the disk tier's ring), and given back to the system when
    freed. (Not from malloc: freeing a large malloc'd buffer raises glibc's mmap threshold,
    and the disk tier's own allocations in the runs after it would then stay in the heap and
    count in their RSS.)"""
    import mmap

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": it is writable
        return torch.frombuffer(mmap.mmap(-1, max(1, nbytes)), dtype=torch.uint8)[:nbytes]


def write_file(path: str, size: int, seed: int = 0) -> float:
    """``size`` random bytes (incompressible) written to ``path`` and synced; seconds. The
    bytes are made in one mapped buffer (see aligned_buffer: no large malloc)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    chunk = 64 * MIB
    buf = aligned_buffer(min(chunk, size))
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            part = buf[:n]
            torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g, out=part)
            f.write(memoryview(part.numpy()))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def read_passes(reader, fid: int, size: int, *, min_passes: int, min_s: float, piece: int = 256 * MIB,
                before_pass=None) -> dict:
    """Whole-file sequential reads (requests of up to ``piece`` bytes, one at a time,
    each split over the reader's threads) until ``min_passes`` passes and ``min_s``
    seconds; GB/s = bytes / seconds of the reads."""
    buf = aligned_buffer(min(size, piece))
    rates, total_b, total_s, hooks = [], 0, 0.0, []
    while len(rates) < min_passes or total_s < min_s:
        if before_pass is not None:
            hooks.append(before_pass())
        t0 = time.perf_counter()
        off = 0
        while off < size:
            n = min(piece, size - off)
            reader.read(fid, off, buf[:n])
            off += n
        dt = time.perf_counter() - t0
        rates.append(size / dt / 1e9)
        total_b += size
        total_s += dt
        if len(rates) >= 50:
            break
    return {"gbps": total_b / total_s / 1e9, "pass_gbps": rates, "passes": len(rates), "seconds": total_s,
            "before_pass": hooks}


def read_blocks(reader, fid: int, size: int, block: int, depth: int, *, min_passes: int, min_s: float) -> dict:
    """Sequential O_DIRECT reads of the file in ``block``-byte requests with ``depth`` of
    them in flight, each thread into a buffer of its own (calibrate.read_in_requests, as the
    runtime's probe reads): the disk tier's pattern."""
    from pinstream.calibrate import read_in_requests

    block = max(ALIGN, block // ALIGN * ALIGN)
    bufs = [aligned_buffer(block) for _ in range(depth)]
    total_b, total_s, passes = 0, 0.0, 0
    while passes < min_passes or total_s < min_s:
        t0 = time.perf_counter()
        read_in_requests(reader, fid, size, block, depth, lambda k, off, n: bufs[k][:n])
        total_s += time.perf_counter() - t0
        total_b += size
        passes += 1
        if passes >= 50:
            break
    return {"gbps": total_b / total_s / 1e9, "passes": passes, "request_bytes": block, "in_flight": depth}


def same_file_rate(path: str, passes: int = 2) -> dict | None:
    """The disk's own sequential O_DIRECT rate on ``path`` (whole-file passes, as for the
    test file); None where its file system refuses O_DIRECT."""
    from pinstream import _C

    reader = _C.DiskReader(threads=4, direct=True)
    fid = reader.open(path)
    if not reader.direct(fid):
        return None
    size = reader.size(fid)
    out = read_passes(reader, fid, size, min_passes=passes, min_s=0.0)
    out["bytes"] = size
    return out


class TestFile:
    """A file of random bytes in the spill directory, read by the disk tier's reader
    (O_DIRECT, and buffered with the file's pages dropped before each pass); removed by close()."""

    def __init__(self, spill_dir: str, size: int):
        from pinstream import _C

        self._C = _C
        os.makedirs(spill_dir, exist_ok=True)
        self.path = os.path.join(spill_dir, f"pinstream-bench-disk-{os.getpid()}.bin")
        self.size = size
        self.write_s = write_file(self.path, size)
        self.direct = _C.DiskReader(threads=4, direct=True)
        self.fid = self.direct.open(self.path)
        self.how = self.direct.how(self.fid)
        self.o_direct_ok = bool(self.direct.direct(self.fid))

    def o_direct(self, *, min_passes: int, min_s: float) -> dict | None:
        if not self.o_direct_ok:
            return None
        return read_passes(self.direct, self.fid, self.size, min_passes=min_passes, min_s=min_s)

    def io_uring(self, *, min_passes: int, min_s: float) -> dict:
        """O_DIRECT through io_uring (one ring thread, reads of at most 1 MiB, 32 in flight),
        where the build and the kernel allow it: {"gbps": None, "how": why} otherwise."""
        try:
            reader = self._C.DiskReader(threads=4, direct=True, io_uring=True)
        except TypeError:  # a runtime built before io_uring
            return {"gbps": None, "how": "this build's DiskReader has no io_uring"}
        fid = reader.open(self.path)
        how = reader.how(fid)
        if not how.startswith("io_uring"):
            return {"gbps": None, "how": how}
        out = read_passes(reader, fid, self.size, min_passes=min_passes, min_s=min_s)
        out["how"] = how
        return out

    def o_direct_blocks(self, block: int, depth: int, *, min_passes: int, min_s: float) -> dict | None:
        if not self.o_direct_ok:
            return None
        return read_blocks(self.direct, self.fid, self.size, block, depth, min_passes=min_passes, min_s=min_s)

    def buffered(self, *, min_passes: int, min_s: float) -> dict:
        reader = self._C.DiskReader(threads=4, direct=False)
        fid = reader.open(self.path)
        out = read_passes(reader, fid, self.size, min_passes=min_passes, min_s=min_s,
                          before_pass=lambda: bool(self._C.drop_page_cache(self.path)))
        out["how"] = reader.how(fid)
        out["page_cache_drops"] = out.pop("before_pass")
        return out

    def close(self) -> None:
        self.direct = None
        with contextlib.suppress(OSError):
            os.remove(self.path)


# --------------------------------------------------------------------------- the disk tier


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model, inputs, device):
    import torch

    with torch.inference_mode():
        out = model(*inputs)
    _sync(device)
    return out


def _passes(h, ids, count: int, drop, device, sleep_s: float = 0.0) -> dict:
    """``count`` passes of acquire / (sleep ``sleep_s``) / release of every block through the
    runtime; disk figures counted from the end of the first (a page-cache drop is not timed)."""
    rt = h.runtime
    marks = []
    drop_s = 0.0
    _sync(device)
    for _ in range(max(2, count)):
        rt.begin_pass()
        for b in ids:
            rt.acquire(b)
            if sleep_s:
                time.sleep(sleep_s)
            rt.release(b)
        rt.end_pass()
        _sync(device)
        a = h.stats()
        marks.append((time.perf_counter() - drop_s, int(a["disk_bytes"]), int(a["disk_bytes_total"]),
                      float(a["disk_busy_ms"])))
        t_drop = time.perf_counter()
        drop()
        drop_s += time.perf_counter() - t_drop
    (t0, b0, total0, busy0), (t1, b1, total1, busy1) = marks[0], marks[-1]
    n = len(marks) - 1
    return {"passes": n, "seconds": t1 - t0, "ms_per_pass": 1000.0 * (t1 - t0) / n, "disk_bytes": b1 - b0,
            "disk_bytes_total": total1 - total0, "busy_ms": busy1 - busy0, "sleep_ms_per_block": 1000.0 * sleep_s,
            "disk_gbps": (total1 - total0) / ((busy1 - busy0) / 1000.0) / 1e9 if busy1 > busy0 else 0.0,
            "wall_gbps": (b1 - b0) / (t1 - t0) / 1e9 if t1 > t0 else 0.0}


def stream_run(model, inputs, *, device, engine, link_gbps, transfer: str, host_budget_bytes: int, prefetch: int,
               steps: int, transfer_passes: int, spill_dir: str, reference, model_bytes: int) -> dict:
    """The model offloaded in sequential mode with ``host_budget_bytes`` of it in host
    RAM and the rest on disk: a warm-up step, ``steps`` timed steps, then
    ``transfer_passes`` passes of acquire/release with no compute; the disk figures."""
    import pinstream

    gc.collect()
    malloc_trim()
    rss_before = rss()  # the whole model in pageable RAM
    rss_base = rss_before - model_bytes
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*live on disk.*", category=RuntimeWarning)
        t0 = time.perf_counter()
        h = pinstream.offload(model, mode="sequential", prefetch=prefetch, device=device, engine=engine,
                              link_gbps=link_gbps if engine == "host" else None, transfer_dtype=transfer,
                              host_budget_gb=host_budget_bytes / GIB, spill_dir=spill_dir)
        offload_s = time.perf_counter() - t0
    try:
        st0 = h.stats()
        if st0.get("spill_error"):
            raise RuntimeError(f"the spill file could not be written: {st0['spill_error']}")
        if not st0.get("disk_blocks"):
            raise RuntimeError("no block went to disk under this host budget; lower --host-budget-fraction")
        # where the runtime reads the spill file buffered (O_DIRECT refused, or measured slower),
        # the page cache would serve later passes from RAM: its pages of the file are dropped
        # after each step (untimed), so that every step reads the disk
        from pinstream import _C

        spill_path = st0["spill_path"]
        buffered = str(st0.get("disk_how", "")).startswith("buffered")

        def drop():
            if buffered and spill_path:
                _C.drop_page_cache(spill_path)

        _forward(model, inputs, device)  # warm-up: learns the order, loads, allocates the read ring
        drop()
        # the disk's own O_DIRECT rate on this very file, before the steps and after the passes:
        # fresh files of one size read at rates tens of percent apart on a shared virtual disk
        same_file = [r for r in [same_file_rate(spill_path)] if r] if spill_path else []
        h.reset_stats()
        passes0 = int(h.stats()["passes"])
        times, after = [], []
        out = None
        for _ in range(max(2, steps)):
            _sync(device)
            t0 = time.perf_counter()
            out = _forward(model, inputs, device)
            times.append(time.perf_counter() - t0)
            a = h.stats()
            after.append((int(a["disk_bytes"]), int(a["disk_bytes_total"]), float(a["disk_busy_ms"]),
                          float(a["disk_wait_ms"]), float(a["disk_request_ms"])))
            drop()
        st = h.stats()
        gc.collect()
        malloc_trim()
        rss_after = rss()
        arena = int(st.get("device_bytes", 0)) if engine == "host" else 0
        diff = float((out.float().cpu() - reference).abs().max().item())
        passes = int(st["passes"]) - passes0  # the runtime's pass count is not reset by reset_stats
        wall = sum(times)
        on_disk = list(st["block_on_disk"])
        ids = list(h._block_ids)
        plain_on_disk = sum(b for b, i in zip(h.discovery.block_bytes, ids, strict=True) if on_disk[i])
        res = {
            "transfer_dtype": transfer,
            "prefetch": prefetch,
            "offload_s": offload_s,
            "steps": len(times),
            "passes": passes,
            "step_ms": 1000.0 * wall / len(times),
            "steps_ms": [1000.0 * t for t in times],
            "max_abs_diff": diff,
            "host_budget_bytes": int(st["host_budget_bytes"]),
            "disk_blocks": int(st["disk_blocks"]),
            "blocks": len(ids),
            "disk_block_bytes": int(st["disk_block_bytes"]),
            "disk_block_plain_bytes": int(plain_on_disk),
            "spill_bytes": int(st["spill_bytes"]),
            "disk_how": st["disk_how"],
            "page_cache_dropped_between_steps": buffered,
            "read_ring_bytes": int(st["read_ring_bytes"]),
            "pinned_bytes": int(st.get("pinned_bytes", 0)),
            "disk_reads": int(st["disk_reads"]),
            "disk_bytes": int(st["disk_bytes"]),
            "disk_bytes_total": int(st["disk_bytes_total"]),
            "disk_busy_ms": float(st["disk_busy_ms"]),
            "disk_wait_ms": float(st["disk_wait_ms"]),
            "disk_gbps_all_steps": float(st["disk_gbps"]),
            # steady state, from the end of the first timed step to the end of the last: the
            # first step's own count misses the blocks read ahead for it before the reset
            "steady": {"steps": len(times) - 1, "disk_bytes": after[-1][0] - after[0][0],
                       "disk_bytes_total": after[-1][1] - after[0][1], "busy_ms": after[-1][2] - after[0][2],
                       "wait_ms": after[-1][3] - after[0][3], "wall_s": sum(times[1:]),
                       "request_ms": after[-1][4] - after[0][4]},
            "upload_gbps": float(st.get("upload_gbps", 0.0)),
            "stall_ms": float(st.get("stall_ms", 0.0)),
            "suggested_prefetch": st.get("suggested_prefetch"),
            "disk_read_misses": st.get("disk_read_misses"),
            # reads in flight when the host began to wait (the awaited one included), on average
            "disk_reads_in_flight_at_waits": (st["disk_miss_reads_in_flight"] / st["disk_read_misses"]
                                              if st.get("disk_read_misses") else None),
            "rss_bytes": int(rss_after),
            "device_arena_bytes": arena,
            # over the RSS before offload less the model's bytes
            "rss_before_offload_bytes": int(rss_before),
            "rss_over_base_bytes": int(rss_after - arena - rss_base),
            # before offload the process held the whole model in (pageable) RAM: without it, plus
            # the host budget and the read ring (and the host engine's device arena), 5% over them allowed
            "rss_limit_bytes": int(rss_base + arena + 1.05 * (int(st["host_budget_bytes"]) + int(st["read_ring_bytes"]))),
        }
        res["rss_within_limit"] = res["rss_bytes"] <= res["rss_limit_bytes"]
        sd = res["steady"]
        res["disk_bytes_per_step"] = sd["disk_bytes"] // max(1, sd["steps"])
        res["disk_gbps"] = sd["disk_bytes_total"] / (sd["busy_ms"] / 1000.0) / 1e9 if sd["busy_ms"] > 0 else 0.0
        res["disk_wall_gbps"] = sd["disk_bytes"] / sd["wall_s"] / 1e9 if sd["wall_s"] > 0 else 0.0
        res["disk_wait_ms_per_step"] = sd["wait_ms"] / max(1, sd["steps"])
        # reads in flight on average while the disk was busy (each read's time from submit to done,
        # summed, over the busy time)
        res["disk_reads_in_flight"] = sd["request_ms"] / sd["busy_ms"] if sd["busy_ms"] > 0 else None
        if transfer == "compressed":
            res["coded_ratio"] = float(st.get("exact_ratio", 1.0))
            # every disk block is read once a pass: the plain bytes delivered are the coded bytes
            # read scaled by the blocks' plain / coded size
            scale = plain_on_disk / max(1, int(st["disk_block_bytes"]))
            res["steady"]["plain_bytes_total"] = int(sd["disk_bytes_total"] * scale)
            res["steady"]["plain_bytes"] = int(sd["disk_bytes"] * scale)
            res["coded_weights_gbps"] = res["disk_gbps"] * scale
            res["coded_weights_wall_gbps"] = res["disk_wall_gbps"] * scale
        if transfer_passes:
            # passes with no compute: acquire/release of every block (the disk tier alone); then
            # passes whose blocks each hold the host for the mean compute time of a block in the
            # steps above, asleep: compute that leaves the CPU to the I/O path, as a GPU's does
            res["transfer_only"] = _passes(h, ids, transfer_passes, drop, device)
            per_block_s = sum(times[1:]) / max(1, len(times) - 1) / max(1, len(ids))
            res["compute_off_cpu"] = _passes(h, ids, transfer_passes, drop, device, per_block_s)
        if same_file:
            same_file.append(same_file_rate(spill_path))
            n, secs = sum(x["passes"] for x in same_file) * same_file[0]["bytes"], sum(x["seconds"] for x in same_file)
            res["same_file_o_direct"] = {"gbps": n / secs / 1e9, "bytes": n, "seconds": secs,
                                         "before_after_gbps": [x["gbps"] for x in same_file]}
        res["spill_path"] = st["spill_path"]
    finally:
        h.detach()
        del h
        gc.collect()
    res["spill_removed"] = not os.path.exists(res["spill_path"])
    return res


# --------------------------------------------------------------------------- command line


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pinstream bench disk", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset, an 8 MiB file, 2 steps: seconds (CI)")
    ap.add_argument("--size-mb", type=float, default=None,
                    help="size of the file the disk's own rate is read from (default: the model's size)")
    ap.add_argument("--preset", default=None, help="the demo model's preset (default demo; --quick: tiny)")
    ap.add_argument("--layers", type=int, default=None, help="override the preset's number of blocks")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"], help="weights dtype (default bf16)")
    ap.add_argument("--host-budget-fraction", type=float, default=0.2,
                    help="host budget as a fraction of the model (default 0.2: most blocks on disk)")
    ap.add_argument("--prefetch", type=int, default=1, help="blocks uploaded ahead (default 1)")
    ap.add_argument("--share-fraction", type=float, default=0.6,
                    help="two models taking turns with host RAM for 2 x this fraction of one: fixed halves against "
                         "RAM that follows the model that runs (default 0.6)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 10; --quick 2)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of (the disk's O_DIRECT rate, the disk tier as stored, coded) (default 3; --quick 1)")
    ap.add_argument("--frames", type=int, default=1, help="latent frames (default 1)")
    ap.add_argument("--size", type=int, default=8, help="latent height and width (default 8: 16 tokens, "
                                                         "so that the disk and not the compute sets the pace)")
    ap.add_argument("--spill-dir", default=None,
                    help="where the test file and spill files go (default: PINSTREAM_SPILL_DIR, else "
                         "~/.cache/pinstream/spill)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--link-gbps", type=float, default=16.0, help="host engine: emulated link GB/s (default 16)")
    ap.add_argument("--json", dest="json_path", default=None, help="write the figures as JSON to this path")
    args = ap.parse_args(argv)
    if not 0 < args.host_budget_fraction < 1:
        ap.error("--host-budget-fraction must be in (0, 1)")
    if not 0 < args.share_fraction < 1:
        ap.error("--share-fraction must be in (0, 1)")
    if args.size_mb is not None and args.size_mb <= 0:
        ap.error("--size-mb must be > 0")
    args.preset = args.preset or ("tiny" if args.quick else "demo")
    args.steps = args.steps or (2 if args.quick else 10)
    if args.quick and args.size_mb is None:
        args.size_mb = 8.0
    return args


def _ratio(a, b):
    return a / b if a and b else None


def run(args) -> dict:
    import torch

    import pinstream
    from pinstream.demo_model import WanTransformer
    from pinstream.paths import spill_dir as default_spill_dir
    from pinstream.native import load_native

    load_native()
    dev = torch.device(args.device) if args.device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    engine = "cuda" if dev.type == "cuda" else "host"
    if dev.type == "cpu":
        # one intra-op thread: small ops on small CPU machines otherwise pay
        # milliseconds per op waking torch's thread pool, and the compute would set the pace
        torch.set_num_threads(1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    spill = default_spill_dir(args.spill_dir)
    os.makedirs(spill, exist_ok=True)
    fs = file_system(spill)
    blk = block_device(fs.get("source"))
    res: dict = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "engine": engine if engine == "cuda" else f"host (emulated link {args.link_gbps:g} GB/s)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "os": _os_release(),
        "cpus": os.cpu_count(),
        "pinstream": getattr(pinstream, "__version__", "unknown"),
        "spill_dir": spill,
        "file_system": fs,
        "disk": blk,
        "disk_description": describe_disk(fs, blk),
        "quick": bool(args.quick),
        # other work on the machine shares its CPUs and disk with the measurement
        "load_average_at_start": list(os.getloadavg()),
    }
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    gc.collect()
    malloc_trim()
    rss_before_model = rss()
    overrides = {"dtype": dtype}
    if args.layers is not None:
        overrides["num_layers"] = args.layers
    model = WanTransformer.from_preset(args.preset, **overrides).eval()
    model.requires_grad_(False)
    x = torch.randn(1, model.in_dim, args.frames, args.size, args.size, generator=g).to(device=dev, dtype=dtype)
    t = torch.tensor([500.0], device=dev, dtype=dtype)
    ctx = torch.randn(1, 32, model.text_dim, generator=g).to(device=dev, dtype=dtype)
    inputs = (x, t, ctx)
    from pinstream.discovery import discover_blocks

    disc = discover_blocks(model)
    model_bytes = disc.total_bytes
    size = int(args.size_mb * MIB) if args.size_mb else int(model_bytes)
    size = max(ALIGN, size // ALIGN * ALIGN)
    res["rss_before_model_bytes"] = rss_before_model
    res["model"] = {"preset": args.preset, "dtype": args.dtype, "bytes": int(model_bytes), "blocks": len(disc.blocks),
                    "largest_block_bytes": int(disc.largest_block_bytes), "nonblock_bytes": int(disc.nonblock_bytes),
                    "latent": list(x.shape)}
    _log(f"device {res['device']}, engine {res['engine']}, torch {res['torch']}")
    _log(f"spill dir {spill}: {res['disk_description']}")
    _log(f"model: demo preset {args.preset}, {len(disc.blocks)} blocks, {model_bytes / MIB:.1f} MiB {args.dtype}, "
         f"largest block {disc.largest_block_bytes / MIB:.2f} MiB; latent {tuple(x.shape)}")

    # 1. the disk's own rate
    min_passes, min_s = (2, 0.0) if args.quick else (3, 2.0)
    depth = args.prefetch + READ_AHEAD  # the read ring's buffers
    _log(f"disk: writing a {size / MIB:.1f} MiB file and reading it whole with DiskReader (4 threads, 8 MiB chunks)")
    tf = TestFile(spill, size)
    try:
        res.update(_measure(args, res, model, inputs, tf, disc, dev, engine, spill, depth, min_passes, min_s))
    finally:
        tf.close()
    # 4. two models taking turns: the stall at the switch, cold and with the warm standby
    torch.manual_seed(7)
    low = WanTransformer.from_preset(args.preset, **overrides).eval()
    low.requires_grad_(False)
    _log("switch: two models taking turns, each with the same host budget share")
    res["switch"] = switch_run(model, low, inputs, device=dev, engine=engine, link_gbps=args.link_gbps,
                               host_budget_bytes=int(args.host_budget_fraction * model_bytes), prefetch=args.prefetch,
                               steps=2 if args.quick else 4, spill_dir=spill)
    for kind, r in res["switch"].items():
        _log(f"  {kind}: first step of the waiting model {r['first_step_ms']:.1f} ms, steady {r['steady_step_ms']:.1f} "
             f"ms: stall at the switch {r['stall_ms']:.1f} ms, {r['first_step_disk_read_misses']} read misses, "
             f"bit-identical {r['bit_identical']}")
    # 5. the same two models for two prompts: fixed host budgets against RAM that follows the model that runs
    def shared(steps: int, block_sleep_s: float | None = None) -> dict:
        r = shared_run(model, low, inputs, device=dev, engine=engine, link_gbps=args.link_gbps,
                       fraction=args.share_fraction, model_bytes=model_bytes, prefetch=args.prefetch, steps=steps,
                       spill_dir=spill, block_sleep_s=block_sleep_s)
        for kind, v in r["setups"].items():
            _log(f"  {kind}: second prompt {v['prompt_ms']:.1f} ms, {v['disk_bytes_per_prompt'] / MIB:.1f} MiB read "
                 f"from disk per prompt, steady step {v['steady_step_ms']:.1f} ms, moves {v['move_ms']:.1f} ms"
                 + ("" if v["bit_identical"] is None else f", bit-identical {v['bit_identical']}"))
        return r

    _log(f"shared RAM: two models taking turns with host RAM for {2 * args.share_fraction:g} of one")
    res["shared_ram"] = shared(3 if args.quick else 6)
    # 6. the same with the compute off the CPU, as under a GPU: each block asleep for half its
    # read at the disk tier's rate (the disk sets the pace, twice the compute), more steps
    gbps = res.get("pinstream_disk_gbps") or 1.0
    sleep_s = SHARED_COMPUTE_OF_READ * (model_bytes - disc.nonblock_bytes) / len(disc.blocks) / (gbps * 1e9)
    steps = 3 if args.quick else 10
    _log(f"shared RAM, the compute off the CPU: each block {sleep_s * 1e3:.2f} ms asleep, {steps} steps each")
    res["shared_ram_compute_off_cpu"] = shared(steps, sleep_s)
    res["load_average_at_end"] = list(os.getloadavg())
    return res


@contextlib.contextmanager
def _blocks_asleep(models, seconds: float):
    """Each block of ``models`` (their PinStream hooks kept) holds the host ``seconds``
    asleep and passes its input on, instead of computing: compute that leaves the CPU to
    the I/O path, as a GPU's does."""
    from pinstream.discovery import discover_blocks

    def asleep(x, *_args, **_kwargs):
        time.sleep(seconds)
        return x

    blocks = [b for m in models for _name, b in discover_blocks(m).blocks]
    for b in blocks:
        b.forward = asleep
    try:
        yield
    finally:
        for b in blocks:
            del b.forward


def shared_run(high, low, inputs, *, device, engine, link_gbps, fraction: float, model_bytes: int, prefetch: int,
               steps: int, spill_dir: str, block_sleep_s: float | None = None) -> dict:
    """Wan 2.2's two experts taking turns for two prompts (``steps`` steps each per prompt,
    high then low) under a pinning cap of 2 x ``fraction`` x one model: "fixed", each model
    with a host budget of half of what the cap leaves beside both read rings (so that both
    setups hold the same RAM), against "shared", automatic budgets where
    host RAM follows the model that runs, each model told its steps as a ComfyUI sampler
    tells them (once the disk time its steps left would save pays for the read, the other
    gives it the RAM that hides its disk time under its compute), and "untold", the same
    with the steps not known (the disk time of the steps run so far must pay). Figures of
    the second prompt: its wall time, the bytes read from disk, the median step of each
    expert's steps from the third on, the time the moves took, and whether every output was
    full load's. "forced" is "untold" with the RAM taken at each model's second step whether
    or not the disk time spent pays for it: what a move costs on this machine. With
    ``block_sleep_s`` each block holds the host that long asleep instead of computing (the
    compute off the CPU, as under a GPU; the outputs then say nothing of the weights, and
    ``bit_identical`` is None)."""
    import statistics
    import time
    import warnings

    import torch

    import pinstream

    models = (high, low)

    def reference(m):  # unmanaged, on the device the inputs are on
        if device.type == "cpu":
            return _forward(m, inputs, device).float().cpu()
        m.to(device)
        try:
            return _forward(m, inputs, device).float().cpu()
        finally:
            m.to("cpu")

    refs = [reference(m) for m in models]
    cap = int(2 * fraction * model_bytes)
    from pinstream.discovery import discover_blocks

    ring = read_ring_bytes(prefetch, discover_blocks(high).largest_block_bytes)  # each model's read ring
    fixed_budget = max(0, (cap - 2 * ring) // 2)
    # each expert loaded from its own file, as ComfyUI loads a checkpoint: blocks going to disk
    # are read from there later (nothing written)
    from safetensors.torch import save_file

    os.makedirs(spill_dir, exist_ok=True)
    files = [os.path.join(spill_dir, f"pinstream-bench-expert-{os.getpid()}-{k}.safetensors") for k in range(2)]
    for m, path in zip(models, files):
        save_file({"model.diffusion_model." + k: v.contiguous() for k, v in m.state_dict().items()}, path)
    out: dict = {"pin_cap_bytes": cap, "fraction": fraction, "steps": steps, "fixed_budget_bytes": fixed_budget,
                 "block_sleep_ms": None if block_sleep_s is None else 1e3 * block_sleep_s, "setups": {}}
    saved = os.environ.get("PINSTREAM_PIN_CAP_GB")
    os.environ["PINSTREAM_PIN_CAP_GB"] = str(cap / GIB)
    asleep = contextlib.ExitStack()
    if block_sleep_s is not None:
        asleep.enter_context(_blocks_asleep(models, block_sleep_s))
    try:
        from pinstream.handle import OffloadHandle

        excess = OffloadHandle.__dict__["_disk_excess_ms"]
        for setup in ("fixed", "shared", "untold", "forced"):
            if setup == "forced":
                OffloadHandle._disk_excess_ms = staticmethod(lambda st, prev: float("inf"))
            kw = dict(mode="sequential", device=str(device), engine=engine, prefetch=prefetch,
                      link_gbps=link_gbps if engine == "host" else None, spill_dir=spill_dir)
            if setup == "fixed":
                kw["host_budget_gb"] = fixed_budget / GIB
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                handles = [pinstream.offload(m, source_files=path, **kw) for m, path in zip(models, files)]
            try:
                same = True
                for prompt in range(2):
                    for h in handles:
                        h.reset_stats()
                    moved = sum(h.ram_moves["ms"] for h in handles)
                    moved_bytes = sum(h.ram_moves["to_ram_bytes"] for h in handles)
                    steady: list = []
                    start = time.perf_counter()
                    for m, h, ref in zip(models, handles, refs):
                        if setup == "shared":
                            h.expect_passes(steps)
                        for step in range(steps):
                            t0 = time.perf_counter()
                            y = _forward(m, inputs, device)
                            same = same and (block_sleep_s is not None or torch.equal(y.float().cpu(), ref))
                            if step >= 2:
                                steady.append((time.perf_counter() - t0) * 1e3)
                    prompt_ms = (time.perf_counter() - start) * 1e3
                stats = [h.stats() for h in handles]
                out["setups"][setup] = {
                    "prompt_ms": prompt_ms,
                    "disk_bytes_per_prompt": int(sum(st["disk_bytes"] for st in stats)),
                    "steady_step_ms": statistics.median(steady) if steady else 0.0,
                    "move_ms": sum(h.ram_moves["ms"] for h in handles) - moved,
                    "moved_to_ram_bytes": int(sum(h.ram_moves["to_ram_bytes"] for h in handles) - moved_bytes),
                    "host_bytes": [int(h.host_bytes) for h in handles],
                    "spill_bytes": [int(st["spill_bytes"]) for st in stats],
                    "source_block_bytes": [int(st["source_block_bytes"]) for st in stats],
                    "bit_identical": None if block_sleep_s is not None else bool(same),
                }
            finally:
                OffloadHandle._disk_excess_ms = excess
                for h in handles:
                    h.detach()
    finally:
        asleep.close()
        if saved is None:
            os.environ.pop("PINSTREAM_PIN_CAP_GB", None)
        else:
            os.environ["PINSTREAM_PIN_CAP_GB"] = saved
        for path in files:
            with contextlib.suppress(OSError):
                os.remove(path)
    f = out["setups"]["fixed"]
    for setup in ("shared", "untold", "forced"):
        s = out["setups"][setup]
        out[f"{setup}_prompt_speedup"] = f["prompt_ms"] / s["prompt_ms"] if s["prompt_ms"] > 0 else None
    return out


def switch_run(high, low, inputs, *, device, engine, link_gbps, host_budget_bytes: int, prefetch: int, steps: int,
               spill_dir: str) -> dict:
    """Two models taking turns (Wan 2.2's experts), each with blocks on disk: ``high`` runs
    ``steps`` steps, then ``low`` runs; the stall at the switch is low's first step less its
    steady step, cold (no warm standby) and warm (low reads its first blocks while high runs).
    Low was loaded and ran once before (its order learned), and is unloaded while high runs."""
    import statistics
    import time
    import warnings

    import torch

    import pinstream
    from pinstream import _C

    ref = _forward(low, inputs, device).float().cpu()
    out: dict = {}
    for warm in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hh, hl = (pinstream.offload(m, mode="sequential", device=str(device), engine=engine, prefetch=prefetch,
                                        link_gbps=link_gbps if engine == "host" else None, spill_dir=spill_dir,
                                        host_budget_gb=host_budget_bytes / GIB) for m in (high, low))
        try:
            if not warm:
                hh._has_disk = hl._has_disk = False  # no warm standby
            _forward(low, inputs, device)
            hl.unload()
            for path in {hh.stats()["spill_path"], hl.stats()["spill_path"]} - {""}:
                _C.drop_page_cache(path)  # every read comes from the disk
            for _ in range(steps):
                _forward(high, inputs, device)
            hl.reset_stats()
            start = time.perf_counter()
            first = _forward(low, inputs, device)
            first_ms = (time.perf_counter() - start) * 1e3
            misses = hl.stats()["disk_read_misses"]
            steady = []
            for _ in range(3):
                start = time.perf_counter()
                _forward(low, inputs, device)
                steady.append((time.perf_counter() - start) * 1e3)
            steady_ms = statistics.median(steady)
            out["warm" if warm else "cold"] = {
                "first_step_ms": first_ms, "steady_step_ms": steady_ms, "stall_ms": max(0.0, first_ms - steady_ms),
                "first_step_disk_read_misses": int(misses),
                "bit_identical": bool(torch.equal(first.float().cpu(), ref)),
            }
        finally:
            hh.detach()
            hl.detach()
    return out


def _measure(args, res, model, inputs, tf, disc, dev, engine, spill, depth, min_passes, min_s) -> dict:
    import pinstream

    out: dict = {"test_file": {"bytes": tf.size, "write_gbps": tf.size / tf.write_s / 1e9, "how": tf.how}}
    fs = res["file_system"]
    o_direct_rounds = []
    first = tf.o_direct(min_passes=min_passes, min_s=min_s)
    blocks = tf.o_direct_blocks(disc.largest_block_bytes, depth, min_passes=min_passes, min_s=min_s)
    uring = tf.io_uring(min_passes=min_passes, min_s=min_s) if first is not None else {"gbps": None,
                                                                                        "how": tf.how}
    buffered = tf.buffered(min_passes=min_passes, min_s=min_s)
    out["page_cache_dropped"] = all(buffered["page_cache_drops"])
    if fs.get("type") in RAM_FILE_SYSTEMS:
        out["ram_file_system"] = True
        out["note"] = (f"the spill dir is on {fs.get('type')}: its files live in RAM, so these are memory rates, not a "
                       f"disk's (O_DIRECT {'refused' if first is None else 'accepted, as tmpfs does since Linux 6.6'}; "
                       "dropping the page cache cannot apply)")
        _log(f"  NOTE: {out['note']}")
    if first is None:
        out["o_direct_refused"] = tf.how
        _log(f"  O_DIRECT refused here ({tf.how}): the spill dir's file system ({fs.get('type')}) is read "
             "through the page cache")
    else:
        o_direct_rounds.append(first)
        _log(f"  O_DIRECT: {first['gbps']:.2f} GB/s over {first['passes']} passes ({_spread(first['pass_gbps'])})")
        _log(f"  O_DIRECT in {blocks['request_bytes'] / MIB:.2f} MiB requests (one block), {blocks['in_flight']} in "
             f"flight (prefetch + read-ahead, the disk tier's pattern): {blocks['gbps']:.2f} GB/s")
        _log("  O_DIRECT through io_uring: " + (f"{uring['gbps']:.2f} GB/s over {uring['passes']} passes ({uring['how']})"
                                                  if uring["gbps"] else f"not measured: {uring['how']}"))
    _log(f"  buffered, page cache dropped before each pass (kernel took the advice: "
         f"{'yes' if out['page_cache_dropped'] else 'NO: ' + str(buffered['page_cache_drops'])}): "
         f"{buffered['gbps']:.2f} GB/s over {buffered['passes']} passes ({_spread(buffered['pass_gbps'])})")

    # the reference: full_load's output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h = pinstream.offload(model, mode="full_load", device=dev, engine=engine,
                              link_gbps=args.link_gbps if engine == "host" else None)
    reference = _forward(model, inputs, dev).float().cpu()
    h.detach()
    del h
    gc.collect()
    malloc_trim()

    budget = int(args.host_budget_fraction * disc.total_bytes)
    common = dict(device=dev, engine=engine, link_gbps=args.link_gbps, host_budget_bytes=budget,
                  prefetch=args.prefetch, steps=args.steps, transfer_passes=2 if args.quick else 5, spill_dir=spill,
                  reference=reference, model_bytes=disc.total_bytes)
    # 2 and 3: the disk tier, blocks as stored and coded, in rounds that alternate with the
    # disk's own O_DIRECT rate (a shared disk's rate drifts: both are sampled over the same time)
    rounds = 1 if args.quick else args.rounds
    _log(f"disk tier: sequential prefetch {args.prefetch}, host budget {budget / MIB:.1f} MiB "
         f"({args.host_budget_fraction:g} of the model), {args.steps} steps a run, {rounds} round(s) of: the disk's "
         "O_DIRECT rate, blocks as stored, blocks coded (transfer_dtype compressed)")
    stored_runs, coded_runs = [], []
    for r in range(rounds):
        if r and first is not None:
            o_direct_rounds.append(tf.o_direct(min_passes=1, min_s=min(1.0, min_s)))
        plain = stream_run(model, inputs, transfer="auto", **common)
        stored_runs.append(plain)
        _log(f"  round {r + 1}, as stored: {plain['disk_blocks']} of {plain['blocks']} blocks on disk "
             f"({plain['disk_block_bytes'] / MIB:.1f} MiB, read {plain['disk_how']}), read ring "
             f"{plain['read_ring_bytes'] / MIB:.1f} MiB; step {plain['step_ms']:.1f} ms, "
             f"{plain['disk_bytes_per_step'] / MIB:.1f} MiB read per step: {plain['disk_gbps']:.2f} GB/s of busy disk "
             f"time, {plain['disk_wall_gbps']:.2f} GB/s of step wall time, "
             f"{plain.get('transfer_only', {}).get('wall_gbps', 0):.2f} GB/s with no compute, "
             f"{plain.get('compute_off_cpu', {}).get('disk_gbps', 0):.2f} GB/s of busy disk time with each block's "
             f"compute time spent asleep; host waited "
             f"{plain['disk_wait_ms_per_step']:.1f} ms per step; reads in flight (ring of "
             f"{plain['prefetch'] + READ_AHEAD}): {_f(plain['disk_reads_in_flight'])} while the disk was busy, "
             f"{_f(plain['disk_reads_in_flight_at_waits'])} as each wait began; max |diff| {plain['max_abs_diff']:.3g}")
        coded = stream_run(model, inputs, transfer="compressed", **common)
        coded_runs.append(coded)
        _log(f"  round {r + 1}, coded: {coded['disk_blocks']} of {coded['blocks']} blocks on disk, coded to "
             f"{coded['coded_ratio']:.3f}; step {coded['step_ms']:.1f} ms, {coded['disk_gbps']:.2f} GB/s of coded "
             f"bytes per second of busy disk time = {coded['coded_weights_gbps']:.2f} GB/s of weights; "
             f"max |diff| {coded['max_abs_diff']:.3g}")
    if first is not None:
        o_direct_rounds.append(tf.o_direct(min_passes=1, min_s=min(1.0, min_s)))
        o_bytes = sum(o["passes"] for o in o_direct_rounds) * tf.size
        o_direct = o_bytes / sum(o["seconds"] for o in o_direct_rounds) / 1e9
        _log(f"  the disk's O_DIRECT rate by round (before each, and after the last): "
             f"{', '.join(format(o['gbps'], '.2f') for o in o_direct_rounds)} GB/s; over all of them {o_direct:.2f} GB/s")
    else:
        o_direct = None

    def total(runs, num, den, scale=1.0):
        d = sum(x["steady"][den] for x in runs)
        return sum(x["steady"][num] for x in runs) / (d * scale) / 1e9 if d else None

    to = [x["transfer_only"] for x in stored_runs if x.get("transfer_only")]
    plain, coded = stored_runs[-1], coded_runs[-1]
    out.update({
        "disk_read_gbps": {"o_direct": o_direct, "buffered": buffered["gbps"],
                           "o_direct_block_requests": blocks["gbps"] if blocks else None,
                           "o_direct_io_uring": uring["gbps"]},
        "io_uring": uring,
        "o_direct_rounds": o_direct_rounds,
        "o_direct_block_requests": blocks,
        "buffered": buffered,
        # bytes the reader delivered / its busy seconds, over every round
        "pinstream_disk_gbps": total(stored_runs, "disk_bytes_total", "busy_ms", 1e-3),
        "pinstream_disk_wall_gbps": total(stored_runs, "disk_bytes", "wall_s"),
        "transfer_only_disk_gbps": (sum(x["disk_bytes"] for x in to) / sum(x["seconds"] for x in to) / 1e9)
        if to else None,
        "coded_weights_gbps": total(coded_runs, "plain_bytes_total", "busy_ms", 1e-3),
        "coded_disk_gbps": total(coded_runs, "disk_bytes_total", "busy_ms", 1e-3),
        # weights delivered per second of the coded runs' step wall time (their steps also decode)
        "coded_weights_wall_gbps": total(coded_runs, "plain_bytes", "wall_s"),
        "coded_ratio": coded["coded_ratio"],
        "host_budget_bytes": plain["host_budget_bytes"],
        "read_ring_bytes": plain["read_ring_bytes"],
        "disk_how": plain["disk_how"],
        "disk_blocks": plain["disk_blocks"],
        "disk_bytes_per_step": plain["disk_bytes_per_step"],
        # the first run (as stored, in a process that ran nothing else with this model before)
        "rss_bytes": stored_runs[0]["rss_bytes"],
        "rss_limit_bytes": stored_runs[0]["rss_limit_bytes"],
        "rss_before_offload_bytes": stored_runs[0]["rss_before_offload_bytes"],
        "rss_within_limit": stored_runs[0]["rss_within_limit"],
        "coded_rss_bytes": coded_runs[0]["rss_bytes"],
        "coded_rss_limit_bytes": coded_runs[0]["rss_limit_bytes"],
        "coded_rss_within_limit": coded_runs[0]["rss_within_limit"],
        "rss_within_limit_every_run": all(x["rss_within_limit"] for x in stored_runs + coded_runs),
        "runs": {"stored": stored_runs, "compressed": coded_runs},
        "bit_identical": all(x["max_abs_diff"] == 0 for x in stored_runs + coded_runs),
    })
    out["ratio_to_o_direct"] = _ratio(out["pinstream_disk_gbps"], o_direct)
    out["coded_ratio_to_o_direct"] = _ratio(out["coded_weights_gbps"], o_direct)
    # against the disk's O_DIRECT rate on the very files the disk tier read, sampled right before
    # and right after each run: the same extents of the disk over the same minutes
    off = [x["compute_off_cpu"] for x in stored_runs if x.get("compute_off_cpu")]
    busy = sum(x["busy_ms"] for x in off)
    out["compute_off_cpu_disk_gbps"] = sum(x["disk_bytes_total"] for x in off) / busy / 1e6 if busy > 0 else None
    out["compute_off_cpu_ratio_to_o_direct"] = _ratio(out["compute_off_cpu_disk_gbps"], o_direct)
    out["same_file_o_direct_gbps"] = _same_file_gbps(stored_runs)
    out["coded_same_file_o_direct_gbps"] = _same_file_gbps(coded_runs)
    out["ratio_to_same_file_o_direct"] = _ratio(out["pinstream_disk_gbps"], out["same_file_o_direct_gbps"])
    out["coded_ratio_to_same_file_o_direct"] = _ratio(out["coded_weights_gbps"], out["coded_same_file_o_direct_gbps"])
    out["compute_off_cpu_ratio_to_same_file_o_direct"] = _ratio(out["compute_off_cpu_disk_gbps"],
                                                                out["same_file_o_direct_gbps"])
    return out


def _same_file_gbps(runs) -> float | None:
    """Bytes / seconds of the O_DIRECT passes over each run's own spill file (before and after it)."""
    rs = [x["same_file_o_direct"] for x in runs if x.get("same_file_o_direct")]
    return sum(r["bytes"] for r in rs) / sum(r["seconds"] for r in rs) / 1e9 if rs else None


def _f(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _spread(rates) -> str:
    import statistics

    return f"passes from {min(rates):.2f} to {max(rates):.2f}, median {statistics.median(rates):.2f}"


def _os_release() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.system()


def _log(msg: str) -> None:
    print(f"[bench disk] {msg}", flush=True)


def summary(res: dict) -> str:
    d = res["disk_read_gbps"]
    plain, coded = res["runs"]["stored"][-1], res["runs"]["compressed"][0]
    first = res["runs"]["stored"][0]

    lines = [
        f"disk tier on {res['device']} ({res['engine']}), torch {res['torch']}, {res['os']}, {res['date']}; "
        f"load average {res['load_average_at_start'][0]:.2f} at the start, {res['load_average_at_end'][0]:.2f} at the end",
        f"spill dir {res['spill_dir']}: {res['disk_description']}; read {res['disk_how']}",
        f"demo model preset {res['model']['preset']} ({res['model']['dtype']}, {res['model']['bytes'] / MIB:.1f} MiB, "
        f"{res['model']['blocks']} blocks), host budget {res['host_budget_bytes'] / MIB:.1f} MiB: {res['disk_blocks']} "
        f"blocks on disk, {res['disk_bytes_per_step'] / MIB:.1f} MiB read per step",
        f"disk's own sequential read ({res['test_file']['bytes'] / MIB:.1f} MiB file): O_DIRECT {_f(d['o_direct'])} GB/s, "
        f"buffered (page cache dropped: {'yes' if res['page_cache_dropped'] else 'NO'}) {_f(d['buffered'])} GB/s, "
        f"O_DIRECT in block-sized requests {_f(d['o_direct_block_requests'])} GB/s, O_DIRECT through io_uring "
        f"{_f(d.get('o_direct_io_uring'))} GB/s",
        f"PinStream disk tier: {_f(res['pinstream_disk_gbps'])} GB/s per second of busy disk time, "
        f"{_f(res['pinstream_disk_wall_gbps'])} GB/s per second of step wall time, "
        f"{_f(res['transfer_only_disk_gbps'])} GB/s with no compute, {_f(res.get('compute_off_cpu_disk_gbps'))} GB/s "
        f"of busy disk time with the compute off the CPU (each block holds the host for its mean compute time, "
        f"asleep, as under a GPU's compute: / O_DIRECT {_f(res.get('compute_off_cpu_ratio_to_o_direct'), '{:.3f}')}, "
        f"/ O_DIRECT on the same files {_f(res.get('compute_off_cpu_ratio_to_same_file_o_direct'), '{:.3f}')})",
        f"pinstream_disk_gbps / disk_read_gbps.o_direct = {_f(res['ratio_to_o_direct'], '{:.3f}')} (target >= 0.9: "
        f"{_met(res['ratio_to_o_direct'], 0.9)}); against O_DIRECT on the spill files themselves, right before and "
        f"after each run ({_f(res.get('same_file_o_direct_gbps'))} GB/s): "
        f"{_f(res.get('ratio_to_same_file_o_direct'), '{:.3f}')} ({_met(res.get('ratio_to_same_file_o_direct'), 0.9)})",
        f"coded_weights_gbps {_f(res['coded_weights_gbps'])} GB/s (blocks coded to {res['coded_ratio']:.3f}, "
        f"{_f(res['coded_disk_gbps'])} GB/s of coded bytes); / O_DIRECT = {_f(res['coded_ratio_to_o_direct'], '{:.3f}')} "
        f"(target >= 1.3: {_met(res['coded_ratio_to_o_direct'], 1.3)}); / O_DIRECT on the coded spill files "
        f"({_f(res.get('coded_same_file_o_direct_gbps'))} GB/s) = "
        f"{_f(res.get('coded_ratio_to_same_file_o_direct'), '{:.3f}')} "
        f"({_met(res.get('coded_ratio_to_same_file_o_direct'), 1.3)}); per second of step wall time "
        f"{_f(res['coded_weights_wall_gbps'])} GB/s of weights (step {coded['step_ms']:.1f} ms against "
        f"{first['step_ms']:.1f} as stored)",
        f"RSS after the first run {res['rss_bytes'] / MIB:.1f} MiB; limit {res['rss_limit_bytes'] / MIB:.1f} MiB = RSS "
        f"before its offload {res['rss_before_offload_bytes'] / MIB:.1f} MiB - the model {res['model']['bytes'] / MIB:.1f} "
        f"MiB + device arena {plain['device_arena_bytes'] / MIB:.1f} MiB + 1.05 x (host budget "
        f"{res['host_budget_bytes'] / MIB:.1f} MiB + read ring {res['read_ring_bytes'] / MIB:.1f} MiB): "
        f"{'within' if res['rss_within_limit'] else 'OVER'} ({first['rss_over_base_bytes'] / MIB:.1f} MiB over the RSS "
        "without the model)",
        f"coded, first run: RSS {res['coded_rss_bytes'] / MIB:.1f} MiB, limit {res['coded_rss_limit_bytes'] / MIB:.1f} "
        f"MiB (read ring {coded['read_ring_bytes'] / MIB:.1f} MiB): "
        f"{'within' if res['coded_rss_within_limit'] else 'OVER'} ({coded['rss_over_base_bytes'] / MIB:.1f} MiB over "
        f"the RSS without the model); every run within its limit: {'yes' if res['rss_within_limit_every_run'] else 'no'}",
        f"outputs of every disk run bit-identical to full_load: {'yes' if res['bit_identical'] else 'NO'}",
    ]
    sh = res.get("shared_ram")
    if sh:
        names = {"fixed": f"fixed budgets of {sh['fixed_budget_bytes'] / MIB:.1f} MiB (half the cap beside both "
                          "read rings)", "shared": "RAM following the model that runs, its steps told",
                 "untold": "the same, its steps not told",
                 "forced": "RAM taken at each model's second step"}
        parts = []
        for setup, r in sh["setups"].items():
            parts.append(f"{names[setup]} {r['prompt_ms']:.1f} ms, {r['disk_bytes_per_prompt'] / MIB:.1f} MiB from "
                         f"disk, steady step {r['steady_step_ms']:.1f} ms, moves {r['move_ms']:.1f} ms"
                         + (f" (x{_f(sh.get(setup + '_prompt_speedup'), '{:.2f}')})" if setup != "fixed" else ""))
        lines.append(
            f"two models taking turns ({sh['steps']} steps each per prompt) with host RAM for "
            f"{2 * sh['fraction']:g} of one, second prompt: " + "; ".join(parts) + "; bit-identical "
            + ("yes" if all(r["bit_identical"] for r in sh["setups"].values()) else "NO"))
    sh = res.get("shared_ram_compute_off_cpu")
    if sh:
        f = sh["setups"]["fixed"]["prompt_ms"]
        lines.append(
            f"the same with the compute off the CPU (each block {sh['block_sleep_ms']:.2f} ms asleep, half its read at "
            f"the disk tier's rate), {sh['steps']} steps each: " + "; ".join(
                f"{k} {r['prompt_ms']:.1f} ms, {r['disk_bytes_per_prompt'] / MIB:.1f} MiB from disk, moves "
                f"{r['move_ms']:.1f} ms" + (f" (x{f / r['prompt_ms']:.2f})" if k != "fixed" and r["prompt_ms"] else "")
                for k, r in sh["setups"].items()))
    if res.get("o_direct_refused"):
        lines.insert(2, f"O_DIRECT refused on {res['file_system'].get('type')}: {res['o_direct_refused']}")
    if res.get("note"):
        lines.insert(2, f"NOTE: {res['note']}")
    return "\n".join(lines)


def _met(v, goal) -> str:
    if v is None:
        return "not measured"
    return "met" if v >= goal else "NOT met"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    res = run(args)
    print(summary(res), flush=True)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json_path}")
    shared = res.get("shared_ram", {}).get("setups", {})
    return 0 if res["bit_identical"] and all(r["bit_identical"] for r in shared.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
