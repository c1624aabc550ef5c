"""The report of ``bench gpu``: the targets, each judged from the results JSON with its
measured value and met / not met, and ``summary.txt``."""

from __future__ import annotations

import json

from .config import GIB
from .disk_gpu import summary_line as disk_summary_line
from .profile import describe as describe_profile


def _pinstream_ref(results: dict, run: dict, seq_len: int | None = None) -> dict | None:
    """The PinStream run a baseline run is compared with, at equal VRAM: the budget
    run at the same budget; for a system without a budget knob, the fastest
    streaming PinStream run whose peak device memory is within 10% of the
    baseline's, else the streaming run with the least peak memory."""
    w = results["wan14b"]
    seq_len = seq_len or w.get("seq_len")
    ps = [r for r in w["runs"] if r["system"] == "pinstream" and r.get("seq_len") == seq_len
          and r["mode"] != "full_load"]
    if not ps:
        return None
    if run.get("budget_gb") is not None:
        same = [r for r in ps if r["mode"] == "budget" and r["budget_gb"] == run["budget_gb"]]
        return min(same, key=lambda r: r["step_ms"]) if same else None
    peak = run.get("peak_device_bytes") or 0
    within = [r for r in ps if peak and r["peak_device_bytes"] <= 1.10 * peak]
    if within:
        return min(within, key=lambda r: r["step_ms"])
    return min(ps, key=lambda r: (r["peak_device_bytes"], r["step_ms"]))


def run_label(r: dict, short: bool = False) -> str:
    """A run's system, mode, budget and prefetch ("p2" when ``short``, for plots)."""
    parts = [r["system"], r["mode"]]
    if r.get("budget_gb") is not None:
        parts.append(f"{r['budget_gb']:g} GB")
    if r.get("prefetch") is not None:
        parts.append(f"p{r['prefetch']}" if short else f"prefetch {r['prefetch']}")
    return " ".join(parts)


