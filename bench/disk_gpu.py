"""The disk tier's section of ``bench gpu``: the Wan 2.1 14B-shaped model with a host
budget of 8 GB (``Config.disk_host_budget_gb``; the dry run: a fraction of its tiny
model), the rest in a spill file, sequential mode: its step time against the floor
max(compute-only step, disk read time per step, link upload time per step), each
measured in the same run:

* compute-only: the wan14b section's full_load step at the same length (when that
  section did not run, ``--skip wan14b``: a full_load of this section's model, first);
* disk read time per step: the bytes of the blocks on disk (sequential mode reads each
  once a pass) over the disk's own rate, the spill file itself read with the disk tier's
  reader (pinstream._C.DiskReader) right after the steps with O_DIRECT, by its thread
  pool and through io_uring where it can, the faster of the two; the bytes read per step
  and the reader's busy time per step are recorded beside it;
* link upload time per step: the bytes uploaded per step over the pinned peak of the
  link section (cudaMemcpyAsync from pinned memory).

Per-step figures are taken from the end of the first timed step to the end of the last
(the first step's own count misses the blocks read ahead for it during the warm-up).
Results go under ``disk`` in results.json and one line of summary.txt."""

from __future__ import annotations

import os
import time
import warnings

from .config import GIB, MIB
from .measure import RssPeak, free_memory, log, median, peak_bytes, reset_peak, time_steps
from .workloads import build_wan, model_inputs, tensor_bytes


