"""The GPU check's traced steps (bench/profile.py): the device-time breakdown
of a Chrome trace as Kineto writes it for CUDA activity, the profiler driver (on the
CPU here: it must trace the step after the warm-up, not an empty cycle), and how the
check reports profiles and the best possible speed-up of a comparison."""

import gzip
import json

import pytest
import torch
from test_bench_gpu import _run  # one run record, as the benchmark writes it

from bench import profile as prof
from bench.report import evaluate_targets, summary_text


def _kernel(ts, dur, stream=7, name="ampere_bf16_gemm"):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts, "dur": dur,
            "args": {"device": 0, "stream": stream, "correlation": 1}}


def _copy(ts, dur, nbytes, kind="HtoD", src="Pinned", dst="Device", stream=13):
    return {"ph": "X", "cat": "gpu_memcpy", "name": f"Memcpy {kind} ({src} -> {dst})", "pid": 0, "tid": stream,
            "ts": ts, "dur": dur, "args": {"device": 0, "stream": stream, "bytes": nbytes,
                                           "memory bandwidth (GB/s)": 1.0}}


def _memset(ts, dur):
    return {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "pid": 0, "tid": 7, "ts": ts, "dur": dur,
            "args": {"stream": 7, "bytes": 64}}


# host-side events Kineto writes beside the device ones: never counted as device time
_HOST_NOISE = [
    {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", "pid": 1, "tid": 1, "ts": 0.0, "dur": 5000.0},
    {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 0.0, "dur": 5000.0},
    {"ph": "s", "cat": "ac2g", "name": "ac2g", "pid": 1, "tid": 1, "ts": 1.0, "id": 1},
    {"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "python"}},
]


def test_interval_union_and_intersection():
    assert prof.union([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9)]) == [(0, 4), (5, 7)]
    assert prof.length(prof.union([(0, 10), (2, 3), (8, 12)])) == 12
    a = prof.union([(0, 10), (20, 30)])
    b = prof.union([(5, 25)])
    assert prof.intersection(a, b) == 10
    assert prof.intersection(a, []) == 0
    assert prof.intersection(prof.union([(0, 1)]), prof.union([(1, 2)])) == 0


@pytest.mark.parametrize("name,expected", [
    ("Memcpy HtoD (Pinned -> Device)", ("HtoD", "Pinned", "Device")),
    ("Memcpy HtoD (Pageable -> Device)", ("HtoD", "Pageable", "Device")),
    ("Memcpy DtoH (Device -> Pinned)", ("DtoH", "Device", "Pinned")),
    ("Memcpy DtoD (Device -> Device)", ("DtoD", "Device", "Device")),
    ("Memcpy HtoD (Managed Static -> Device Static)", ("HtoD", "Managed Static", "Device Static")),
    ("Memcpy HtoD", ("HtoD", "", "")),
    ("void gemm_kernel<float>()", ("", "", "")),
])
def test_memcpy_names_as_cupti_gives_them(name, expected):
    assert prof.memcpy_kind(name) == expected


def test_breakdown_of_a_step_with_overlap_and_gaps():
    # times in us, as in a Kineto trace
    trace = {"traceEvents": _HOST_NOISE + [
        _kernel(0.0, 100.0), _kernel(50.0, 100.0, stream=9),       # kernels: [0, 150] on two streams
        _copy(100.0, 200.0, 3_000_000),                            # pinned upload [100, 300]
        _copy(400.0, 50.0, 1_000_000, src="Pageable", stream=7),   # pageable upload [400, 450]
        _memset(500.0, 10.0),                                      # [500, 510]
        _copy(600.0, 20.0, 4096, kind="DtoH", src="Device", dst="Pageable"),  # [600, 620]
    ]}
    p = prof.analyze_trace(trace, wall_ms=0.9)
    assert p["wall_ms"] == 0.9
    assert p["gpu_span_ms"] == pytest.approx(0.620)
    assert p["kernel_ms"] == pytest.approx(0.150) and p["kernel_count"] == 2 and p["kernel_streams"] == 2
    assert p["h2d_ms"] == pytest.approx(0.250) and p["h2d_count"] == 2 and p["h2d_streams"] == 2
    assert p["h2d_bytes"] == 4_000_000
    assert p["h2d_pinned_bytes"] == 3_000_000 and p["h2d_pageable_bytes"] == 1_000_000
    assert p["h2d_mean_bytes"] == 2_000_000
    assert p["h2d_gbps"] == pytest.approx(4_000_000 / 250e-6 / 1e9)
    assert p["overlap_ms"] == pytest.approx(0.050)  # [100, 150]
    assert p["exposed_h2d_ms"] == pytest.approx(0.200)
    assert p["d2h_bytes"] == 4096 and p["d2h_ms"] == pytest.approx(0.020)
    # busy: [0, 300] + [400, 450] + [500, 510] + [600, 620] = 380 us of 620
    assert p["idle_ms"] == pytest.approx(0.240)
    assert p["bound"] == "idle gaps"
    line = prof.describe(p)
    assert "idle gaps-bound" in line and "75% pinned" in line and "2 copies" in line


def test_compute_and_transfer_bound_steps_are_told_apart():
    # a streamed step where compute hides every upload
    compute = {"traceEvents": [_kernel(i * 100.0, 100.0) for i in range(10)]
               + [_copy(i * 100.0 + 10, 60.0, 10**6) for i in range(9)]}
    p = prof.analyze_trace(compute)
    assert p["bound"] == "compute" and p["idle_ms"] == pytest.approx(0.0)
    assert p["exposed_h2d_ms"] == pytest.approx(0.0)
    # a streamed step where the device waits on uploads between short kernels
    transfer = {"traceEvents": [_copy(i * 100.0, 100.0, 5 * 10**6) for i in range(10)]
                + [_kernel(i * 100.0 + 80, 20.0) for i in range(10)]}
    p = prof.analyze_trace(transfer)
    assert p["bound"] == "transfer" and p["h2d_gbps"] == pytest.approx(50.0)
    assert p["exposed_h2d_ms"] == pytest.approx(0.8)
    # nothing on the device (a CPU run)
    p = prof.analyze_trace({"traceEvents": _HOST_NOISE})
    assert p["bound"] == "no device events" and p["gpu_span_ms"] == 0
    assert "no device events" in prof.describe(p)
    assert prof.describe({"error": "CUPTI unavailable"}) == "profile failed: CUPTI unavailable"


def test_profile_step_traces_the_step_after_the_warm_up(tmp_path):
    """One warm-up call then one traced call: the kept trace holds the second call's
    ops only (a profiler cycle that ended before the export would leave none)."""
    calls = []
    x = torch.randn(64, 64)

    def step():
        calls.append(1)
        for _ in range(2 * len(calls)):  # 2 products in the warm-up, 4 in the traced call
            x @ x

    path = tmp_path / "profiles" / "step.json.gz"
    p = prof.profile_step(step, cuda=False, sync=lambda: None, trace_path=path)
    assert len(calls) == 2
    assert p["wall_ms"] > 0 and p["trace"] == "step.json.gz"
    with gzip.open(path) as f:
        trace = json.load(f)
    mms = [e for e in trace["traceEvents"] if e.get("name") == "aten::mm" and e.get("ph") == "X"]
    assert len(mms) == 4
    assert p["bound"] == "no device events"  # CPU activity only: nothing on a device


def _results_with_short_length():
    gib = 2**30
    runs = [
        _run("pinstream", "full_load", 600, 30),
        _run("pinstream", "budget", 620, 10, budget_gb=10, prefetch=2, bytes_uploaded_per_step=18 * gib),
        _run("comfyui_lowvram", "lowvram", 650, 10, budget_gb=10, loaded_bytes=11 * gib, kept_on_device_bytes=0),
        _run("pinstream", "full_load", 150, 30, seq=200),
        _run("pinstream", "budget", 360, 10, budget_gb=10, prefetch=2, seq=200, bytes_uploaded_per_step=18 * gib,
            profile=prof.analyze_trace({"traceEvents": [_copy(0.0, 350_000.0, 18 * gib)]}, wall_ms=360)),
        _run("comfyui_lowvram", "lowvram", 540, 10, budget_gb=10, seq=200,
            profile={"skipped": "time budget"}),
    ]
    return {
        "link": {"pinned_peak_gbps": 54.0},
        "wan14b": {"seq_len": 1000, "short_seq_len": 200, "model_bytes": 28 * gib, "compute_only_ms": 600,
                   "short_compute_only_ms": 150, "transfer_only_ms": 560, "runs": runs},
        "model_offload": {}, "baselines": {},
    }


def test_comparisons_state_the_best_possible_speed_up():
    """No system's step beats max(compute-only, the bytes PinStream moves at that
    budget at the pinned peak): the target line says how far a baseline is from it."""
    results = _results_with_short_length()
    by_name = {t["target"]: t for t in evaluate_targets(results)}
    main = by_name["PinStream speed-up vs ComfyUI core lowvram at equal VRAM"]
    upload_ms = 18 * 2**30 / 54e9 * 1000  # 357.9 ms: under compute-only at the main length
    assert main["measured"] == pytest.approx(650 / 620, rel=1e-3)
    assert main["ceiling"] == pytest.approx(650 / 600, rel=1e-3)
    assert "best possible 1.08x" in main["detail"]
    # the bytes each side moves per step (28 GiB model, 11 GiB loaded by ComfyUI)
    assert "PinStream uploads 18.00 GiB, comfyui_lowvram casts 17.00 GiB" in main["detail"]
    short = next(t for n, t in by_name.items() if n.startswith("at transfer-bound") and "ComfyUI" in n)
    assert short["measured"] == pytest.approx(540 / 360, rel=1e-3)
    assert short["ceiling"] == pytest.approx(540 / upload_ms, rel=1e-3)  # uploads bound it here
    assert f"{upload_ms:.0f} ms" in short["detail"]


def test_summary_lists_the_traced_steps():
    results = _results_with_short_length()
    results["targets"] = evaluate_targets(results)
    text = summary_text(results)
    assert "where the device time goes" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("pinstream budget 10 GB prefetch 2 at seq 200"))
    assert "transfer-bound" in line and "18.00 GiB" in line
    # a profile skipped for time is not listed as one
    assert not any(ln.strip().startswith("comfyui_lowvram lowvram 10 GB at seq 200") for ln in text.splitlines())


def test_time_breakdown_segments_add_up_to_the_step():
    from bench.plot import SEGMENTS, breakdown

    trace = {"traceEvents": [_kernel(0.0, 100.0), _copy(50.0, 150.0, 10**6), _memset(250.0, 10.0),
                             _kernel(300.0, 50.0)]}
    p = prof.analyze_trace(trace, wall_ms=0.5)
    seg = dict(zip((name for name, _ in SEGMENTS), breakdown(p)))
    assert seg["kernels alone"] == pytest.approx(0.100)           # [0, 50] and [300, 350]
    assert seg["kernels with an upload under them"] == pytest.approx(0.050)
    assert seg["uploads alone (the device waits on the link)"] == pytest.approx(0.100)  # [100, 200]
    assert seg["other device work"] == pytest.approx(0.010)       # the memset
    assert seg["device idle"] == pytest.approx(0.090)             # [200, 250] and [260, 300]
    assert seg["host time outside the device's span"] == pytest.approx(0.150)
    assert sum(seg.values()) == pytest.approx(0.5)
