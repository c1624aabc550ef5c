"""What auto's choice of the transfer form rests on: the link and exact-decode rates of a
device, measured once per process through the runtime itself (one block of bf16 weights
streamed in the coded form, its upload and its decode timed as a model's blocks would be),
and the coded ratio of a model's own weights, sampled from its largest tensors.

Compressed moves r bytes over the link per stored byte (r: the coded ratio) and then
decodes on the copy queue, so per streamed byte the copy queue needs r / link + 1 / decode
seconds instead of 1 / link. Auto picks compressed only where that is at least
MIN_GAIN faster: where uploads set the step it is then faster, and where compute sets it
the copy queue still keeps up, so it costs no step time."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .native import load_native

MIB = 1024**2
# the copy queue's time per streamed byte must fall at least this much for auto to code
MIN_GAIN = 0.05
_RATES: dict = {}


@dataclass(frozen=True)
class Rates:
    link_gbps: float  # host to device, pinned
    decode_gbps: float  # exact decode, bytes of weights written per second


def rates(device: torch.device, engine: str, link_gbps: float = 0.0) -> Rates:
    """The link and decode rates of ``device`` through ``engine`` (``link_gbps``: the host
    engine's emulated link), measured on first use and kept for the process."""
    key = (str(device), engine, float(link_gbps))
    if key not in _RATES:
        _RATES[key] = _measure(device, engine, link_gbps)
    return _RATES[key]


def _measure(device: torch.device, engine: str, link_gbps: float) -> Rates:
    _C = load_native()
    mib = 64 if engine == "cuda" else 8  # the reference decoder on the host is slow
    g = torch.Generator().manual_seed(0)
    # two blocks through one slot (prefetch 0): every acquire uploads and decodes
    ws = [(torch.randn(mib * MIB // 4, generator=g) * 0.02).to(torch.bfloat16) for _ in range(2)]
    rt = _C.Runtime(pin_cap_bytes=-1, device=str(device), engine=engine, prefetch=0, link_gbps=float(link_gbps),
                    latency_us=0.0, device_capacity_bytes=0, pin_mode="auto", chunk_bytes=256 * MIB, timing=True,
                    cache_dir="")
    try:
        blocks = rt.register_blocks([[w] for w in ws], [True, True], None, [False, False], [[""], [""]],
                                    policy="stream_all", budget_bytes=-1, prefetch=0, exact=[True, True])
        for i in range(4):
            if i == 1:
                rt.synchronize()
                rt.reset_stats()  # the first pass warms up (allocation, kernel load)
            rt.begin_pass()
            for b in blocks:
                rt.acquire(b)
                rt.release(b)
            rt.end_pass()
        rt.synchronize()
        st = rt.stats()
    finally:
        rt.close(restore_pageable=True)
    link = st["timed_upload_bytes"] / (st["upload_ms"] * 1e6) if st["upload_ms"] > 0 else 0.0
    decode = st["transform_bytes"] / (st["transform_ms"] * 1e6) if st["transform_ms"] > 0 else 0.0
    return Rates(link, decode)


@dataclass(frozen=True)
class DiskReads:
    direct: bool  # read with O_DIRECT (else buffered)
    o_direct_gbps: float  # the thread pool with O_DIRECT; 0 where the file system refuses O_DIRECT
    buffered_gbps: float
    why: str  # which way was kept and the figures (the runtime shows it when reads are buffered)
    io_uring: bool = False  # read the O_DIRECT files through io_uring (direct is then True)
    io_uring_gbps: float = 0.0  # 0 where io_uring could not be measured (why says why)


_DISK: dict = {}


def disk_reads(directory: str, size_mb: int = 32) -> DiskReads:
    """How the disk tier reads files in ``directory``: io_uring with O_DIRECT, the thread
    pool with O_DIRECT, or buffered reads, whichever reads a file there fastest in the disk
    tier's own pattern (its readers' settings, block-sized requests, a read ring's worth
    in flight; every pass from the disk: the file's pages are dropped from the page cache
    first), measured once per file system and kept for the process."""
    import os

    os.makedirs(directory, exist_ok=True)
    key = os.stat(directory).st_dev
    if key not in _DISK:
        _DISK[key] = _measure_disk(directory, size_mb)
    return _DISK[key]


def read_in_requests(reader, file, size: int, request: int, in_flight: int, dst) -> None:
    """``size`` bytes of ``file`` in ``request``-byte reads, ``in_flight`` of them at a time
    (one thread each; read() releases the GIL), as the read ring keeps blocks in flight:
    ``dst(k, offset, n)`` is the uint8 tensor reader thread ``k`` reads those bytes into.
    The first error is raised here."""
    import threading

    offsets = list(range(0, size, request))
    lock = threading.Lock()
    errors: list = []

    def worker(k):
        while True:
            with lock:
                if not offsets or errors:
                    return
                off = offsets.pop(0)
            try:
                n = min(request, size - off)
                reader.read(file, off, dst(k, off, n))
            except Exception as e:  # noqa: BLE001 - raised below, in the caller's thread
                errors.append(e)
                return

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _measure_disk(directory: str, size_mb: int, passes: int = 3, request_mb: int = 8) -> DiskReads:
    import os
    import mmap
    import tempfile
    import time

    from .modes import READ_AHEAD

    _C = load_native()
    chunk = int(getattr(_C, "DISK_TIER_CHUNK_BYTES", 2 * MIB))  # the runtime's readers' chunk
    in_flight = 1 + READ_AHEAD  # the read ring at the default prefetch of 1
    fd, path = tempfile.mkstemp(prefix="pinstream-disk-probe-", dir=directory)
    notes = {}  # why a way was not measured
    try:
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(MIB)
            for _ in range(size_mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        # its own pages (page-aligned, as the read ring is: O_DIRECT reads go straight in),
        # mapped and unmapped: a heap buffer this large would leave the allocator keeping
        # blocks of that size in the heap afterwards
        mapped = mmap.mmap(-1, size_mb * MIB)
        buf = torch.frombuffer(mapped, dtype=torch.uint8)
        readers = {}
        for way in ("io_uring", "direct", "buffered"):
            try:
                reader = (_C.DiskReader(direct=True, io_uring=True, chunk_bytes=chunk) if way == "io_uring"
                          else _C.DiskReader(direct=way == "direct", chunk_bytes=chunk))
            except TypeError:  # an extension whose DiskReader takes no io_uring
                notes[way] = "io_uring not measured: this build's DiskReader binding takes no io_uring option"
                continue
            file = reader.open(path)
            how = reader.how(file)
            if way != "buffered" and not reader.direct(file):
                # O_DIRECT refused by the file system: how() is "buffered (<why>)"
                notes[way] = how[len("buffered ("):-1] if how.startswith("buffered (") else how
                continue
            if way == "io_uring" and not how.startswith("io_uring"):
                # "O_DIRECT (alignment 4096; io_uring not used: <why>)"
                notes[way] = "io_uring not measured: " + how.split("io_uring not used: ", 1)[-1][:-1]
                continue
            readers[way] = (reader, file)
        seconds = {way: 0.0 for way in readers}

        def read_all(reader, file):
            read_in_requests(reader, file, size_mb * MIB, request_mb * MIB, in_flight,
                             lambda k, off, n: buf[off:off + n])

        if readers:  # the first reads of a file just written are slower on some disks: not timed
            _C.drop_page_cache(path)
            reader, file = next(iter(readers.values()))
            read_all(reader, file)
        for _ in range(passes):  # the ways taking turns, every pass counted
            for way, (reader, file) in readers.items():
                _C.drop_page_cache(path)
                start = time.perf_counter()
                read_all(reader, file)
                seconds[way] += time.perf_counter() - start
        gbps = {way: passes * size_mb * MIB / seconds[way] / 1e9 if seconds.get(way) else 0.0
                for way in ("io_uring", "direct", "buffered")}
        del readers
        buf = None  # the map's last export: it can be closed
        mapped.close()
    finally:
        os.remove(path)
    return _choose_disk(gbps, notes)


def _choose_disk(gbps: dict, notes: dict) -> DiskReads:
    """The fastest of the measured ways (gbps: io_uring, direct, buffered; 0 = not measured,
    notes[way] says why); a tie keeps the thread pool's O_DIRECT."""
    uring, direct, buffered = gbps["io_uring"], gbps["direct"], gbps["buffered"]
    figures = ", ".join(f"{name} {gbps[way]:.2f} GB/s" for way, name in
                        (("io_uring", "io_uring"), ("direct", "O_DIRECT thread pool"), ("buffered", "buffered"))
                        if gbps[way] > 0)
    skipped = "".join(f"; {notes[way]}" for way in ("io_uring", "direct") if way in notes)
    if direct == 0.0 and "direct" in notes:
        # O_DIRECT refused: buffered, and the runtime says so (why starts with the refusal)
        return DiskReads(False, 0.0, buffered, notes["direct"] + f"; measured here: {figures}", False, 0.0)
    if uring > max(direct, buffered):
        return DiskReads(True, direct, buffered, f"io_uring with O_DIRECT measured fastest here: {figures}{skipped}",
                         True, uring)
    if direct >= buffered:
        return DiskReads(True, direct, buffered,
                         f"O_DIRECT with the thread pool measured fastest here: {figures}{skipped}", False, uring)
    return DiskReads(False, direct, buffered,
                     f"buffered reads measured faster here: {buffered:.2f} GB/s against {direct:.2f} with O_DIRECT "
                     f"(thread pool{f', {uring:.2f} with io_uring' if uring > 0 else ''}){skipped}", False, uring)


def coded_ratio(tensors, sample_bytes: int = 8 * MIB) -> float | None:
    """The coded ratio of ``tensors``' bf16/fp16 weights, sampled from the largest ones (at
    most ``sample_bytes``); None when there are none (nothing to code)."""
    floats = [t for t in tensors if t.dtype in (torch.bfloat16, torch.float16) and t.numel() >= 4096
              and t.device.type in ("cpu", "cuda") and not t.is_sparse]
    if not floats:
        return None
    _C = load_native()
    plain = coded = 0
    for t in sorted(floats, key=lambda x: -x.numel())[:4]:
        n = min(t.numel(), sample_bytes // 8)  # four tensors: a quarter of the sample each
        sample = t.detach().reshape(-1)[:n].to("cpu").contiguous()
        out, _layout, _entropy = _C.exact_code(sample, 2)
        plain += n * 2
        coded += min(out.numel(), n * 2)  # a tensor where coding does not pay is sent as stored
    return coded / plain


def choose_compressed(ratio: float | None, r: Rates | None) -> tuple[bool, str]:
    """Whether compressed makes the copy queue at least MIN_GAIN faster per streamed byte,
    and why (figures included)."""
    if ratio is None:
        return False, "compressed not chosen: no bf16/fp16 weights to code"
    if r.link_gbps <= 0 or r.decode_gbps <= 0:
        return False, "compressed not chosen: the link and decode rates could not be measured on this device"
    relative = ratio + r.link_gbps / r.decode_gbps  # copy-queue time per streamed byte, as stored = 1
    figures = (f"coded ratio {ratio:.2f} (sampled), decode {r.decode_gbps:.1f} GB/s and link {r.link_gbps:.1f} GB/s "
               f"measured on this device: the copy queue would need {relative:.2f}x the time per streamed byte")
    if relative <= 1 - MIN_GAIN:
        return True, "transfer compressed (exact) chosen: " + figures
    return False, "compressed not chosen: " + figures
