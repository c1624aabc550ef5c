"""`python -m pinstream bench plot RESULTS.json [--out DIR]`: PNG charts of a GPU check.

step_vs_budget.png      step time of the Wan 14B-shaped model against VRAM, one
                        series per system. Systems with a budget knob (PinStream
                        budget mode, naive swap, ComfyUI lowvram) are drawn at
                        their budget; the others (PinStream sequential, accelerate,
                        diffusers) at the peak device memory they measured. The
                        dashed line is full_load (compute only).
bandwidth_vs_block.png  host-to-device GB/s against block size: pageable .to(),
                        pinned cudaMemcpyAsync (the limit) and PinStream block
                        uploads (wall clock; event-timed copies dotted).
time_breakdown.png      where each traced step's time went (profile.py): kernels
                        alone, kernels with an upload under them, uploads alone,
                        other device work, device idle, and host time outside
                        the device's span; one bar per traced run, by length.
                        Only when the run traced steps.

They are written next to RESULTS.json unless --out is given. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .report import run_label

GIB = 1024**3

STYLE = {
    "pinstream": ("tab:blue", "o"),
    "naive_swap": ("tab:red", "s"),
    "accelerate": ("tab:brown", "v"),
    "diffusers_block": ("tab:green", "^"),
    "diffusers_leaf": ("tab:olive", "<"),
    "comfyui_lowvram": ("tab:purple", "D"),
}


def _series(results: dict, seq: int | None = None):
    """(label, system, [(x_gib, step_s)], drawn_at) per system/mode at sequence length
    ``seq`` (default: the chosen one)."""
    w = results.get("wan14b", {})
    seq = seq or w.get("seq_len")
    groups: dict = {}
    for r in w.get("runs", []):
        if (r.get("seq_len") or w.get("seq_len")) != seq or r.get("mode") == "full_load":
            continue
        if r.get("budget_gb") is not None:
            x, at = float(r["budget_gb"]), "budget"
        else:
            x, at = r.get("peak_device_bytes", 0) / GIB, "peak"
        if r["system"] == "pinstream" and r["mode"] == "sequential":
            label = "pinstream sequential (prefetch 1-3, at peak)"
        elif r["system"] == "pinstream":
            label = f"pinstream {r['mode']} (prefetch {r.get('prefetch')})"
        else:
            label = f"{r['system']} {r['mode']}" + (" (at peak)" if at == "peak" else "")
        groups.setdefault((label, r["system"]), []).append((x, r["step_ms"] / 1000.0, r))
    return groups


def plot_step_vs_budget(results: dict, path: Path, plt) -> None:
    """One panel at the chosen length; a second one at the transfer-bound length when
    the run has it."""
    w = results.get("wan14b", {})
    panels = [(w.get("seq_len"), w.get("full_load_ms"), "")]
    if w.get("short_seq_len") and _series(results, w["short_seq_len"]):
        panels.append((w["short_seq_len"], w.get("short_compute_only_ms"), " (transfer-bound)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(9 * len(panels), 5.5), squeeze=False)
    for ax, (seq, floor_ms, note) in zip(axes[0], panels):
        _step_panel(ax, results, seq, floor_ms, note)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _step_panel(ax, results: dict, seq, floor_ms, note: str) -> None:
    groups = _series(results, seq)
    for (label, system), pts in groups.items():
        color, marker = STYLE.get(system, ("black", "x"))
        pts.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ls = "-" if len(pts) > 1 and "sequential" not in label else "none"
        ax.plot(xs, ys, marker=marker, color=color, linestyle=ls, label=label, markersize=7,
                fillstyle="none" if "(at peak)" in label else "full")
        if "sequential" in label:
            for x, y, r in pts:
                ax.annotate(f"p{r.get('prefetch')}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    w = results.get("wan14b", {})
    if floor_ms:
        ax.axhline(floor_ms / 1000.0, color="gray", linestyle="--",
                   label=f"full_load (compute only) {floor_ms / 1000:.3f} s")
    if w.get("model_bytes"):
        ax.axvline(w["model_bytes"] / GIB, color="lightgray", linestyle=":",
                   label=f"model size {w['model_bytes'] / GIB:.2f} GiB")
    ys = [p[1] for pts in groups.values() for p in pts]
    if ys and max(ys) / max(min(ys), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("VRAM: budget, or measured peak device memory (GiB)")
    ax.set_ylabel("step time (s, median)")
    ax.set_title(f"Wan 14B-shaped step time vs VRAM, seq len {seq}{note}\n{_title(results)}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_bandwidth(results: dict, path: Path, plt) -> None:
    link = results.get("link", {})
    fig, ax = plt.subplots(figsize=(8, 5))
    series = [
        ("pinned_gbps_by_mb", "pinned cudaMemcpyAsync (limit)", "black", "o", "-"),
        ("pinstream_gbps_by_mb", "PinStream block uploads (wall clock)", "tab:blue", "s", "-"),
        ("pinstream_event_gbps_by_mb", "PinStream copies (event-timed)", "tab:blue", ".", ":"),
        ("pageable_gbps_by_mb", "pageable .to()", "tab:red", "^", "-"),
    ]
    drawn = 0
    for key, label, color, marker, ls in series:
        d = link.get(key) or {}
        if not d:
            continue
        pts = sorted((float(k), float(v)) for k, v in d.items() if v is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, linestyle=ls, label=label)
        drawn += 1
    if link.get("pinned_peak_gbps"):
        ax.axhline(0.95 * link["pinned_peak_gbps"], color="gray", linestyle="--", linewidth=0.8,
                   label="95% of the pinned peak")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("block size (MB, 2**20 bytes)")
    ax.set_ylabel("host-to-device bandwidth (GB/s, 1e9 bytes/s)")
    ax.set_title(f"Host-to-device bandwidth vs block size\n{_title(results)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# (label, colour) of the time_breakdown segments, in drawing order
SEGMENTS = (("kernels alone", "tab:blue"), ("kernels with an upload under them", "tab:cyan"),
            ("uploads alone (the device waits on the link)", "tab:red"), ("other device work", "tab:gray"),
            ("device idle", "white"), ("host time outside the device's span", "lightgray"))


def breakdown(p: dict) -> list:
    """The SEGMENTS of one traced step, in ms (they add up to its wall time, or to the
    device span when the wall time is not known)."""
    span = float(p.get("gpu_span_ms") or 0.0)
    kernel, overlap = float(p.get("kernel_ms") or 0.0), float(p.get("overlap_ms") or 0.0)
    exposed, idle = float(p.get("exposed_h2d_ms") or 0.0), float(p.get("idle_ms") or 0.0)
    other = max(0.0, span - idle - kernel - exposed)
    host = max(0.0, float(p.get("wall_ms") or span) - span)
    return [kernel - overlap, overlap, exposed, other, idle, host]


def _traced(results: dict) -> list:
    runs = results.get("wan14b", {}).get("runs", [])
    return [r for r in runs if isinstance(r.get("profile"), dict)
            and not {"error", "skipped"} & set(r["profile"])]


def plot_time_breakdown(results: dict, path: Path, plt) -> bool:
    runs = sorted(_traced(results), key=lambda r: (-(r.get("seq_len") or 0), r["system"] != "pinstream", r["system"],
                                                   r["mode"], str(r.get("budget_gb"))))
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(11, 2.2 + 0.45 * len(runs)))
    labels = []
    for i, r in enumerate(runs):
        left = 0.0
        for (name, color), ms in zip(SEGMENTS, breakdown(r["profile"])):
            ax.barh(i, ms / 1000.0, left=left / 1000.0, color=color, edgecolor="black", linewidth=0.4,
                    label=name if i == 0 else None)
            left += ms
        labels.append(f"{run_label(r, short=True)} | seq {r.get('seq_len')}")
    ax.set_yticks(range(len(runs)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time of one traced step (s)")
    ax.set_title(f"Where each traced step's time goes (torch.profiler, CUDA activity)\n{_title(results)}",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    height = fig.get_figheight()
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.6 / height, 1, 1))  # room for the legend below the axes
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _title(results: dict) -> str:
    t = f"{results.get('device', '?')} | torch {results.get('torch', '?')} | CUDA {results.get('cuda', '?')}"
    t += f" | {str(results.get('date', ''))[:10]}"
    if results.get("dry_run"):
        t += " | DRY RUN"
    return t


def make_plots(results_path, out_dir=None) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results_path = Path(results_path)
    results = json.loads(results_path.read_text())
    out = Path(out_dir) if out_dir else results_path.parent
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "step_vs_budget.png", out / "bandwidth_vs_block.png"]
    plot_step_vs_budget(results, paths[0], plt)
    plot_bandwidth(results, paths[1], plt)
    if plot_time_breakdown(results, out / "time_breakdown.png", plt):
        paths.append(out / "time_breakdown.png")
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pinstream bench plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="RESULTS.json written by `python -m pinstream bench gpu`")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: next to RESULTS.json)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("bench plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    for p in make_plots(args.results, args.out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