def evaluate_targets(results: dict) -> list:
    """The issue's targets, each with its measured value and met / not met
    (None: not measured)."""
    out = []

    def add(name, target, measured, met, detail=""):
        out.append({"target": name, "goal": target, "measured": measured,
                    "met": (None if met is None else bool(met)), "detail": detail})

    link = results.get("link", {})
    pinned = link.get("pinned_peak_gbps")
    pins, ps = link.get("pinned_gbps_by_mb") or {}, link.get("pinstream_gbps_by_mb") or {}
    ratios = {k: ps[k] / pins[k] for k in ps if k in pins and pins[k] and float(k) >= 64}
    if ratios:
        k = min(ratios, key=ratios.get)
        add("PinStream block upload vs pinned cudaMemcpyAsync, blocks >= 64 MB", ">= 0.95", round(ratios[k], 3),
            ratios[k] >= 0.95, f"worst at {k} MB: {ps[k]:.2f} vs {pins[k]:.2f} GB/s")
    else:
        add("PinStream block upload vs pinned cudaMemcpyAsync, blocks >= 64 MB", ">= 0.95", None, None,
            "no link sizes >= 64 MB measured")

    w = results.get("wan14b", {})
    runs = w.get("runs", [])
    seq = [r for r in runs if r["system"] == "pinstream" and r["mode"] == "sequential"
           and r.get("overlap_efficiency") is not None]
    if seq:
        best = min(seq, key=lambda r: r["overlap_efficiency"])
        add("sequential step / max(compute-only, transfer-only)", "<= 1.05", round(best["overlap_efficiency"], 3),
            best["overlap_efficiency"] <= 1.05,
            f"best at prefetch {best['prefetch']}: {best['step_ms']:.1f} ms vs max({w.get('compute_only_ms', 0):.1f}, "
            f"{w.get('transfer_only_ms', 0):.1f}) ms; all: "
            + ", ".join(f"p{r['prefetch']} {r['overlap_efficiency']:.3f}" for r in seq))
    else:
        add("sequential step / max(compute-only, transfer-only)", "<= 1.05", None, None, "not measured")

    rs = w.get("real_seq", {})
    if rs.get("full_load_ms") and rs.get("sequential_ms"):
        ov = rs["sequential_ms"] / rs["full_load_ms"] - 1.0
        add(f"real Wan seq len ({rs.get('seq_len')}): sequential over full_load", "<= 2%", f"{100 * ov:.2f}%",
            ov <= 0.02, f"{rs['sequential_ms']:.1f} vs {rs['full_load_ms']:.1f} ms")
    else:
        add("real Wan seq len: sequential over full_load", "<= 2%", None, None, "not measured")

    model_bytes = w.get("model_bytes") or 0

    def floor_ms(ref: dict, seq_len) -> tuple | None:
        """The least step time any system can reach in ref's configuration: the
        compute-only step at that length, or the bytes ref moves per step at the
        pinned peak, whichever is longer."""
        comp = {w.get("seq_len"): w.get("compute_only_ms"),
                w.get("short_seq_len"): w.get("short_compute_only_ms")}.get(seq_len)
        if not comp:
            return None
        up = ref.get("bytes_uploaded_per_step")
        up_ms = up / (pinned * 1e9) * 1000.0 if up and pinned else 0.0
        return max(comp, up_ms), comp, up_ms

    def vs(system_names, goal, label, seq_len=None):
        seq_len = seq_len or w.get("seq_len")
        cands = [r for r in runs if r["system"] in system_names and r.get("seq_len", seq_len) == seq_len]
        if not cands:
            status = {s: results.get("baselines", {}).get(s) for s in system_names}
            add(label, f">= {goal}x", None, None, f"not measured: {status}")
            return
        # baselines with a budget: only budgets the model does not fit in are judged
        judged, info = [], []
        for r in cands:
            if r.get("budget_gb") is not None and model_bytes and r["budget_gb"] * GIB >= model_bytes:
                info.append(r)
                continue
            judged.append(r)
        if not judged:
            add(label, f">= {goal}x", None, None, "every budget holds the whole model")
            return
        groups: dict = {}
        for r in judged:
            groups.setdefault(r.get("budget_gb"), []).append(r)
        worst, worst_ceiling, details = None, None, []
        for _b, rr in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            best = min(rr, key=lambda r: r["step_ms"])  # diffusers: the better of block/leaf
            ref = _pinstream_ref(results, best, seq_len)
            if ref is None:
                details.append(f"{run_label(best)}: no PinStream run to compare")
                continue
            sp = best["step_ms"] / ref["step_ms"]
            detail = (f"{run_label(best)} {best['step_ms']:.0f} ms ({best['peak_device_bytes'] / GIB:.1f} GiB) vs "
                      f"{run_label(ref)} {ref['step_ms']:.0f} ms ({ref['peak_device_bytes'] / GIB:.1f} GiB): {sp:.2f}x")
            if best.get("loaded_bytes") and model_bytes and ref.get("bytes_uploaded_per_step") is not None:
                # ComfyUI casts what it did not load, every step: the bytes each system moves
                theirs = max(0, model_bytes - best["loaded_bytes"] - best.get("kept_on_device_bytes", 0))
                detail += (f" [per step: PinStream uploads {ref['bytes_uploaded_per_step'] / GIB:.2f} GiB, "
                           f"{best['system']} casts {theirs / GIB:.2f} GiB]")
            fl = floor_ms(ref, seq_len)
            ceiling = None
            if fl:
                ceiling = best["step_ms"] / fl[0]
                detail += (f" (best possible {ceiling:.2f}x: no step beats max(compute-only {fl[1]:.0f} ms, "
                           f"these uploads at the pinned peak {fl[2]:.0f} ms))")
            details.append(detail)
            if worst is None or sp < worst:
                worst, worst_ceiling = sp, ceiling
        for r in info:
            ref = _pinstream_ref(results, r, seq_len)
            if ref:
                details.append(f"(not judged, model fits) {run_label(r)}: {r['step_ms'] / ref['step_ms']:.2f}x")
        add(label, f">= {goal}x", None if worst is None else round(worst, 3),
            None if worst is None else worst >= goal, "; ".join(details))
        if worst_ceiling is not None:
            out[-1]["ceiling"] = round(worst_ceiling, 3)

    vs({"comfyui_lowvram"}, 1.5, "PinStream speed-up vs ComfyUI core lowvram at equal VRAM")
    vs({"diffusers_block", "diffusers_leaf"}, 1.3, "PinStream speed-up vs diffusers group offloading (better of block/leaf)")
    vs({"naive_swap"}, 2.0, "PinStream speed-up vs naive per-block .to() swap")
    vs({"accelerate"}, 5.0, "PinStream speed-up vs accelerate cpu_offload")
    short = w.get("short_seq_len")
    if short:
        # the same two comparisons where uploads, not compute, set the pace
        vs({"comfyui_lowvram"}, 1.5, f"at transfer-bound seq len {short}: PinStream speed-up vs ComfyUI core lowvram "
           "at equal VRAM", short)
        vs({"diffusers_block", "diffusers_leaf"}, 1.3, f"at transfer-bound seq len {short}: PinStream speed-up vs "
           "diffusers group offloading (better of block/leaf)", short)

    mo = results.get("model_offload", {})
    if mo.get("load_s") and pinned and mo.get("model_bytes"):
        frac = mo["model_bytes"] / mo["load_s"] / 1e9 / pinned
        add("model offload reload vs pinned limit", ">= 0.90", round(frac, 3), frac >= 0.90,
            f"{mo['load_s']:.3f} s for {mo['model_bytes'] / GIB:.2f} GiB ({mo['model_bytes'] / mo['load_s'] / 1e9:.1f} "
            f"GB/s, pinned peak {pinned:.1f} GB/s); .to(device) {_fmt(mo.get('baseline_load_s'), 3)} s")
    else:
        add("model offload reload vs pinned limit", ">= 0.90", None, None, "not measured")
    if mo.get("unload_s") is not None:
        add("model offload unload", "<= 50 ms", f"{mo['unload_s'] * 1000:.1f} ms", mo["unload_s"] <= 0.050,
            f".to('cpu') {_fmt(mo.get('baseline_unload_s'), 3)} s")
    else:
        add("model offload unload", "<= 50 ms", None, None, "not measured")
    return out


