"""The GPU check's dry run (bench/gpu_check.sh --dry-run, `python -m pinstream bench gpu
--dry-run`): every code path on the CPU with the host engine and a tiny model, the
results JSON in the shape the real run writes, and the two plots.

The dry run runs in a subprocess: it may import ComfyUI, which keeps process-wide
state that the ComfyUI tests in the same pytest session must not inherit.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SYSTEMS = {"pinstream", "naive_swap", "accelerate", "diffusers_block", "diffusers_leaf", "comfyui_lowvram"}


def _native_ok() -> bool:
    try:
        from pinstream import _C  # noqa: F401

        return True
    except ImportError:
        return False


pytestmark = [
    pytest.mark.skipif(not _native_ok(), reason="pinstream._C is not built (python install.py)"),
    pytest.mark.skipif(bool(os.environ.get("PINSTREAM_GPU_CHECK")),
                       reason="the GPU check runs the real benchmark right after the tests"),
]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pinstream", "bench", "gpu", "--dry-run", "--out", str(out), "--time-budget-s", "50"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    return out, results, proc.stdout


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_results_have_the_issue_schema(dry_run):
    _out, r, _log = dry_run
    for key in ("device", "driver", "torch", "cuda", "date"):
        assert isinstance(r[key], str) and r[key], key
    assert r["dry_run"] is True

    link = r["link"]
    assert _is_num(link["pinned_peak_gbps"]) and link["pinned_peak_gbps"] > 0
    assert _is_num(link["pageable_gbps"]) and link["pageable_gbps"] > 0
    by_mb = link["pinstream_gbps_by_mb"]
    assert isinstance(by_mb, dict) and len(by_mb) >= 2
    for k, v in by_mb.items():
        assert isinstance(k, str) and float(k) > 0
        assert _is_num(v) and v > 0

    w = r["wan14b"]
    assert isinstance(w["seq_len"], int) and w["seq_len"] > 0
    for key in ("full_load_ms", "compute_only_ms", "transfer_only_ms"):
        assert _is_num(w[key]) and w[key] > 0, key
    assert w["full_load_ms"] == w["compute_only_ms"]
    rs = w["real_seq"]
    assert isinstance(rs["seq_len"], int) and rs["seq_len"] > w["seq_len"]
    assert _is_num(rs["full_load_ms"]) and _is_num(rs["sequential_ms"])
    # both times of the seq-len choice are reported
    assert _is_num(w["block_compute_ms"]) and _is_num(w["block_upload_ms"])

    runs = w["runs"]
    assert runs
    for run in runs:
        assert run["system"] in SYSTEMS, run
        assert isinstance(run["mode"], str) and run["mode"]
        assert run["budget_gb"] is None or _is_num(run["budget_gb"])
        assert run["prefetch"] is None or isinstance(run["prefetch"], int)
        assert _is_num(run["step_ms"]) and run["step_ms"] > 0
        assert isinstance(run["peak_device_bytes"], int) and run["peak_device_bytes"] >= 0
        assert isinstance(run["host_rss_bytes"], int) and run["host_rss_bytes"] > 0

    mo = r["model_offload"]
    for key in ("load_s", "unload_s", "baseline_load_s", "baseline_unload_s"):
        assert _is_num(mo[key]) and mo[key] >= 0, key


def test_every_configuration_ran(dry_run):
    _out, r, _log = dry_run
    runs = r["wan14b"]["runs"]
    systems = {run["system"] for run in runs}
    assert {"pinstream", "naive_swap"} <= systems
    ps = [run for run in runs if run["system"] == "pinstream"]
    seq = r["wan14b"]["seq_len"]
    assert {run["prefetch"] for run in ps if run["mode"] == "sequential" and run["seq_len"] == seq} == {1, 2, 3}
    assert len([run for run in ps if run["mode"] == "budget" and run["seq_len"] == seq]) == 3
    assert len([run for run in runs if run["system"] == "naive_swap"]) == 3
    # sequential runs carry their overlap efficiency
    assert all(_is_num(run["overlap_efficiency"]) for run in ps if run["mode"] == "sequential"
               and run["seq_len"] == seq)
    # a baseline that cannot run says why instead of vanishing
    for system in SYSTEMS - {"pinstream"}:
        status = r["baselines"][system]
        assert set(status) & {"ok", "skipped", "error"}, (system, status)
        assert "error" not in status, (system, status)
        if "ok" in status:
            assert system in systems
    for mod, system in (("accelerate", "accelerate"), ("diffusers", "diffusers_block"),
                        ("diffusers", "diffusers_leaf")):
        try:
            __import__(mod)
        except ImportError:
            continue
        assert system in systems, f"{mod} is installed, so {system} must have run"
    assert not r.get("errors"), r.get("errors")


def test_fp8_section_measures_both_transfers(dry_run):
    _out, results, _log = dry_run
    f8 = results["fp8"]
    assert f8["auto"]["bytes_per_step"] > 0 and f8["fp8_e4m3"]["bytes_per_step"] > 0
    assert f8["bytes_ratio"] < 0.6  # fp8 codes + scales vs the stored dtype
    assert f8["fp8_e4m3"]["fp8_max_abs_error"] > 0 == f8["auto"]["fp8_max_abs_error"]


def test_transfer_bound_length_is_measured_for_the_judged_systems(dry_run):
    _out, r, _log = dry_run
    w = r["wan14b"]
    short = w["short_seq_len"]
    assert isinstance(short, int) and 0 < short < w["seq_len"]
    at_short = [run for run in w["runs"] if run["seq_len"] == short]
    ps = {(run["mode"], run["budget_gb"]) for run in at_short if run["system"] == "pinstream"}
    judged = [b for b in {run["budget_gb"] for run in w["runs"] if run["mode"] == "budget"}
              if b * 2**30 < w["model_bytes"]]
    assert judged and ps == {("full_load", None), ("sequential", None)} | {("budget", b) for b in judged}
    assert _is_num(w["short_compute_only_ms"])
    systems = {run["system"] for run in at_short}
    assert not systems & {"naive_swap", "accelerate"}  # far slower either way: not repeated
    for system, status in r["baselines"].items():
        if system in ("comfyui_lowvram", "diffusers_block", "diffusers_leaf") and "ok" in status:
            assert system in systems, system
    f8 = r["fp8"]
    assert f8["short_seq_len"] == short and _is_num(f8["short_step_ratio"])
    assert f8["fp8_e4m3"]["short"]["bytes_per_step"] < f8["auto"]["short"]["bytes_per_step"]


def test_judged_comparisons_are_traced(dry_run):
    """One traced step each of the runs the close targets compare (ComfyUI and
    diffusers against PinStream), at both lengths; not of the slow systems."""
    out, r, _log = dry_run
    w = r["wan14b"]
    profiled = [run for run in w["runs"] if "profile" in run]
    assert {run["system"] for run in profiled} <= {"pinstream", "comfyui_lowvram", "diffusers_block",
                                                    "diffusers_leaf"}
    for run in profiled:
        p = run["profile"]
        assert "error" not in p, (run["system"], p)
        if "skipped" in p:
            continue
        assert _is_num(p["wall_ms"]) and p["wall_ms"] > 0
        assert p["bound"] == "no device events"  # the host engine: nothing runs on a device
        assert (out / "profiles" / p["trace"]).stat().st_size > 100
    ps = {(run["mode"], run["seq_len"]) for run in profiled if run["system"] == "pinstream"}
    assert ps == {(m, n) for m in ("sequential", "budget") for n in (w["seq_len"], w["short_seq_len"])}
    judged = min(run["budget_gb"] for run in w["runs"] if run["mode"] == "budget")
    # at the long length only the smallest budget is traced; at the transfer-bound length
    # every budget the model does not fit in (each is its own case there)
    short = w["short_seq_len"]
    assert all(run["budget_gb"] == judged for run in profiled
               if run["mode"] in ("budget", "lowvram") and run["seq_len"] != short)
    short_budgets = {run["budget_gb"] for run in w["runs"]
                     if run["system"] == "pinstream" and run["mode"] == "budget" and run["seq_len"] == short}
    assert len(short_budgets) >= 2
    assert {(run["budget_gb"], run["prefetch"]) for run in profiled
            if run["system"] == "pinstream" and run["mode"] == "budget" and run["seq_len"] == short} == \
        {(run["budget_gb"], run["prefetch"]) for run in w["runs"]
         if run["system"] == "pinstream" and run["mode"] == "budget" and run["seq_len"] == short}
    for system, status in r["baselines"].items():
        if system in ("comfyui_lowvram", "diffusers_block", "diffusers_leaf") and "ok" in status:
            assert {run["seq_len"] for run in profiled if run["system"] == system} == \
                {w["seq_len"], w["short_seq_len"]}, system
    assert "where the device time goes" in (out / "summary.txt").read_text()


def test_summary_lists_every_target(dry_run):
    out, r, log = dry_run
    text = (out / "summary.txt").read_text()
    assert "DRY RUN" in text
    goals = [t["target"] for t in r["targets"]]
    # the nine targets, plus ComfyUI and diffusers again at the transfer-bound length
    assert len(goals) == 11
    assert sum(g.startswith("at transfer-bound seq len") for g in goals) == 2
    for t in r["targets"]:
        assert t["met"] in (True, False, None)
        assert t["target"] in text
    assert "targets (ratios within this run)" in log


def test_plot_writes_three_pngs(dry_run, tmp_path):
    pytest.importorskip("matplotlib")
    out, _r, _log = dry_run
    from bench import plot

    assert plot.main([str(out / "results.json"), "--out", str(tmp_path)]) == 0
    for name in ("step_vs_budget.png", "bandwidth_vs_block.png", "time_breakdown.png"):
        p = tmp_path / name
        assert p.is_file() and p.stat().st_size > 10_000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(system, mode, step_ms, peak_gib, budget_gb=None, prefetch=None, seq=1000, **extra):
    """One run record as the benchmark writes it (plus ``extra`` fields)."""
    return {"system": system, "mode": mode, "budget_gb": budget_gb, "prefetch": prefetch, "step_ms": step_ms,
            "peak_device_bytes": int(peak_gib * 2**30), "host_rss_bytes": 1, "seq_len": seq, **extra}


def test_targets_compare_at_equal_vram():
    from bench.report import evaluate_targets

    runs = [
        _run("pinstream", "full_load", 100, 30),
        _run("pinstream", "sequential", 104, 3, prefetch=1),
        _run("pinstream", "sequential", 102, 4, prefetch=2),
        _run("pinstream", "budget", 101, 10, budget_gb=10, prefetch=2),
        _run("pinstream", "budget", 100, 40, budget_gb=40, prefetch=2),
        _run("naive_swap", "block_swap", 300, 10, budget_gb=10),
        _run("naive_swap", "block_swap", 100, 30, budget_gb=40),  # the model fits: not judged
        _run("accelerate", "cpu_offload", 600, 1),
        _run("diffusers_block", "block_level", 150, 4.2),
        _run("diffusers_leaf", "leaf_level", 140, 1),
    ]
    for r in runs[1:3]:
        r["overlap_efficiency"] = r["step_ms"] / 100
    results = {
        "link": {"pinned_peak_gbps": 50.0, "pinned_gbps_by_mb": {"16": 40.0, "64": 50.0, "256": 50.0},
                 "pinstream_gbps_by_mb": {"16": 30.0, "64": 48.0, "256": 49.0}},
        "wan14b": {"seq_len": 1000, "model_bytes": 28 * 2**30, "compute_only_ms": 100, "transfer_only_ms": 90,
                   "real_seq": {"seq_len": 32760, "full_load_ms": 1000, "sequential_ms": 1015}, "runs": runs},
        "model_offload": {"load_s": 0.62, "unload_s": 0.01, "model_bytes": 28 * 2**30},
        "baselines": {"comfyui_lowvram": {"skipped": "no ComfyUI"}},
    }
    by_name = {x["target"]: x for x in evaluate_targets(results)}
    link = next(x for n, x in by_name.items() if n.startswith("PinStream block upload"))
    assert link["met"] is True and link["measured"] == pytest.approx(0.96)  # 48/50 at 64 MB; 16 MB not judged
    ov = next(x for n, x in by_name.items() if n.startswith("sequential step"))
    assert ov["met"] is True and ov["measured"] == pytest.approx(1.02)
    real = next(x for n, x in by_name.items() if n.startswith("real Wan"))
    assert real["met"] is True
    naive = next(x for n, x in by_name.items() if "naive" in n)
    assert naive["measured"] == pytest.approx(300 / 101, rel=1e-3) and naive["met"] is True
    # diffusers: the better of block/leaf (leaf, 140 ms at 1 GiB); no PinStream run within 10% of
    # 1 GiB, so the one with the least peak (sequential prefetch 1, 104 ms)
    diff = next(x for n, x in by_name.items() if "diffusers" in n)
    assert diff["measured"] == pytest.approx(140 / 104, rel=1e-3) and diff["met"] is True
    acc = next(x for n, x in by_name.items() if "accelerate" in n)
    assert acc["measured"] == pytest.approx(600 / 104, rel=1e-3) and acc["met"] is True
    comfy = next(x for n, x in by_name.items() if "ComfyUI" in n)
    assert comfy["met"] is None and "no ComfyUI" in comfy["detail"]
    load = next(x for n, x in by_name.items() if "reload" in n)
    assert load["met"] is True  # 28 GiB / 0.62 s = 48.5 GB/s = 0.97 of 50
    assert not any(n.startswith("at transfer-bound") for n in by_name)  # no short length measured

    # A transfer-bound length: its comparisons use only the runs at that length.
    results["wan14b"]["short_seq_len"] = 200
    runs += [
        _run("pinstream", "sequential", 60, 4, prefetch=2, seq=200),
        _run("pinstream", "budget", 50, 10, budget_gb=10, prefetch=2, seq=200),
        _run("comfyui_lowvram", "lowvram", 80, 10, budget_gb=10, seq=200),
        _run("diffusers_block", "block_level", 90, 4.2, seq=200),
    ]
    by_name = {x["target"]: x for x in evaluate_targets(results)}
    short_comfy = by_name["at transfer-bound seq len 200: PinStream speed-up vs ComfyUI core lowvram at equal VRAM"]
    assert short_comfy["measured"] == pytest.approx(80 / 50) and short_comfy["met"] is True
    short_diff = next(x for n, x in by_name.items() if n.startswith("at transfer-bound") and "diffusers" in n)
    assert short_diff["measured"] == pytest.approx(90 / 60) and short_diff["met"] is True
    # and the main-length figures are unchanged by them
    assert next(x for n, x in by_name.items() if n.startswith("PinStream speed-up vs diffusers"))["measured"] \
        == pytest.approx(140 / 104, rel=1e-3)


def test_a_broken_runtime_still_leaves_results(tmp_path, monkeypatch):
    """PinStream failing (here: its native runtime) is recorded; the copy baselines of
    the link section and the baselines on the same model still run, and the JSON and
    the summary are written."""
    from bench import gpu
    from pinstream import engine
    from pinstream.native import NativeUnavailable

    def broken():
        raise NativeUnavailable("pinstream._C is broken for this test")

    monkeypatch.setattr(engine, "load_native", broken)
    monkeypatch.setattr("pinstream.native.load_native", broken)
    # in-process: keep this pytest process's thread count and SIGTERM handler
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    monkeypatch.setattr("signal.signal", lambda *a: None)
    rc = gpu.main(["--dry-run", "--out", str(tmp_path), "--time-budget-s", "30",
                   "--skip", "accelerate", "diffusers", "comfyui_lowvram", "real_seq"])
    assert rc == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert "broken for this test" in r["errors"]["pinstream"]
    assert r["link"]["pinned_peak_gbps"] > 0 and r["link"]["pinstream_gbps_by_mb"] == {}
    assert all("broken" in v for v in r["link"]["errors"].values())
    systems = {run["system"] for run in r["wan14b"]["runs"]}
    assert systems == {"naive_swap"}
    assert r["baselines"]["accelerate"] == {"skipped": "--skip"}
    assert (tmp_path / "summary.txt").is_file()


def test_the_rerun_recipe_of_the_gpu_check(tmp_path):
    """bench/README.md's second call on a warm machine: the script with --no-tests and
    GPU_CHECK_BENCH_ARGS leaving out what the first call measured. Here as a dry run:
    the options reach the benchmark, and what comes back fits a device call."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHONUNBUFFERED="1",
               GPU_CHECK_BENCH_ARGS="--skip real_seq model_offload naive_swap accelerate fp8 profile")
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--no-tests"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["baselines"]["naive_swap"] == {"skipped": "--skip"}
    assert r["baselines"]["accelerate"] == {"skipped": "--skip"}
    assert "fp8" not in r and r["wan14b"]["real_seq"]["sequential_ms"] is None
    runs = r["wan14b"]["runs"]
    assert {run["system"] for run in runs} >= {"pinstream"} and not any("profile" in run for run in runs)
    assert {run["seq_len"] for run in runs if run["system"] == "pinstream"} == \
        {r["wan14b"]["seq_len"], r["wan14b"]["short_seq_len"]}
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and "profiles.tar" not in files, files
    assert "commit" in proc.stdout and "bench/results/" in proc.stdout


def test_the_tests_only_check(tmp_path):
    """`--tests-only`, the short correctness call for a device session with little time left:
    no benchmark runs and no results are asked for, and it cannot be combined with
    `--no-tests`, which would leave nothing to do."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--tests-only"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "bench: skipped (--tests-only)" in proc.stdout
    assert "=== benchmarks" not in proc.stdout and "MISSING" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.log"]
    both = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--tests-only", "--no-tests"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert both.returncode == 2 and "leave nothing to run" in both.stderr
