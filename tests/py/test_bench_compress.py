"""`python -m pinstream bench compress` on the demo preset: the JSON it promises, round trips
checked inside, and the bf16 ratio of weights initialised like Wan's under 0.70."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_compress_writes_its_figures(tmp_path):
    out = tmp_path / "compress.json"
    r = subprocess.run([sys.executable, "-m", "pinstream", "bench", "compress", "--preset", "demo", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = {(x["source"].split(",")[0], x["dtype"]): x for x in data["results"]}
    bf16 = rows[("wan-shaped", "bf16")]
    assert set(bf16) == {"dtype", "source", "ratio", "encode_gbps_per_core", "decode_gbps_per_core"}
    assert 0.5 < bf16["ratio"] < 0.70
    assert bf16["encode_gbps_per_core"] > 0 and bf16["decode_gbps_per_core"] > 0
    assert rows[("wan-shaped", "fp16")]["ratio"] > bf16["ratio"]  # fp16's top byte carries mantissa bits
    comp = {(x["source"].split(",")[0], x["dtype"]): x for x in data["comparison"]}
    c = comp[("wan-shaped", "bf16")]
    assert c["entropy_bound_ratio"] <= c["huffman_ratio"] < c["fixed3_ratio"] < c["fixed4_ratio"]
