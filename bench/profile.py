"""One step's device timeline, and what it says about where the step's time goes.

:func:`profile_step` runs a step under ``torch.profiler`` (CUPTI activity tracing:
every kernel and every copy on every stream of the process, PinStream's own copy
thread and a baseline's side streams included), one warm-up step then one traced
step, and keeps the Chrome trace. :func:`analyze_trace` reads such a trace and
measures, in milliseconds of device time:

* ``kernel_ms``   time at least one kernel runs (the union over streams)
* ``h2d_ms``      time at least one host-to-device copy runs, and its bytes, split by
                  source memory (``Pinned`` / ``Pageable``, as CUPTI names it)
* ``overlap_ms``  time a host-to-device copy and a kernel run at once
* ``idle_ms``     time inside the traced span when the device does nothing at all
* ``bound``       "compute" when kernels fill >= 90% of the span, "transfer" when
                  uploads do, "idle gaps" when >= 10% of it is idle, else "mixed"

These say why a system's step takes what it does: a compute-bound step cannot be
made faster by any offloader; a transfer-bound one only by moving fewer bytes or
moving them faster; idle gaps are time lost to waiting (synchronous copies,
launch latency, hooks).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# CUPTI's memcpy names, as Kineto writes them: "Memcpy HtoD (Pinned -> Device)"
# (older traces and other tools leave out the memory kinds: "Memcpy HtoD")
_MEMCPY = re.compile(r"Memcpy\s+(\w+)(?:\s*\(\s*([^)]*?)\s*->\s*([^)]*?)\s*\))?")


def union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint intervals covering the same points as ``intervals``."""
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def length(disjoint: Iterable[tuple[float, float]]) -> float:
    return float(sum(e - s for s, e in disjoint))


def intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two unions (each sorted and disjoint)."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            total += e - s
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def memcpy_kind(name: str) -> tuple[str, str, str]:
    """("HtoD", "Pinned", "Device") from a CUPTI memcpy name; ("", "", "") if not one."""
    m = _MEMCPY.search(name or "")
    return (m.group(1), m.group(2) or "", m.group(3) or "") if m else ("", "", "")


