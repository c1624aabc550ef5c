"""`python -m pinstream bench disk --quick` (the disk tier against the disk's own read
rate) and the GPU check's disk-tier section in its dry run: the JSON they promise, rates
that were measured (> 0), bit-identical outputs, and nothing left in the spill directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _native_ok() -> bool:
    try:
        from pinstream import _C

        return hasattr(_C, "DiskReader")
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(not _native_ok(), reason="pinstream._C with the disk tier is not built")


def _run(args, timeout=300, **extra_env):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra_env)
    env.pop("OUT", None)
    return subprocess.run([sys.executable, "-m", "pinstream", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _fs_type(path: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from bench.disk import file_system

    return file_system(str(path))["type"]


def _check_quick(r: dict, proc) -> None:
    for key in ("disk_read_gbps", "pinstream_disk_gbps", "coded_weights_gbps", "rss_bytes", "host_budget_bytes",
                "read_ring_bytes", "disk_how", "device", "engine", "torch", "date", "file_system", "spill_dir",
                "ratio_to_o_direct", "coded_ratio_to_o_direct", "rss_limit_bytes", "pinstream_disk_wall_gbps"):
        assert key in r, key
    d = r["disk_read_gbps"]
    assert set(d) >= {"o_direct", "buffered"}
    assert d["buffered"] > 0
    assert isinstance(r["page_cache_dropped"], bool)
    assert r["pinstream_disk_gbps"] > 0 and r["pinstream_disk_wall_gbps"] > 0 and r["transfer_only_disk_gbps"] > 0
    assert r["compute_off_cpu_disk_gbps"] > 0
    for run in r["runs"]["stored"]:  # each block asleep for the steps' mean compute time of a block
        off = run["compute_off_cpu"]
        assert off["sleep_ms_per_block"] > 0 and off["disk_bytes"] > 0
        assert off["ms_per_pass"] > off["sleep_ms_per_block"] * run["blocks"]
    assert r["coded_weights_gbps"] > 0 and 0.5 < r["coded_ratio"] < 1.0
    assert r["rss_bytes"] > 0 and r["rss_limit_bytes"] > 0
    assert r["host_budget_bytes"] > 0 and r["read_ring_bytes"] > 0 and r["disk_blocks"] > 0
    assert r["disk_bytes_per_step"] > 0
    assert r["bit_identical"] is True
    for run in r["runs"]["stored"] + r["runs"]["compressed"]:
        assert run["max_abs_diff"] == 0 and run["disk_blocks"] > 0 and run["spill_removed"]
    assert "pinstream_disk_gbps / disk_read_gbps.o_direct" in proc.stdout
    assert "coded_weights_gbps" in proc.stdout


def test_bench_disk_quick_writes_its_figures(tmp_path):
    out, spill = tmp_path / "disk.json", tmp_path / "spill"
    proc = _run(["bench", "disk", "--quick", "--spill-dir", str(spill), "--json", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    _check_quick(r, proc)
    assert r["quick"] is True and r["model"]["preset"] == "tiny"
    if r["file_system"]["type"] == "tmpfs":
        assert r["disk_read_gbps"]["o_direct"] is None and "O_DIRECT refused" in r["o_direct_refused"]
    else:
        assert r["disk_read_gbps"]["o_direct"] > 0 and r["disk_read_gbps"]["o_direct_block_requests"] > 0
        # through io_uring where the build and kernel allow it, else why not
        assert r["disk_read_gbps"]["o_direct_io_uring"] is None or r["disk_read_gbps"]["o_direct_io_uring"] > 0
        assert r["io_uring"]["how"]
        assert r["ratio_to_o_direct"] > 0
    if r["disk_read_gbps"]["o_direct"] is not None:
        # the disk's O_DIRECT rate on each run's own spill file, right before and right after it
        assert r["same_file_o_direct_gbps"] > 0 and r["ratio_to_same_file_o_direct"] > 0
        assert r["coded_same_file_o_direct_gbps"] > 0 and r["coded_ratio_to_same_file_o_direct"] > 0
        for run in r["runs"]["stored"] + r["runs"]["compressed"]:
            sf = run["same_file_o_direct"]
            assert len(sf["before_after_gbps"]) == 2 and sf["bytes"] == 4 * run["spill_bytes"]
        assert "against O_DIRECT on the spill files themselves" in proc.stdout
    # how the runtime reads the spill file; read buffered, the page cache is dropped between steps
    assert r["disk_how"].startswith(("O_DIRECT", "io_uring", "buffered"))
    for run in r["runs"]["stored"]:
        assert run["page_cache_dropped_between_steps"] == run["disk_how"].startswith("buffered")
    # two models taking turns: the waiting one's first blocks are read ahead when warm
    sw = r["switch"]
    assert set(sw) == {"cold", "warm"} and all(v["bit_identical"] for v in sw.values())
    assert all(v["first_step_ms"] > 0 and v["steady_step_ms"] > 0 and v["stall_ms"] >= 0 for v in sw.values())
    assert sw["warm"]["first_step_disk_read_misses"] <= sw["cold"]["first_step_disk_read_misses"]
    # two prompts of two models under one pinning cap: fixed budgets, automatic, moves forced
    sh = r["shared_ram"]
    assert set(sh["setups"]) == {"fixed", "shared", "untold", "forced"}
    assert all(v["bit_identical"] and v["prompt_ms"] > 0 for v in sh["setups"].values())
    assert sh["setups"]["fixed"]["move_ms"] == 0 and sh["setups"]["fixed"]["moved_to_ram_bytes"] == 0
    assert all(sum(v["host_bytes"]) <= sh["pin_cap_bytes"] for k, v in sh["setups"].items() if k != "fixed")
    # and with each block asleep instead of computing (the compute off the CPU): no outputs to compare
    off = r["shared_ram_compute_off_cpu"]
    assert set(off["setups"]) == set(sh["setups"]) and off["block_sleep_ms"] > 0
    assert all(v["bit_identical"] is None and v["prompt_ms"] > 0 for v in off["setups"].values())
    assert off["setups"]["fixed"]["disk_bytes_per_prompt"] > 0
    assert list(spill.iterdir()) == []  # the test file and the spill files are gone


@pytest.mark.skipif(not os.path.isdir("/dev/shm") or _fs_type(Path("/dev/shm")) != "tmpfs",
                    reason="no tmpfs at /dev/shm")
def test_bench_disk_on_tmpfs_says_it_measures_memory(tmp_path):
    spill = Path("/dev/shm") / f"pinstream-bench-disk-test-{os.getpid()}"
    out = tmp_path / "disk.json"
    try:
        proc = _run(["bench", "disk", "--quick", "--spill-dir", str(spill), "--json", str(out)])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        r = json.loads(out.read_text())
        assert r["file_system"]["type"] == "tmpfs" and r["ram_file_system"] is True
        assert "memory rates, not a disk's" in r["note"] and "NOTE: the spill dir is on tmpfs" in proc.stdout
        if r["disk_read_gbps"]["o_direct"] is None:  # O_DIRECT refused (tmpfs before Linux 6.6)
            assert r["ratio_to_o_direct"] is None and r["disk_how"].startswith("buffered")
            assert r["runs"]["stored"][0]["page_cache_dropped_between_steps"] is True
            assert "O_DIRECT refused" in r["o_direct_refused"] and "O_DIRECT refused on tmpfs" in proc.stdout
        else:
            assert "O_DIRECT accepted" in r["note"]
        assert r["bit_identical"] is True and r["pinstream_disk_gbps"] > 0
        assert list(spill.iterdir()) == []
    finally:
        if spill.exists():
            for f in spill.iterdir():
                f.unlink()
            spill.rmdir()


def test_gpu_check_dry_run_measures_the_disk_tier(tmp_path):
    """The GPU check's disk-tier section (14B-shaped with an 8 GB host budget on a GPU; tiny
    here): step against max(compute-only, disk read, link upload), all measured in the run."""
    out = tmp_path / "gpu"
    spill = tmp_path / "spill"
    proc = _run(["bench", "gpu", "--dry-run", "--out", str(out), "--time-budget-s", "60", "--skip", "link",
                 "wan14b", "baselines", "fp8", "naive_swap", "accelerate"], PINSTREAM_SPILL_DIR=str(spill))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    d = r["disk"]
    assert "error" not in d and "skipped" not in d, d
    for key in ("step_ms", "compute_only_ms", "disk_read_ms_per_step", "upload_ms_per_step", "floor_ms",
                "step_over_floor", "disk_bytes_per_step", "spill_o_direct_gbps", "disk_gbps_for_floor",
                "pinstream_disk_gbps"):
        assert d[key] is not None and d[key] > 0, (key, d)
    assert d["floor_ms"] == max(d["compute_only_ms"], d["disk_read_ms_per_step"], d["upload_ms_per_step"])
    assert d["bound_by"] in ("compute-only", "disk read", "link upload")
    assert 0 < d["disk_blocks"] <= d["blocks"]
    assert d["host_budget_bytes"] < d["model_bytes"]
    assert "measured in the disk section" in d["compute_only_source"]
    assert "disk tier, host budget" in (out / "summary.txt").read_text()
    assert not r.get("errors"), r.get("errors")
    assert list(spill.iterdir()) == []
