"""The baselines' sections of ``bench gpu``: each baseline (:mod:`bench.baselines`) run
on a fresh build of the same model with the same inputs and budgets: ComfyUI lowvram
and diffusers (the close comparisons) first, then ``.to()``, naive swap and accelerate."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from . import baselines
from .config import GIB
from .measure import RssPeak, free_memory, log, median, peak_bytes, reset_peak, short_error, sync, time_steps
from .workloads import build_wan


class BaselineSections:
    """Mixed into :class:`bench.runner.Bench`."""

    # ---- the slow systems, last: .to() timings, naive swap, accelerate --------------------
    def slow_baselines(self, deadline: float) -> None:
        """The systems PinStream beats many times over (targets 2x and 5x), on a fresh
        build of the same model: they run last, so a short time budget cuts them
        rather than the close comparisons."""
        cfg = self.cfg
        wanted = {"model_offload": not self.skipped("model_offload"),
                  "naive_swap": not self.skipped("baselines", "naive_swap"),
                  "accelerate": not self.skipped("baselines", "accelerate")}
        for system in ("naive_swap", "accelerate"):
            if not wanted[system]:
                self.status(system, {"skipped": "--skip"})
            elif self.inputs_s is None:
                self.status(system, {"skipped": "needs the wan14b section"})
                wanted[system] = False
        if not any(wanted.values()) or self.inputs_s is None:
            return
        if not self.enough(deadline, "build"):
            for system in ("naive_swap", "accelerate"):
                if wanted[system]:
                    self.status(system, {"skipped": "time budget"})
            return
        free_memory(cfg)
        model = build_wan(cfg, "cpu")
        self._slow_systems(model, deadline, wanted)
        model = None
        free_memory(cfg)

    def _slow_systems(self, model, deadline: float, wanted: dict) -> None:
        if wanted["model_offload"]:
            self.guard("model_offload_baseline", lambda: self.model_offload_baseline(model))
        if wanted["naive_swap"]:
            self.baseline("naive_swap", lambda d: self.naive_swap(model, d), deadline, 0.6)
        if wanted["accelerate"]:
            self.baseline("accelerate", lambda d: self.accelerate(model, d), deadline, 1.0)

    def model_offload_baseline(self, model) -> None:
        import torch

        cfg = self.cfg
        mo = self.results["model_offload"]
        dev = torch.device(cfg.device)
        free_memory(cfg)
        sync(cfg)
        t0 = time.perf_counter()
        model.to(dev)
        sync(cfg)
        mo["baseline_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.to("cpu")
        sync(cfg)
        mo["baseline_unload_s"] = time.perf_counter() - t0
        mo["baseline_note"] = "model.to(device) from pageable host memory, then model.to('cpu')"
        free_memory(cfg)
        log(f"  .to(device) {mo['baseline_load_s']:.3f} s, .to('cpu') {mo['baseline_unload_s']:.3f} s")

    def baseline(self, system: str, fn: Callable[[float], None], deadline: float, share: float) -> None:
        if not self.enough(deadline, "system"):
            self.status(system, {"skipped": "time budget"})
            return
        sub_deadline = time.monotonic() + (deadline - time.monotonic()) * share
        log(f"baseline {system}")
        try:
            n_before = len(self.runs)
            fn(sub_deadline)
            n = len(self.runs) - n_before
            if system not in self.results["baselines"]:
                self.status(system, {"ok": n} if n else {"skipped": "no run fitted in the time budget"})
        except ImportError as e:
            self.status(system, {"skipped": f"not importable: {e}"})
        except Exception as e:  # noqa: BLE001
            log(f"  {system} FAILED: {short_error(e)}")
            self.status(system, {"error": short_error(e)})
        # diffusers_leaf reuses the pinned blocks diffusers_block leaves in torch's cache
        free_memory(self.cfg, host_cache=system != "diffusers_block")

    def baseline_run(self, system: str, mode: str, budget_gb, step_fn, sub_deadline: float, extra: dict,
                     timed: int | None = None, seq_len: int | None = None, profile: bool = False) -> dict:
        rss = RssPeak()
        times = time_steps(self.cfg, step_fn, warmup=self.cfg.warmup, timed=timed or self.cfg.slow_timed,
                           deadline=sub_deadline, on_step=rss.sample)
        run = {"system": system, "mode": mode, "budget_gb": budget_gb, "prefetch": extra.pop("prefetch", None),
               "step_ms": median(times), "peak_device_bytes": peak_bytes(self.cfg), "host_rss_bytes": rss.value,
               "seq_len": seq_len or self.results["wan14b"]["seq_len"], "steps_ms": times, **extra}
        self.add_run(run)
        if profile:
            self.profile(run, step_fn, sub_deadline)
        return run

    def step_fn(self, model, inputs=None):
        import torch

        inputs = self.inputs_s if inputs is None else inputs

        def f():
            with torch.inference_mode():
                model(*inputs)
        return f

    def short_run(self, system: str, mode: str, budget_gb, model, sub_deadline: float, extra: dict,
                  profile: bool = False) -> None:
        """The same baseline configuration again at the transfer-bound length, for the
        systems judged against PinStream there (ComfyUI lowvram, diffusers)."""
        if self.inputs_short is None or (budget_gb is not None and budget_gb * GIB >= self.model_bytes):
            return
        if not self.enough(sub_deadline, "run"):
            self.results["wan14b"].setdefault("skipped_runs", []).append(
                f"{system} {mode} budget {budget_gb} at seq {self.results['wan14b']['short_seq_len']}: time budget")
            return
        self.baseline_run(system, mode, budget_gb, self.step_fn(model, self.inputs_short), sub_deadline,
                          dict(extra), timed=self.cfg.timed, seq_len=int(self.results["wan14b"]["short_seq_len"]),
                          profile=profile)

    def naive_swap(self, model, deadline: float) -> None:
        """baselines.naive_swap at each budget: the budget holds the non-block part,
        the resident blocks and one swapped block."""
        cfg = self.cfg
        for b in self.budgets():
            if not self.enough(deadline, "run"):
                break
            swap = baselines.swap_plan(int(b * GIB), self.nonblock_bytes, self.block_bytes, len(model.blocks))
            free_memory(cfg)
            reset_peak(cfg)
            try:
                with baselines.naive_swap(model, cfg.device, swap) as info:
                    self.baseline_run("naive_swap", "block_swap", b, self.step_fn(model), deadline, info)
            finally:
                free_memory(cfg)

    def accelerate(self, model, deadline: float) -> None:
        """baselines.accelerate_cpu_offload (no budget knob); consumes the model."""
        free_memory(self.cfg)
        reset_peak(self.cfg)
        with baselines.accelerate_cpu_offload(model, self.cfg.device) as info:
            self.baseline_run("accelerate", "cpu_offload", None, self.step_fn(model), deadline, info)

    # ---- systems on freshly built models -------------------------------------------------------
    def fresh_systems(self, deadline: float) -> None:
        # ComfyUI first: its budgets are judged; the diffusers runs share pinned blocks
        plan = [("comfyui_lowvram", ("comfyui_lowvram",), self.comfyui_lowvram, 0.4),
                ("diffusers_block", ("diffusers", "diffusers_block"), self.diffusers_block, 0.5),
                ("diffusers_leaf", ("diffusers", "diffusers_leaf"), self.diffusers_leaf, 1.0)]
        for system, names, fn, share in plan:
            if self.skipped("baselines", *names):
                self.status(system, {"skipped": "--skip"})
                continue
            if self.inputs_s is None:
                self.status(system, {"skipped": "no sequence length (the wan14b section did not run)"})
                continue
            self.baseline(system, fn, deadline, share)
        free_memory(self.cfg)

    def _diffusers(self, offload_type: str, deadline: float) -> None:
        import diffusers.hooks  # noqa: F401 - ImportError here means "skipped"

        cfg = self.cfg
        system = "diffusers_block" if offload_type == "block_level" else "diffusers_leaf"
        if not self.enough(deadline, "build"):
            self.status(system, {"skipped": "time budget"})
            return
        free_memory(cfg, host_cache=False)
        model = build_wan(cfg, "cpu", seed=2)
        reset_peak(cfg)
        t0 = time.monotonic()
        # streams need a CUDA onload device; the dry run runs without
        with baselines.diffusers_group_offload(model, cfg.device, offload_type, use_stream=cfg.cuda) as info:
            info["setup_s"] = round(time.monotonic() - t0, 2)
            self.baseline_run(system, offload_type, None, self.step_fn(model), deadline, dict(info), profile=True)
            self.short_run(system, offload_type, None, model, deadline, info, profile=True)
        # the pinned copies stay in torch's pinned cache until both diffusers runs are
        # done (leaf_level reuses them: same sizes); see baseline()
        model = None
        gc.collect()

    def diffusers_block(self, deadline: float) -> None:
        self._diffusers("block_level", deadline)

    def diffusers_leaf(self, deadline: float) -> None:
        self._diffusers("leaf_level", deadline)

    def comfyui_lowvram(self, deadline: float) -> None:
        """baselines.ComfyLowvram at each budget, on a fresh model whose layers are
        switched to ComfyUI's op classes."""
        from pinstream.comfyui_locate import find_comfyui

        cfg = self.cfg
        root, how = find_comfyui(self.comfyui)
        if root is None:
            self.status("comfyui_lowvram", {"skipped": "no ComfyUI source tree: set COMFYUI_PATH (or --comfyui)"})
            return
        if not self.enough(deadline, "build"):
            self.status("comfyui_lowvram", {"skipped": "time budget"})
            return
        ns = baselines.import_comfyui(root, cpu=not cfg.cuda)
        free_memory(cfg)
        model = build_wan(cfg, "cpu", seed=3)
        comfy = baselines.ComfyLowvram(ns, model, cfg.device)
        try:
            for b in self.budgets():
                if self.model_bytes and b * GIB >= self.model_bytes:
                    # the model fits: a plain full load for every system, and not judged;
                    # its time goes to diffusers instead
                    self.results["wan14b"].setdefault("skipped_runs", []).append(
                        f"comfyui_lowvram budget {b:g}: holds the whole model (not judged)")
                    continue
                if not self.enough(deadline, "run"):
                    break
                free_memory(cfg)
                reset_peak(cfg)
                judged = b == self.judged_budget()
                with comfy.budget(int(b * GIB)) as info:
                    self.baseline_run("comfyui_lowvram", "lowvram", b, self.step_fn(model), deadline,
                                      {**info, "comfyui_found": how}, profile=judged)
                    self.short_run("comfyui_lowvram", "lowvram", b, model, deadline, {**info, "comfyui_found": how},
                                   profile=True)  # transfer-bound: every budget traced, as PinStream's
        finally:
            comfy = model = None
            free_memory(cfg)
