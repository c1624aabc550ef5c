"""`python -m pinstream demo`: a Wan 2.1-shaped transformer under every mode.

Builds a random-weight Wan DiT (real block layout: self-attention, cross-attention,
FFN, modulation), runs a few Euler denoising steps under full_load, model_offload,
sequential and budget with prefetch 1 and 2 (and, with 16-bit weights, sequential and
budget with the weights held and sent in the exact coded form), and prints one row per
run: step time, peak device bytes, bytes streamed per step, pinned host bytes, achieved
upload bandwidth, stall %, and max |difference| from full_load.

--host-budget-mb N adds the disk tier: sequential and budget (first prefetch) again with
at most N MiB of the weights in host RAM and the rest in a spill file (spill_dir:
PINSTREAM_SPILL_DIR, else ~/.cache/pinstream/spill), read from disk each step; for those
runs it prints the bytes read from disk per step, the disk's GB/s and the process's RSS.

Without a GPU it runs the host engine: the "device" is a separate host arena and
the copy queue a worker thread behind an emulated link (--link-gbps).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings

GIB = 1024**3
MIB = 1024**2


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _fmt_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / MIB:.1f} MiB"


def parse_args(argv):
    from .demo_model import WAN_PRESETS

    ap = argparse.ArgumentParser(prog="python -m pinstream demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    wan_presets = sorted(WAN_PRESETS)
    ap.add_argument("--preset", default="demo", help=f"model size preset ({', '.join(wan_presets)}); default demo")
    ap.add_argument("--layers", type=int, default=None, help="override the number of blocks")
    ap.add_argument("--steps", type=int, default=4, help="denoising steps per run (default 4)")
    ap.add_argument("--frames", type=int, default=3, help="latent frames (default 3)")
    ap.add_argument("--size", type=int, default=16, help="latent height and width (default 16)")
    ap.add_argument("--prefetch", type=int, nargs="+", default=[1, 2], help="prefetch depths (default 1 2)")
    ap.add_argument("--modes", nargs="+", default=["full_load", "model_offload", "sequential", "budget"],
                    help="modes to run")
    ap.add_argument("--no-fp8", action="store_true",
                    help="skip the lossy run with blocks sent as fp8 (sequential, first prefetch)")
    ap.add_argument("--budget-fraction", type=float, default=0.5,
                    help="budget mode's VRAM budget as a fraction of the model (default 0.5)")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    ap.add_argument("--engine", default="auto", choices=["auto", "cuda", "host"])
    ap.add_argument("--link-gbps", type=float, default=16.0,
                    help="host engine: emulated link bandwidth in GB/s (default 16, about PCIe 4.0 x16 pinned)")
    ap.add_argument("--dtype", default=None, choices=sorted(_DTYPES),
                    help="weights dtype (default: bfloat16 on cuda, float32 on cpu); with bf16 or fp16 the demo also "
                         "runs sequential and budget with transfer_dtype compressed")
    ap.add_argument("--no-compressed", action="store_true", help="skip the compressed (exact coded) runs")
    ap.add_argument("--host-budget-mb", type=float, default=None, metavar="N",
                    help="also run sequential and budget (first prefetch) with at most N MiB of the weights in host "
                         "RAM and the rest streamed from a spill file on disk (the disk tier)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON to this path")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if any(p < 0 for p in args.prefetch):
        ap.error("--prefetch values must be >= 0")
    if not 0 < args.budget_fraction <= 1:
        ap.error("--budget-fraction must be in (0, 1]")
    if args.link_gbps <= 0:
        ap.error("--link-gbps must be > 0")
    if args.host_budget_mb is not None and not args.host_budget_mb >= 0:
        ap.error("--host-budget-mb must be >= 0")
    return args


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def _build(args, device, dtype):
    import torch

    from .demo_model import WanTransformer

    torch.manual_seed(args.seed)
    overrides = {"dtype": dtype}
    if args.layers is not None:
        overrides["num_layers"] = args.layers
    model = WanTransformer.from_preset(args.preset, **overrides).eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(1, model.in_dim, args.frames, args.size, args.size, generator=g)
    ctx = torch.randn(1, 32, model.text_dim, generator=g)
    return model, x.to(device=device, dtype=dtype), ctx.to(device=device, dtype=dtype)


def _denoise(model, x, ctx, steps, after_step=None):
    """Euler steps x <- x - dt * v(x, t); returns the final latent and per-step ms.
    ``after_step()`` (untimed) runs after each step."""
    import torch

    times = []
    ts = torch.linspace(1000.0, 0.0, steps + 1, device=x.device)
    with torch.inference_mode():
        for i in range(steps):
            _sync(x.device)
            t0 = time.perf_counter()
            v = model(x, ts[i : i + 1].to(x.dtype), ctx)
            x = x - (ts[i] - ts[i + 1]).to(x.dtype) / 1000.0 * v
            _sync(x.device)
            times.append((time.perf_counter() - t0) * 1000.0)
            if after_step is not None:
                after_step()
    return x, times


def _disk_totals(handle):
    """(bytes read into the ring by passes, bytes the reader delivered, busy ms) so far."""
    st = handle.stats()
    return int(st["disk_bytes"]), int(st["disk_bytes_total"]), float(st["disk_busy_ms"])


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_demo(args) -> dict:
    import torch

    import pinstream

    from .engine import stall_percent

    dev = torch.device(args.device) if args.device else (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    engine = args.engine if args.engine != "auto" else ("cuda" if dev.type == "cuda" else "host")
    dtype = getattr(torch, _DTYPES[args.dtype]) if args.dtype else (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    rss0 = _rss()
    model, x, ctx = _build(args, dev, dtype)
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    from .discovery import discover_blocks

    disc = discover_blocks(model)
    largest = disc.largest_block_bytes
    if engine == "host":
        print(f"No GPU used: host engine, the device is a separate host arena and uploads cross an emulated "
              f"{args.link_gbps:g} GB/s link (--link-gbps).", flush=True)
    print(f"Model: Wan 2.1-shaped DiT, preset {args.preset}, {len(disc.blocks)} blocks, {_fmt_bytes(model_bytes)} "
          f"({dtype}), largest block {_fmt_bytes(largest)}, non-block {_fmt_bytes(disc.nonblock_bytes)}; "
          f"latent {tuple(x.shape)}, {args.steps} steps per run", flush=True)

    runs = []
    reference = None
    rss_overhead = 0
    combos = []
    for mode in args.modes:
        if mode in ("full_load", "model_offload"):
            combos.append((mode, args.prefetch[0], "auto", False))
        else:
            combos.extend((mode, p, "auto", False) for p in args.prefetch)
    if not args.no_fp8 and "sequential" in args.modes:
        combos.append(("sequential", args.prefetch[0], "fp8_e4m3", False))
    if not args.no_compressed and dtype in (torch.bfloat16, torch.float16):
        combos.extend((mode, args.prefetch[0], "compressed", False) for mode in ("sequential", "budget")
                      if mode in args.modes)
    elif not args.no_compressed:
        print("(the compressed runs code 16-bit weights: run with --dtype bf16 or fp16 to include them)", flush=True)
    if args.host_budget_mb is not None:
        # the disk tier: the streaming modes with the weights beyond the host budget on disk
        combos.extend((mode, args.prefetch[0], "auto", True) for mode in ("sequential", "budget")
                      if mode in args.modes)
    for mode, prefetch, transfer, disk in combos:
        kw = {}
        if disk:
            kw["host_budget_gb"] = args.host_budget_mb * MIB / GIB
        if mode == "budget":
            # the ring (prefetch + 1 slots) and, compressed, one staging buffer for the coded bytes
            kw["budget_gb"] = max(args.budget_fraction * model_bytes, disc.nonblock_bytes + (prefetch + 2) * largest) / GIB
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        with warnings.catch_warnings():
            # the disk runs' rows say what lives on disk and how it is read
            warnings.filterwarnings("ignore", message=".*live on disk.*", category=RuntimeWarning)
            handle = pinstream.offload(model, mode=mode, prefetch=prefetch, device=dev, engine=engine,
                                       link_gbps=args.link_gbps if engine == "host" else None,
                                       transfer_dtype=transfer, **kw)
        gc.collect()
        if not runs:
            # Host memory beyond the model right after the first offload, before any
            # forward: the pinned copy replaced the original (no second host copy).
            # The host engine's "device" arena is host memory too; it is not counted.
            arena = handle.stats()["device_bytes"] if engine == "host" else 0
            rss_overhead = _rss() - rss0 - model_bytes - arena
        # Warm-up step: learns the block order (first pass) and loads.
        _denoise(model, x, ctx, 1)
        handle.reset_stats()
        passes0 = int(handle.stats().get("passes", 0))  # the pass count is not reset with the others
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        # disk runs: the reader's totals after each step (the first step's count misses the
        # blocks read ahead for it during the warm-up, before the reset)
        disk_after = []
        record = (lambda: disk_after.append(_disk_totals(handle))) if disk else None
        out, times = _denoise(model, x, ctx, args.steps, after_step=record)
        st = handle.stats()
        wall = sum(times)
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            peak = st["peak_device_bytes"]
        if reference is None:
            reference = out.float().clone()
        diff = float((out.float() - reference).abs().max().item())
        row = {
            "mode": handle.mode.name,
            "prefetch": prefetch,
            "transfer_dtype": transfer,
            "step_ms": wall / len(times),
            "peak_device_bytes": int(peak),
            "bytes_streamed_per_step": int(st["bytes_uploaded"] / len(times)),
            "upload_gbps": float(st["upload_gbps"]),
            "stall_pct": stall_percent(st["stall_ms"], wall),
            "max_abs_diff": diff,
            "host_pinned_bytes": int(st["pinned_bytes"]),
        }
        if transfer == "compressed":
            row["coded_ratio"] = float(st["exact_ratio"])
            row["decode_gbps"] = float(st["decode_gbps"])
            row["resident_coded_blocks"] = int(handle.plan.get("coded_blocks", 0))
        if disk:
            passes = max(1, int(st.get("passes", 0)) - passes0)
            per_step, gbps = int(st["disk_bytes"]) // passes, float(st["disk_gbps"])
            if len(disk_after) >= 2:  # steady state: from the end of the first step to the last
                (b0, total0, busy0), (b1, total1, busy1) = disk_after[0], disk_after[-1]
                per_step = (b1 - b0) // (len(disk_after) - 1)
                gbps = (total1 - total0) / ((busy1 - busy0) / 1000.0) / 1e9 if busy1 > busy0 else gbps
            row.update(
                disk=True,
                host_budget_bytes=int(st["host_budget_bytes"]),
                disk_blocks=int(st["disk_blocks"]),
                disk_block_bytes=int(st["disk_block_bytes"]),
                disk_how=st["disk_how"],
                disk_bytes_per_step=int(per_step),
                disk_gbps=gbps,
                host_rss_bytes=int(_rss()),
            )
        runs.append(row)
        handle.detach()
        print(f"  ran {row['mode']:<13} prefetch {prefetch}{'' if transfer == 'auto' else ' ' + transfer}"
              f"{' disk' if disk else ''}: {row['step_ms']:.1f} ms/step", flush=True)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "engine": engine if engine == "cuda" else f"host (emulated link {args.link_gbps:g} GB/s)",
        "model_bytes": int(model_bytes),
        "largest_block_bytes": int(largest),
        "host_rss_overhead_bytes": int(max(rss_overhead, 0)),
        "runs": runs,
    }


def format_table(result: dict) -> str:
    head = (f"{'mode':<24}{'prefetch':>8}{'step ms':>10}{'peak device':>14}{'streamed/step':>15}{'pinned host':>13}"
            f"{'upload GB/s':>13}{'stall %':>9}{'max |diff|':>12}")
    lines = [f"device: {result['device']}   engine: {result['engine']}",
             f"model {_fmt_bytes(result['model_bytes'])}, largest block {_fmt_bytes(result['largest_block_bytes'])}, "
             f"host RSS overhead after offload {_fmt_bytes(result['host_rss_overhead_bytes'])}",
             head, "-" * len(head)]
    for r in result["runs"]:
        transfer = r.get("transfer_dtype", "auto")
        name = r["mode"] + {"auto": "", "fp8_e4m3": " (fp8)", "compressed": " (compressed)"}[transfer]
        if r.get("disk"):
            name += " (disk)"
        lines.append(f"{name:<24}{r['prefetch']:>8}{r['step_ms']:>10.1f}{_fmt_bytes(r['peak_device_bytes']):>14}"
                     f"{_fmt_bytes(r['bytes_streamed_per_step']):>15}{_fmt_bytes(r['host_pinned_bytes']):>13}"
                     f"{r['upload_gbps']:>13.2f}{r['stall_pct']:>9.1f}{r['max_abs_diff']:>12.3g}")
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run_demo(args)
    print(format_table(result))
    lossless = all(r["max_abs_diff"] == 0.0 for r in result["runs"] if r.get("transfer_dtype", "auto") != "fp8_e4m3")
    print("every lossless run is bit-identical to full_load" if lossless
          else "WARNING: a lossless run differs from full_load")
    for r in result["runs"]:
        if r.get("transfer_dtype") == "fp8_e4m3":
            print(f"fp8 transfer (lossy, opt-in): {r['bytes_streamed_per_step'] / 2**20:.1f} MiB streamed per step, "
                  f"max |difference| from full_load {r['max_abs_diff']:.3g}")
        if r.get("transfer_dtype") == "compressed":
            print(f"compressed (exact), {r['mode']}: {r['coded_ratio']:.3f} of the stored bytes in pinned RAM and on "
                  f"the link ({_fmt_bytes(r['host_pinned_bytes'])} pinned), decoded at {r['decode_gbps']:.2f} GB/s, "
                  f"{r.get('resident_coded_blocks', 0)} blocks held coded on the device, "
                  f"max |difference| from full_load {r['max_abs_diff']:.3g}")
        if r.get("disk"):
            print(f"disk tier, {r['mode']} prefetch {r['prefetch']}: host budget {_fmt_bytes(r['host_budget_bytes'])}, "
                  f"{r['disk_blocks']} blocks ({_fmt_bytes(r['disk_block_bytes'])}) on disk, read {r['disk_how']}; "
                  f"{_fmt_bytes(r['disk_bytes_per_step'])} read from disk per step at {r['disk_gbps']:.2f} GB/s"
                  f"{' (read buffered: the page cache may serve part of it)' if r['disk_how'].startswith('buffered') else ''}, "
                  f"process RSS {_fmt_bytes(r['host_rss_bytes'])}, max |difference| from full_load "
                  f"{r['max_abs_diff']:.3g}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0 if lossless else 1


if __name__ == "__main__":
    sys.exit(main())
