"""The README's main job, `python -m pinstream demo`, end to end on a tiny preset (the
default preset runs the same code on a larger model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_mode_and_reports_bit_identical_results(tmp_path):
    out = tmp_path / "demo.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pinstream", "demo", "--preset", "tiny", "--steps", "1",
                           "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every lossless run is bit-identical to full_load" in proc.stdout
    r = json.loads(out.read_text())
    runs = r["runs"]
    modes = {(x["mode"], x["prefetch"], x["transfer_dtype"]) for x in runs}
    for mode in ("full_load", "model_offload", "sequential", "budget"):
        assert any(m == mode for m, _p, _t in modes), (mode, modes)
    full = next(x for x in runs if x["mode"] == "full_load")
    for x in runs:
        assert x["step_ms"] > 0
        if x["transfer_dtype"] == "auto":
            assert x["max_abs_diff"] == 0, x
        else:  # fp8 transfer: lossy, and close
            assert 0 < x["max_abs_diff"] < 0.1, x
        if x["mode"] == "sequential":
            assert x["peak_device_bytes"] < full["peak_device_bytes"] and x["bytes_streamed_per_step"] > 0
    fp8 = [x for x in runs if x["transfer_dtype"] != "auto"]
    seq = [x for x in runs if x["mode"] == "sequential" and x["transfer_dtype"] == "auto"]
    assert fp8 and seq and fp8[0]["bytes_streamed_per_step"] < 0.6 * seq[0]["bytes_streamed_per_step"]
    # without --host-budget-mb nothing goes to disk and the output has no disk lines
    assert not any(x.get("disk") or "host_budget_bytes" in x for x in runs)
    assert "disk tier" not in proc.stdout and "(disk)" not in proc.stdout


DISK_KEYS = {"host_budget_bytes", "disk_bytes_per_step", "disk_gbps", "host_rss_bytes"}


def test_demo_host_budget_streams_blocks_from_disk_bit_identically(tmp_path):
    """--host-budget-mb: the streaming modes again with the blocks beyond the host budget in
    a spill file, read from disk every step; the same outputs as full_load."""
    out = tmp_path / "demo.json"
    spill = tmp_path / "spill"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PINSTREAM_SPILL_DIR=str(spill))
    proc = subprocess.run([sys.executable, "-m", "pinstream", "demo", "--preset", "tiny", "--steps", "4",
                           "--device", "cpu", "--prefetch", "1", "--no-fp8", "--host-budget-mb", "0.25",
                           "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "every lossless run is bit-identical to full_load" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    disk = [x for x in runs if x.get("disk")]
    assert {x["mode"] for x in disk} == {"sequential", "budget"}, runs
    for x in disk:
        assert DISK_KEYS <= set(x), x
        assert x["max_abs_diff"] == 0, x
        assert x["host_budget_bytes"] == int(0.25 * 2**20)
        assert x["disk_blocks"] > 0 and x["disk_how"]
        assert x["host_rss_bytes"] > 0
    seq = next(x for x in disk if x["mode"] == "sequential")
    # every block on disk is read once a step in sequential mode. The count is taken from the
    # end of the first step to the end of the last (3 steps here): the reads ahead in flight at
    # either end (prefetch 1 + read-ahead 2 blocks of the tiny preset's equal blocks) move it
    # by at most 3 blocks over the 3 steps
    assert seq["disk_bytes_per_step"] > 0 and seq["disk_gbps"] > 0
    one_block = seq["disk_block_bytes"] / seq["disk_blocks"]
    assert abs(seq["disk_bytes_per_step"] - seq["disk_block_bytes"]) <= one_block + 4096, seq
    assert "disk tier, sequential prefetch 1: host budget" in proc.stdout
    assert "(disk)" in proc.stdout
    # the rows without a host budget keep their keys only
    assert not any(DISK_KEYS & set(x) for x in runs if not x.get("disk"))
    # the spill files go with their handles
    assert not spill.exists() or not any(spill.iterdir())