def device_events(trace) -> list[dict]:
    """The complete ("X") device events of a Chrome trace (dict or event list)."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else list(trace)
    return [e for e in events if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") in GPU_CATS
            and isinstance(e.get("dur"), (int, float)) and isinstance(e.get("ts"), (int, float))]


def analyze_trace(trace, wall_ms: float | None = None) -> dict:
    """Device-time breakdown of one traced step (times in ms; trace times are in us)."""
    evs = device_events(trace)
    kernels, h2d, d2h, d2d, memset = [], [], [], [], []
    h2d_bytes = {"total": 0, "Pinned": 0, "Pageable": 0, "other": 0}
    d2h_bytes = d2d_bytes = 0
    h2d_sizes: list[int] = []
    streams = {"kernel": set(), "h2d": set()}
    for e in evs:
        iv = (float(e["ts"]), float(e["ts"]) + float(e["dur"]))
        args = e.get("args") or {}
        stream = args.get("stream", e.get("tid"))
        if e["cat"] == "kernel":
            kernels.append(iv)
            streams["kernel"].add(stream)
        elif e["cat"] == "gpu_memset":
            memset.append(iv)
        else:
            kind, src, _dst = memcpy_kind(e.get("name", ""))
            nbytes = int(args.get("bytes", 0) or 0)
            if kind == "HtoD":
                h2d.append(iv)
                h2d_sizes.append(nbytes)
                h2d_bytes["total"] += nbytes
                h2d_bytes[src if src in ("Pinned", "Pageable") else "other"] += nbytes
                streams["h2d"].add(stream)
            elif kind == "DtoH":
                d2h.append(iv)
                d2h_bytes += nbytes
            else:
                d2d.append(iv)
                d2d_bytes += nbytes
    ku, hu = union(kernels), union(h2d)
    everything = union(kernels + h2d + d2h + d2d + memset)
    span = (everything[-1][1] - everything[0][0]) if everything else 0.0
    k_ms, h_ms = length(ku) / 1e3, length(hu) / 1e3
    overlap = intersection(ku, hu) / 1e3
    span_ms = span / 1e3
    idle_ms = (span - length(everything)) / 1e3
    out = {
        "wall_ms": None if wall_ms is None else float(wall_ms),
        "gpu_span_ms": span_ms,
        "kernel_ms": k_ms,
        "kernel_count": len(kernels),
        "h2d_ms": h_ms,
        "h2d_count": len(h2d),
        "h2d_bytes": h2d_bytes["total"],
        "h2d_pinned_bytes": h2d_bytes["Pinned"],
        "h2d_pageable_bytes": h2d_bytes["Pageable"],
        "h2d_mean_bytes": (h2d_bytes["total"] // len(h2d)) if h2d else 0,
        "h2d_gbps": (h2d_bytes["total"] / (h_ms / 1e3) / 1e9) if h_ms > 0 else 0.0,
        "d2h_ms": length(union(d2h)) / 1e3,
        "d2h_bytes": d2h_bytes,
        "d2d_ms": length(union(d2d)) / 1e3,
        "d2d_bytes": d2d_bytes,
        "overlap_ms": overlap,
        "exposed_h2d_ms": h_ms - overlap,
        "idle_ms": idle_ms,
        "kernel_streams": len(streams["kernel"]),
        "h2d_streams": len(streams["h2d"]),
    }
    out["bound"] = bound_of(out)
    return out


def bound_of(p: dict) -> str:
    span = p.get("gpu_span_ms") or 0.0
    if span <= 0:
        return "no device events"
    if p["kernel_ms"] >= 0.9 * span:
        return "compute"
    if p["h2d_ms"] >= 0.9 * span:
        return "transfer"
    if p["idle_ms"] >= 0.1 * span:
        return "idle gaps"
    return "mixed"


def describe(p: dict) -> str:
    """One line: where a traced step's device time went."""
    if p.get("error"):
        return f"profile failed: {p['error']}"
    if not p.get("gpu_span_ms"):
        return "no device events traced (CPU run)"
    span = p["gpu_span_ms"]
    pinned = p["h2d_pinned_bytes"] / p["h2d_bytes"] if p["h2d_bytes"] else 0.0
    return (f"{p['bound']}-bound: span {span:.1f} ms; kernels {p['kernel_ms']:.1f} ms ({p['kernel_ms'] / span:.0%}); "
            f"uploads {p['h2d_bytes'] / 2**30:.2f} GiB in {p['h2d_ms']:.1f} ms ({p['h2d_gbps']:.1f} GB/s, "
            f"{p['h2d_count']} copies, {pinned:.0%} pinned), {p['exposed_h2d_ms']:.1f} ms not under a kernel; "
            f"idle {p['idle_ms']:.1f} ms")


def profile_step(fn: Callable[[], object], *, cuda: bool, sync: Callable[[], None],
                 trace_path: Path | None = None) -> dict:
    """Trace one call of ``fn`` after one warm-up call under the profiler (device
    activity only on CUDA; CPU ops on a CPU run, which has no device events).
    ``trace_path``: where the gzipped Chrome trace goes (None: not kept)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    wall: list[float] = []
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        # the trace is written when the active step ends (on_trace_ready): after
        # that the profiler starts a new, empty cycle
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Profiler clears events at the end of each cycle"
            with profile(activities=acts, schedule=schedule(wait=0, warmup=1, active=1, repeat=1),
                         on_trace_ready=lambda p: p.export_chrome_trace(tmp)) as prof:
                for i in range(2):
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    if i == 1:
                        wall.append((time.perf_counter() - t0) * 1000.0)
                    prof.step()
        raw = Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)
    if not raw:
        raise RuntimeError("the profiler wrote no trace")
    trace = json.loads(raw)
    out = analyze_trace(trace, wall[0] if wall else None)
    if trace_path is not None:
        trace_path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(trace_path, "wb", compresslevel=6) as f:
            f.write(raw)
        out["trace"] = trace_path.name
    return out