def _fmt(v, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def summary_text(results: dict) -> str:
    lines = [f"PinStream GPU check: {results.get('device')} | driver {results.get('driver')} | "
             f"torch {results.get('torch')} | CUDA {results.get('cuda')} | {results.get('date')}"
             + (" | DRY RUN (host engine, tiny model: numbers mean nothing)" if results.get("dry_run") else "")]
    link = results.get("link", {})
    if link.get("pinned_peak_gbps"):
        lines.append(f"link: pinned peak {link['pinned_peak_gbps']:.2f} GB/s, pageable {_fmt(link.get('pageable_gbps'), 2)} "
                     "GB/s; PinStream by block MB: "
                     + ", ".join(f"{k}: {v:.2f}" for k, v in link.get("pinstream_gbps_by_mb", {}).items()))
    w = results.get("wan14b", {})
    if w.get("seq_len"):
        lines.append(f"wan14b at seq_len {w['seq_len']}: one block computes in {w.get('block_compute_ms', 0):.2f} ms, "
                     f"uploads in {w.get('block_upload_ms', 0):.2f} ms; compute-only {_fmt(w.get('compute_only_ms'))} "
                     f"ms, transfer-only {_fmt(w.get('transfer_only_ms'))} ms (estimate "
                     f"{_fmt(w.get('transfer_only_est_ms'))} ms); model {w.get('model_bytes', 0) / GIB:.2f} GiB")
    if w.get("short_seq_len"):
        lines.append(f"transfer-bound length {w['short_seq_len']}: compute-only {_fmt(w.get('short_compute_only_ms'))} "
                     f"ms against transfer-only {_fmt(w.get('transfer_only_ms'))} ms")
    lines.append("")
    lines.append(f"{'system':<16} {'mode':<14} {'budget GB':>9} {'pf':>3} {'seq':>6} {'step ms':>10} "
                 f"{'peak GiB':>9} {'RSS GiB':>8} {'overlap':>8}")
    for r in w.get("runs", []):
        ov = r.get("overlap_efficiency")
        budget = "" if r["budget_gb"] is None else f"{r['budget_gb']:g}"
        pf = "" if r["prefetch"] is None else str(r["prefetch"])
        ovs = "" if ov is None else f"{ov:.3f}"
        lines.append(f"{r['system']:<16} {r['mode']:<14} {budget:>9} {pf:>3} {r.get('seq_len', ''):>6} "
                     f"{r['step_ms']:>10.2f} {r['peak_device_bytes'] / GIB:>9.2f} {r['host_rss_bytes'] / GIB:>8.2f} "
                     f"{ovs:>8}")
    mo = results.get("model_offload", {})
    if mo.get("load_s") is not None:
        lines.append("")
        lines.append(f"model offload: load {mo['load_s']:.3f} s, unload {mo['unload_s'] * 1000:.1f} ms; "
                     f".to(device) {_fmt(mo.get('baseline_load_s'), 3)} s, "
                     f".to('cpu') {_fmt(mo.get('baseline_unload_s'), 3)} s")
    cz = results.get("fp8", {}).get("compressed")
    if cz:
        lines.append(f"compressed (exact) transfer, sequential prefetch 2: ratio {cz.get('coded_ratio', 1.0):.3f}, "
                     f"bytes/step x{cz.get('bytes_ratio', 1.0):.2f}, step x{cz.get('step_ratio', 1.0):.2f}"
                     + (f" (x{cz['short_step_ratio']:.2f} at the short length)" if "short_step_ratio" in cz else "")
                     + f", pinned host x{cz.get('pinned_ratio', 1.0):.2f}, decode {cz.get('decode_gbps', 0.0):.1f} GB/s, "
                     f"output equal to as stored: {cz.get('equal_to_stored')}")
    bz = results.get("fp8", {}).get("budget", {})
    if "auto" in bz and "compressed" in bz:
        a, c = bz["auto"], bz["compressed"]
        lines.append(f"compressed (exact) transfer, budget {bz['budget_gb']:.2f} GiB ({100 * bz['fraction']:.0f}% of the "
                     f"slice, prefetch 1): "
                     f"{c['resident_coded_blocks']} blocks resident coded, {c['resident_blocks']} as stored, "
                     f"{c['streamed_blocks']} streamed (as stored: {a['resident_blocks']} resident); bytes/step "
                     f"x{c['bytes_ratio']:.2f}, step x{c['step_ratio']:.2f}, output equal to as stored: "
                     f"{c['equal_to_stored']}")
    f8 = results.get("fp8", {})
    if "auto" in f8 and "fp8_e4m3" in f8:
        a, q = f8["auto"], f8["fp8_e4m3"]
        lines.append(f"fp8 transfer ({f8['num_blocks']} blocks, sequential prefetch 2): bytes/step "
                     f"{a['bytes_per_step'] / GIB:.2f} -> {q['bytes_per_step'] / GIB:.2f} GiB "
                     f"(x{f8['bytes_ratio']:.2f}), step {a['step_ms']:.1f} -> {q['step_ms']:.1f} ms "
                     f"(x{f8['step_ratio']:.2f}), weight error max {q['fp8_max_abs_error']:.3g} "
                     f"mean {q['fp8_mean_abs_error']:.3g}; quantized in {q.get('offload_s', 0):.1f} s")
        if "short_step_ratio" in f8:
            lines.append(f"fp8 transfer at seq {f8['short_seq_len']} (transfer-bound): step "
                         f"{a['short']['step_ms']:.1f} -> {q['short']['step_ms']:.1f} ms (x{f8['short_step_ratio']:.2f})")
    disk = disk_summary_line(results.get("disk") or {})
    if disk:
        lines.append(disk)
    profiled = [r for r in w.get("runs", []) if r.get("profile") and "skipped" not in r["profile"]]
    if profiled:
        lines.append("")
        lines.append("where the device time goes (one traced step each; profile.py):")
        for r in profiled:
            lines.append(f"  {run_label(r)} at seq {r.get('seq_len')}: {describe_profile(r['profile'])}")
    st = {k: v for k, v in results.get("baselines", {}).items() if "ok" not in v}
    if st:
        lines.append("baselines not run: " + "; ".join(f"{k}: {v}" for k, v in st.items()))
    for key in ("errors", "section_status"):
        if results.get(key):
            lines.append(f"{key}: " + json.dumps(results[key])[:2000])
    lines.append("")
    lines.append("targets (ratios within this run):")
    for t in results.get("targets", []):
        met = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        lines.append(f"  [{met:^7}] {t['target']}: goal {t['goal']}, measured {t['measured']}"
                     + (f" -- {t['detail']}" if t.get("detail") else ""))
    return "\n".join(lines) + "\n"