class DiskTierSection:
    """Mixed into :class:`bench.runner.Bench`."""

    def disk_tier(self, deadline: float) -> None:
        import torch

        import pinstream
        from pinstream.paths import spill_dir

        from .disk import file_system

        cfg = self.cfg
        d = self.results.setdefault("disk", {})
        w = self.results["wan14b"]
        if not self.enough(deadline, "disk"):
            d["skipped"] = "time budget"
            return
        if w.get("seq_len") is None:
            self.choose_seq_len(deadline)
        seq = int(w["seq_len"])
        log(f"building the Wan model for the disk tier ({cfg.wan['num_layers']} blocks, dim {cfg.wan['dim']})")
        model = build_wan(cfg, "cpu")
        model_bytes = tensor_bytes(model)
        budget_gb = (cfg.disk_host_budget_gb if cfg.disk_host_budget_gb is not None
                     else round(model_bytes * cfg.disk_budget_fraction / GIB, 6))
        inputs = model_inputs(cfg, model, cfg.device, seq_len=seq)
        if w.get("compute_only_ms"):
            compute_ms = float(w["compute_only_ms"])
            compute_source = "full_load (every block resident) at this length, wan14b section of this run"
        else:  # wan14b did not run (--skip): full_load of this model, here
            compute_ms = self._compute_only(model, inputs, deadline)
            compute_source = "full_load (every block resident) at this length, measured in the disk section"
        spill = spill_dir()
        os.makedirs(spill, exist_ok=True)
        d.update(seq_len=seq, host_budget_gb=budget_gb, prefetch=cfg.disk_prefetch, model_bytes=int(model_bytes),
                 compute_only_ms=compute_ms, compute_only_source=compute_source, spill_dir=spill,
                 file_system=file_system(spill))
        free_memory(cfg)
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*live on disk.*", category=RuntimeWarning)
            h = pinstream.offload(model, mode="sequential", prefetch=cfg.disk_prefetch, device=cfg.device,
                                  engine=cfg.engine, link_gbps=cfg.host_link_gbps if cfg.engine == "host" else None,
                                  host_budget_gb=budget_gb)
        d["offload_s"] = round(time.monotonic() - t0, 2)  # packing, pinning and writing the spill file
        try:
            st = h.stats()
            d.update(disk_blocks=int(st["disk_blocks"]), blocks=len(model.blocks),
                     disk_block_bytes=int(st["disk_block_bytes"]), spill_bytes=int(st["spill_bytes"]),
                     disk_how=st["disk_how"], host_budget_bytes=int(st["host_budget_bytes"]))
            if st.get("spill_error"):
                raise RuntimeError(f"the spill file could not be written: {st['spill_error']}")
            if not st["disk_blocks"]:
                raise RuntimeError("no block went to disk under this host budget")
            log(f"  {d['disk_blocks']} of {d['blocks']} blocks ({d['disk_block_bytes'] / GIB:.2f} GiB) on disk in "
                f"{st['spill_path']} ({d['file_system'].get('type')}, read {d['disk_how']}), written in "
                f"{d['offload_s']:.1f} s")
            self.write()

            def step():
                with torch.inference_mode():
                    model(*inputs)

            marks = []
            peak_rss = RssPeak()
            # read buffered (O_DIRECT refused or measured slower): the page cache would serve later
            # steps from RAM; its pages of the spill file are dropped after each step (untimed)
            buffered = str(st["disk_how"]).startswith("buffered")
            spill_path = st["spill_path"]
            d["page_cache_dropped_between_steps"] = buffered

            def drop():
                if buffered:
                    from pinstream import _C

                    _C.drop_page_cache(spill_path)

            def on_step():
                a = h.stats()
                marks.append((int(a["disk_bytes"]), int(a["disk_bytes_total"]), float(a["disk_busy_ms"]),
                              int(a["bytes_uploaded"]), float(a["disk_wait_ms"])))
                peak_rss.sample()
                drop()

            def after_warmup():
                drop()
                h.reset_stats()

            reset_peak(cfg)
            times = time_steps(cfg, step, warmup=cfg.warmup, timed=cfg.timed_disk, deadline=deadline,
                               after_warmup=after_warmup, on_step=on_step)
            st = h.stats()
            if len(marks) >= 2:
                n = len(marks) - 1
                first, last = marks[0], marks[-1]
                disk_bytes, total, busy, uploaded, wait = (last[i] - first[i] for i in range(5))
                step_ms = median(times[1:])
            else:  # one timed step only (time budget): the whole counts
                n = 1
                disk_bytes, total, busy, uploaded, wait = (marks[0][i] for i in range(5))
                step_ms = median(times)
            d.update(read_ring_bytes=int(st["read_ring_bytes"]), step_ms=step_ms, steps_ms=times,
                     steps_counted=n, disk_bytes_per_step=int(disk_bytes // n),
                     disk_busy_ms_per_step=busy / n, disk_wait_ms_per_step=wait / n,
                     upload_bytes_per_step=int(uploaded // n),
                     pinstream_disk_gbps=total / (busy / 1000.0) / 1e9 if busy > 0 else None,
                     peak_device_bytes=peak_bytes(cfg, st.get("peak_device_bytes", 0)),
                     host_rss_bytes=int(peak_rss.value))
            self.write()
            # the disk's own rate: the spill file read whole (up to disk_raw_cap_gb) by the same reader
            d.update(self._spill_read_rate(st["spill_path"], deadline))
        finally:
            t0 = time.monotonic()
            h.detach()  # reads the blocks on disk back into the model's tensors
            d["detach_s"] = round(time.monotonic() - t0, 2)
            model = None
            free_memory(cfg)
        link = self.pinned_gbps()
        d["link_gbps"] = link
        d["link_gbps_source"] = ("pinned peak of the link section" if self.results["link"].get("pinned_peak_gbps")
                                 else "pinned copy measured now" if cfg.cuda else "the emulated link (dry run)")
        d["upload_ms_per_step"] = d["upload_bytes_per_step"] / (link * 1e9) * 1000.0
        rate = d.get("disk_gbps_for_floor")
        # sequential: every block on disk is read once a pass (the measured bytes per step, beside
        # it, can be a block off: a read ahead still in flight when a step's count was taken)
        d["disk_read_ms_per_step"] = d["disk_block_bytes"] / (rate * 1e9) * 1000.0 if rate else None
        parts = {"compute-only": compute_ms, "disk read": d["disk_read_ms_per_step"], "link upload":
                 d["upload_ms_per_step"]}
        known = {k: v for k, v in parts.items() if v is not None}
        bound = max(known, key=known.get)
        d.update(floor_ms=known[bound], bound_by=bound, step_over_floor=d["step_ms"] / known[bound])
        log(f"  disk tier: step {d['step_ms']:.1f} ms against max(compute-only {compute_ms:.1f}, disk read "
            f"{_ms(d['disk_read_ms_per_step'])}, link upload {d['upload_ms_per_step']:.1f}) = {known[bound]:.1f} ms "
            f"({bound}): x{d['step_over_floor']:.3f}; {d['disk_bytes_per_step'] / GIB:.2f} GiB read per step, "
            f"PinStream's reader {_gbps(d['pinstream_disk_gbps'])} GB/s busy, the disk "
            f"{_gbps(d.get('spill_o_direct_gbps'))} GB/s O_DIRECT, {_gbps(d.get('spill_io_uring_gbps'))} through io_uring")
        self.write()
        if self.skipped("shared_ram"):
            d["shared_ram"] = {"skipped": "--skip shared_ram"}
        elif not self.enough(deadline, "shared_ram"):
            d["shared_ram"] = {"skipped": "time budget"}
        else:
            self._shared_ram(d)

    def _shared_ram(self, d: dict) -> None:
        """Two models taking turns (Wan 2.2's experts, here of the ``shared_wan`` shape) for two
        prompts under one pinning cap: fixed budgets, automatic ones (RAM following the model
        that runs, its steps told and not), and moves forced at each model's second step
        (bench/disk.py's shared_run), at the short length, where the disk is slower than the
        compute."""
        import dataclasses

        import torch

        from pinstream.paths import spill_dir

        from .disk import shared_run

        cfg = dataclasses.replace(self.cfg, wan={**self.cfg.wan, **self.cfg.shared_wan})
        log(f"two models taking turns: {cfg.wan['num_layers']} blocks of dim {cfg.wan['dim']} each, pinning cap "
            f"{2 * cfg.shared_fraction:g} of one, {cfg.shared_steps} steps each per prompt at seq {cfg.short_seq}")
        high, low = build_wan(cfg, "cpu", seed=11), build_wan(cfg, "cpu", seed=12)
        try:
            inputs = model_inputs(cfg, high, cfg.device, seq_len=cfg.short_seq)
            r = shared_run(high, low, inputs, device=torch.device(cfg.device), engine=cfg.engine,
                           link_gbps=cfg.host_link_gbps, fraction=cfg.shared_fraction,
                           model_bytes=tensor_bytes(high), prefetch=cfg.disk_prefetch, steps=cfg.shared_steps,
                           spill_dir=spill_dir())
        finally:
            high = low = None
            free_memory(cfg)
        r.update(seq_len=cfg.short_seq, shape=dict(cfg.wan))
        d["shared_ram"] = r
        for kind, v in r["setups"].items():
            log(f"  {kind}: second prompt {v['prompt_ms']:.1f} ms, {v['disk_bytes_per_prompt'] / GIB:.2f} GiB from "
                f"disk, steady step {v['steady_step_ms']:.1f} ms, moves {v['move_ms']:.1f} ms, "
                f"bit-identical {v['bit_identical']}")
        self.write()

    def _compute_only(self, model, inputs, deadline: float) -> float:
        import torch

        import pinstream

        cfg = self.cfg
        free_memory(cfg)
        h = pinstream.offload(model, mode="full_load", device=cfg.device, engine=cfg.engine,
                              link_gbps=cfg.host_link_gbps if cfg.engine == "host" else None)
        try:
            def step():
                with torch.inference_mode():
                    model(*inputs)

            times = time_steps(cfg, step, warmup=cfg.warmup, timed=cfg.timed, deadline=deadline)
        finally:
            h.detach()
            free_memory(cfg)
        log(f"  compute-only (full_load): {median(times):.1f} ms")
        return median(times)

    def _spill_read_rate(self, path: str, deadline: float) -> dict:
        """The disk's own rate on the spill file: O_DIRECT with the reader's thread pool, and
        through io_uring where the build and the kernel allow it; the faster is the disk's."""
        from pinstream import _C

        from .disk import read_passes

        cfg = self.cfg
        out = {}
        rates = {}
        for way in ("o_direct", "io_uring"):
            try:
                reader = (_C.DiskReader(threads=4, direct=True, io_uring=True) if way == "io_uring"
                          else _C.DiskReader(threads=4, direct=True))
            except TypeError:  # a build whose DiskReader takes no io_uring
                out["spill_io_uring_how"] = "this build's DiskReader has no io_uring"
                continue
            fid = reader.open(path)
            how = reader.how(fid)
            out[f"spill_{way}_how"] = how
            if way == "io_uring" and not how.startswith("io_uring"):
                continue
            n = int(min(reader.size(fid), cfg.disk_raw_cap_gb * GIB)) // 4096 * 4096
            out["spill_read_bytes"] = n
            if n <= 0 or time.monotonic() > deadline:
                continue
            r = read_passes(reader, fid, n, min_passes=1, min_s=0.0, piece=min(n, 256 * MIB))
            if reader.direct(fid):
                rates[way] = r["gbps"]
            else:  # O_DIRECT refused: page cache rates, not the disk's
                out["spill_buffered_gbps"] = r["gbps"]
        out["spill_o_direct_gbps"] = rates.get("o_direct")
        out["spill_io_uring_gbps"] = rates.get("io_uring")
        out["disk_gbps_for_floor"] = max(rates.values()) if rates else None
        return out


def _ms(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _gbps(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def summary_line(d: dict) -> str | None:
    """summary.txt's line for the disk tier."""
    if not d:
        return None
    if "step_ms" not in d:
        why = d.get("skipped") or d.get("error") or "did not run"
        return f"disk tier (host budget {d.get('host_budget_gb', '?')} GB): not measured: {why}"
    line = (f"disk tier, host budget {d['host_budget_gb']:.3g} GB ({d['disk_blocks']} of {d['blocks']} blocks on disk, "
            f"{d['disk_bytes_per_step'] / GIB:.2f} GiB read per step, {d.get('file_system', {}).get('type')}, read "
            f"{d['disk_how']}), sequential prefetch {d['prefetch']} at seq {d['seq_len']}: step {d['step_ms']:.1f} ms "
            f"against max(compute-only {d['compute_only_ms']:.1f}, disk read {_ms(d.get('disk_read_ms_per_step'))}, "
            f"link upload {d['upload_ms_per_step']:.1f}) = {d['floor_ms']:.1f} ms ({d['bound_by']}-bound): "
            f"x{d['step_over_floor']:.3f}; disk O_DIRECT {_gbps(d.get('spill_o_direct_gbps'))} GB/s, through io_uring "
            f"{_gbps(d.get('spill_io_uring_gbps'))} GB/s, PinStream's reader {_gbps(d.get('pinstream_disk_gbps'))} GB/s "
            "of busy time")
    sh = d.get("shared_ram") or {}
    if "setups" in sh:
        line += (f"; two models taking turns ({sh['steps']} steps each, pinning cap {2 * sh['fraction']:g} of one): "
                 + ", ".join(f"{k} {v['prompt_ms']:.0f} ms a prompt ({v['disk_bytes_per_prompt'] / GIB:.2f} GiB from "
                             f"disk, moves {v['move_ms']:.0f} ms)" for k, v in sh["setups"].items())
                 + ("; bit-identical" if all(v["bit_identical"] for v in sh["setups"].values()) else "; NOT bit-identical"))
    elif sh.get("skipped"):
        line += f"; two models taking turns: not measured: {sh['skipped']}"
    return line
