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
