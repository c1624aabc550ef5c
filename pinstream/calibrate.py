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
    o_direct_gbps: float  # 0 where the file system refuses O_DIRECT
    buffered_gbps: float
    why: str


_DISK: dict = {}


def disk_reads(directory: str, size_mb: int = 32) -> DiskReads:
    """How the disk tier reads files in ``directory``: O_DIRECT or buffered, whichever
    reads a file there faster (each pass from the disk: the file's pages are dropped from
    the page cache first), measured once per file system and kept for the process."""
    import os

    os.makedirs(directory, exist_ok=True)
    key = os.stat(directory).st_dev
    if key not in _DISK:
        _DISK[key] = _measure_disk(directory, size_mb)
    return _DISK[key]


def _measure_disk(directory: str, size_mb: int) -> DiskReads:
    import os
    import tempfile
    import time

    _C = load_native()
    fd, path = tempfile.mkstemp(prefix="pinstream-disk-probe-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(MIB)
            for _ in range(size_mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        buf = torch.empty(size_mb * MIB, dtype=torch.uint8)
        gbps = {}
        for direct in (True, False):
            reader = _C.DiskReader(direct=direct)
            file = reader.open(path)
            if direct and not reader.direct(file):
                gbps[direct] = 0.0  # refused by the file system
                refused = reader.how(file)
                continue
            _C.drop_page_cache(path)
            start = time.perf_counter()
            reader.read(file, 0, buf)
            gbps[direct] = size_mb * MIB / (time.perf_counter() - start) / 1e9
    finally:
        os.remove(path)
    if gbps[True] == 0.0:
        return DiskReads(False, 0.0, gbps[False], refused)
    if gbps[True] >= gbps[False]:
        return DiskReads(True, gbps[True], gbps[False], "")
    return DiskReads(False, gbps[True], gbps[False],
                     f"buffered reads measured faster here: {gbps[False]:.2f} GB/s against {gbps[True]:.2f} with "
                     f"O_DIRECT")


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
