"""`python -m pinstream bench gpu`: the benchmarks of bench/gpu_check.sh.

Sections, in this order, each timed against its own share of ``--time-budget-s``
and wrapped so that a failure is recorded in the JSON and the run goes on:

link           host-to-device bandwidth at block sizes 4 MB .. 1 GB: pageable
               ``.to()``, pinned ``copy_(non_blocking=True)`` (cudaMemcpyAsync,
               the limit) and PinStream block uploads through ``_C.Runtime``
               (acquire/release with no compute, wall clock and event-timed)
wan14b         a Wan 2.1 14B-shaped transformer (40 blocks, dim 5120, FFN 13824,
               40 heads, bf16, random weights) at the sequence length where one
               block's compute is closest to its upload (both reported):
               full_load (= compute-only), sequential prefetch 1/2/3, budget
               10/20/40 GB, transfer-only (all blocks streamed, no compute),
               full_load against sequential prefetch 2 at Wan 480p x 81 frames
               (32,760 tokens), the same judged runs again at a transfer-bound
               length (2,048 tokens), and PinStream's model offload (load/unload)
baselines      the close comparisons, each on a fresh build of the model and the
               same inputs: ComfyUI core's lowvram path (async offload, pinned
               memory) when a ComfyUI source tree is found (COMFYUI_PATH or
               --comfyui), diffusers group offloading (block_level and
               leaf_level, use_stream=True), at both lengths
fp8            sequential streaming of an 8-block slice with blocks sent as
               stored and as fp8, at both lengths
disk           the disk tier (disk_gpu.py): the same model with a host budget of
               8 GB and the rest in a spill file, sequential prefetch 2: its step
               against max(compute-only, disk read time, link upload time) per step
slow_baselines the systems PinStream beats many times over, last, so that a short
               budget cuts them and not the close comparisons: .to(device) /
               .to("cpu") of the whole model, naive per-block .to() swap
               (WanVideoWrapper style), accelerate cpu_offload

The runs each close comparison is judged on (PinStream's least-memory sequential
run and its smallest budget, ComfyUI at that budget, both diffusers modes, at both
lengths; at the transfer-bound length PinStream and ComfyUI at every budget the
model does not fit in) also get one traced step (profile.py): where their device time goes,
in the JSON under ``profile`` and as Chrome traces in ``$OUT/profiles/``.

Every run records its step time (median of timed steps after a warm-up),
torch.cuda.max_memory_allocated and the host RSS. The JSON is rewritten after
every run, so a run stopped at any point leaves valid results. ``--dry-run``
runs every code path on the CPU with the host engine and a tiny model.

Memory: the 14B model (~28.6 GB) is built straight into host memory with cheap
random values (meta device, then filled from a random pool) and rebuilt per
system; at most one copy lives at a time, plus the pinned copies a baseline
makes itself (diffusers: one pinned copy per tensor, power-of-two rounded).
"""

# The code, by concern: config.py (what is measured, at which sizes), workloads.py (the
# model and its inputs), measure.py (timing, memory, the time budget), link.py,
# pinstream_runs.py and baseline_runs.py (the sections; baselines.py applies each baseline
# as its users do), runner.py (the run and its JSON), report.py (targets, summary.txt),
# profile.py (traced steps), plot.py (the figures). This module is the command line.

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from .config import SKIPPABLE, make_config
from .measure import log
from .runner import Bench


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m pinstream bench gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, host engine, tiny model: runs every code path in seconds")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else ./out/gpu-check)")
    ap.add_argument("--skip", nargs="*", default=[], choices=SKIPPABLE, metavar="NAME",
                    help=f"sections or systems to leave out: {', '.join(SKIPPABLE)}")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="wall-clock budget of the whole benchmark (default 300; dry run 90)")
    ap.add_argument("--seq-len", type=int, default=None, help="use this sequence length instead of choosing one")
    ap.add_argument("--comfyui", default=None, help="ComfyUI source tree (default: COMFYUI_PATH)")
    ap.add_argument("--device", default=None, help="device (default cuda; dry run cpu)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = make_config(args.dry_run)
    if args.device:
        cfg.device = args.device
    out = Path(args.out or os.environ.get("OUT") or "out/gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.time_budget_s if args.time_budget_s is not None else (90.0 if cfg.dry else 300.0)
    import torch

    if cfg.cuda and not torch.cuda.is_available():
        msg = "no CUDA device (torch.cuda.is_available() is False); use --dry-run on a machine without a GPU"
        print(f"bench gpu: {msg}", file=sys.stderr)
        (out / "results.json").write_text(json.dumps({"error": msg, "torch": torch.__version__,
                                                      "cuda": str(torch.version.cuda), "dry_run": False}, indent=2))
        return 2
    if not cfg.cuda:
        # one intra-op thread: tiny ops on small CPU machines otherwise pay
        # milliseconds per op waking the thread pool (seen: 8 ms per 256 KB copy)
        torch.set_num_threads(1)
    bench = Bench(cfg, out, set(args.skip), budget, args.seq_len, args.comfyui)
    bench.header()

    def on_term(signum, _frame):
        bench.results.setdefault("errors", {})["signal"] = f"stopped by signal {signum}"
        with contextlib.suppress(Exception):
            bench.finish()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    log(f"{'DRY RUN: ' if cfg.dry else ''}device {bench.results['device']}, time budget {budget:.0f} s, "
         f"out {out}")
    # shares of the time left when each section starts
    if not bench.skipped("link"):
        bench.section("link", bench.link, 0.10)
    else:
        bench.results["link"]["skipped"] = "--skip"
    # the close comparisons (ComfyUI, diffusers) before the slow systems: a short budget
    # cuts what PinStream wins many times over, not what is judged closely
    if not bench.skipped("wan14b"):
        bench.section("wan14b", bench.wan14b, 0.40)
    else:
        bench.results["wan14b"]["skipped"] = "--skip"
    bench.section("baselines", bench.fresh_systems, 0.65)
    if not bench.skipped("fp8"):
        bench.section("fp8", bench.fp8_transfer, 0.40)
    if not bench.skipped("disk"):
        bench.section("disk", bench.disk_tier, 0.60)
    else:
        bench.results["disk"]["skipped"] = "--skip"
    bench.section("slow_baselines", bench.slow_baselines, 1.0)
    text = bench.finish()
    print(text, flush=True)
    log(f"wrote {out / 'results.json'} and {out / 'summary.txt'} in {bench.clock.elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
