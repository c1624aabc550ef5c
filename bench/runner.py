"""The run of ``bench gpu``: :class:`Bench` holds the results (rewritten as JSON after
every measurement), the time budget, the header, each section's deadline and errors,
and the traced steps; its sections come from :mod:`.link`, :mod:`.pinstream_runs` and
:mod:`.baseline_runs`."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .baseline_runs import BaselineSections
from .config import GIB, Config
from .disk_gpu import DiskTierSection
from .link import LinkSection
from .measure import Clock, free_memory, log, short_error, sync
from .pinstream_runs import PinStreamSections
from .profile import describe as describe_profile
from .profile import profile_step
from .report import evaluate_targets, summary_text
from .workloads import tokens_of_grid


class Bench(LinkSection, PinStreamSections, BaselineSections, DiskTierSection):
    """One run of ``bench gpu``: its configuration, results, time budget and output folder."""

    def __init__(self, cfg: Config, out_dir: Path, skip: set, budget_s: float, seq_len: int | None,
                 comfyui: str | None):
        self.cfg = cfg
        self.out = out_dir
        self.skip = skip
        self.clock = Clock(budget_s)
        self.forced_seq = seq_len
        self.comfyui = comfyui
        self.results: dict = {}
        self.model_bytes = 0
        self.block_bytes = 0
        self.nonblock_bytes = 0
        self.num_blocks = int(cfg.wan["num_layers"])
        self.inputs_s = None  # inputs at the chosen seq len
        self.inputs_real = None
        self.inputs_short = None  # inputs at the transfer-bound length (cfg.short_seq)

    # ---- bookkeeping ------------------------------------------------------------
    def skipped(self, *names) -> bool:
        return any(n in self.skip for n in names)

    def write(self) -> None:
        self.results["elapsed_s"] = round(self.clock.elapsed(), 2)
        path = self.out / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=_json_default))
        os.replace(tmp, path)

    @property
    def runs(self) -> list:
        return self.results["wan14b"]["runs"]

    def add_run(self, run: dict) -> None:
        self.runs.append(run)
        log(f"  {run['system']:<16} {run['mode']:<22} budget {run['budget_gb']!s:<8} "
             f"prefetch {run['prefetch']!s:<5} step {run['step_ms']:9.2f} ms  "
             f"peak {run['peak_device_bytes'] / GIB:7.2f} GiB  rss {run['host_rss_bytes'] / GIB:6.2f} GiB")
        self.write()

    def status(self, system: str, value) -> None:
        self.results["baselines"][system] = value
        self.write()

    def budgets(self) -> list:
        if self.cfg.budgets_gb is not None:
            return list(self.cfg.budgets_gb)
        return [round(self.model_bytes * f / GIB, 6) for f in self.cfg.budget_fractions]

    def judged_budget(self) -> float:
        """The budget whose runs are profiled: the smallest (the most streaming)."""
        return min(self.budgets())

    def enough(self, deadline: float, key: str) -> bool:
        return deadline - time.monotonic() >= self.cfg.reserve_s.get(key, 0)

    def profile(self, run: dict, fn: Callable[[], object], deadline: float) -> None:
        """One traced step (after one traced warm-up) of the configuration ``run`` was
        just timed on: where its device time goes (profile.py), kept in the run and
        as a gzipped Chrome trace in $OUT/profiles/."""
        if not self.cfg.profile or self.skipped("profile"):
            return
        if not self.enough(deadline, "run") or time.monotonic() + 2.5 * run["step_ms"] / 1000.0 > deadline:
            run["profile"] = {"skipped": "time budget"}
            self.write()
            return
        budget = "" if run.get("budget_gb") is None else f"-{run['budget_gb']:g}GB"
        prefetch = "" if run.get("prefetch") is None else f"-p{run['prefetch']}"
        tag = f"{run['system']}-{run['mode']}{budget}{prefetch}-seq{run.get('seq_len')}"
        tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in tag)
        t0 = time.monotonic()
        try:
            p = profile_step(fn, cuda=self.cfg.cuda, sync=lambda: sync(self.cfg),
                             trace_path=self.out / "profiles" / f"{tag}.json.gz")
        except Exception as e:  # noqa: BLE001 - a profile failing must not end the run
            p = {"error": short_error(e)}
        p["profile_s"] = round(time.monotonic() - t0, 2)
        run["profile"] = p
        log(f"    profile: {describe_profile(p)}")
        self.write()

    # ---- header -----------------------------------------------------------------
    def header(self) -> None:
        import torch

        cfg = self.cfg
        if cfg.cuda:
            dev_name = torch.cuda.get_device_name()
            cuda_v = torch.version.cuda or "unknown"
        else:
            dev_name = f"cpu (dry run, host engine): {platform.processor() or platform.machine()}"
            cuda_v = torch.version.cuda or "none"
        self.results.update({
            "device": dev_name,
            "driver": _driver_version() if cfg.cuda else "none (dry run)",
            "torch": torch.__version__,
            "cuda": str(cuda_v),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": cfg.dry,
            "engine": cfg.engine,
            "python": platform.python_version(),
            "host": {"cpus": os.cpu_count(), "ram_bytes": _host_ram()},
            "time_budget_s": self.clock.budget_s,
            "config": {"wan": cfg.wan, "dtype": cfg.dtype_name, "link_mb": cfg.link_mb,
                       "seq_candidates": cfg.seq_candidates, "real_grid": list(cfg.real_grid),
                       "warmup": cfg.warmup, "timed": cfg.timed, "slow_timed": cfg.slow_timed,
                       "budget_prefetch": cfg.budget_prefetch, "units": "GB = GiB (2**30 bytes)"},
            "link": {"pinned_peak_gbps": None, "pageable_gbps": None, "pinstream_gbps_by_mb": {}},
            "wan14b": {"seq_len": None, "full_load_ms": None, "compute_only_ms": None, "transfer_only_ms": None,
                       "real_seq": {"seq_len": tokens_of_grid(cfg.real_grid), "full_load_ms": None,
                                    "sequential_ms": None},
                       "runs": []},
            "model_offload": {"load_s": None, "unload_s": None, "baseline_load_s": None, "baseline_unload_s": None},
            "disk": {},
            "baselines": {},
            "sections_s": {},
        })
        self.write()

    # ---- sections ------------------------------------------------------------------
    def section(self, name: str, fn: Callable[[], None], share: float) -> None:
        """Run one section with a deadline; record its time and any error."""
        t0 = time.monotonic()
        deadline = self.clock.deadline(share)
        if self.clock.left() <= 0:
            self._mark(name, {"skipped": "time budget spent"})
            return
        log(f"section {name} (deadline in {deadline - time.monotonic():.0f} s, {self.clock.left():.0f} s left)")
        try:
            fn(deadline)
        except Exception as e:  # noqa: BLE001 - a section failing must not end the run
            log(f"section {name} FAILED: {short_error(e)}")
            self._mark(name, {"error": short_error(e)})
            free_memory(self.cfg)
        self.results["sections_s"][name] = round(time.monotonic() - t0, 2)
        self.write()

    def _mark(self, name: str, value: dict) -> None:
        target = {"link": "link", "wan14b": "wan14b", "model_offload": "model_offload", "disk": "disk"}.get(name)
        if target is not None:
            self.results[target].update(value)
        else:
            self.results.setdefault("section_status", {})[name] = value

    def guard(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log(f"  {name} FAILED: {short_error(e)}")
            self.results.setdefault("errors", {})[name] = short_error(e)
            free_memory(self.cfg)
        self.write()

    # ---- targets -------------------------------------------------------------------------------
    def finish(self) -> str:
        self.results["targets"] = evaluate_targets(self.results)
        text = summary_text(self.results)
        (self.out / "summary.txt").write_text(text)
        self.write()
        return text


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


def _host_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        return 0


def _json_default(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)

