"""Replanning a handle: a smaller plan after a device OOM at load, and fitting the plan to
the device memory a host application allows for the coming run."""

from __future__ import annotations

import warnings

from .discovery import format_bytes
from .modes import ResolvedMode


class Replanning:
    """Mixin of :class:`~pinstream.handle.OffloadHandle` (uses its runtime, plan, mode)."""

    def _load_with_retry(self) -> None:
        """Load the plan; on device OOM retry smaller plans (fewer resident blocks,
        then streaming everything, then prefetch 1). Nothing stays half-loaded."""
        rt = self._rt
        try:
            rt.load()
            self._after_load()
            return
        except MemoryError as first:
            error = first
        if not self.discovery.has_blocks:
            raise MemoryError(f"{error}; the model has no blocks to stream, so no smaller plan exists") from error
        tried = [self.plan["describe"]]
        attempts = []
        budget = int(self.plan["device_bytes"])
        while True:
            budget = int(budget * 0.75)
            attempts.append(("budget", budget, self.prefetch))
            if budget < self.plan["fixed_bytes"] + (self.prefetch + 1) * max(self.discovery.block_bytes or [0]):
                break
        attempts.append(("stream_all", -1, self.prefetch))
        if self.prefetch > 1:
            attempts.append(("stream_all", -1, 1))
        for policy, budget, prefetch in attempts:
            try:
                plan = rt.plan(policy, budget, prefetch)
            except ValueError:
                continue  # below this plan's minimum: try the next one
            tried.append(plan["describe"])
            try:
                rt.load()
            except MemoryError as e:
                error = e
                self.oom_retries += 1
                continue
            self.oom_retries += 1
            self._use_streaming_plan(plan, prefetch, self.mode,
                                     f"device out of memory while loading, fell back to {plan['describe']}")
            self._after_load()
            warnings.warn(f"PinStream: device out of memory while loading; running with a smaller plan: "
                          f"{plan['describe']}", RuntimeWarning, stacklevel=3)
            return
        raise MemoryError("PinStream: the model could not be loaded: device out of memory for every plan tried ("
                          + "; ".join(tried) + f"). Last error: {error}. Nothing is left on the device; free VRAM "
                          "(other models, --reserve-vram) or lower prefetch.") from error

    def fit_device_bytes(self, allowed: int | None) -> bool:
        """Re-plan to hold at most ``allowed`` device bytes (what a host application's
        memory manager lets this model have for the coming run, e.g. ComfyUI's, which
        leaves room for a larger latent's activations), but never more than the plan
        offload() made; ``None`` asks for that plan again. Shrinks whenever ``allowed``
        is below the current plan, to 2% of the model below it; grows back only by at
        least 5% of the model: an allowance that varies a little from run to run does
        not cost a reload each time. Full-load and budget plans of models with blocks
        only (model_offload and sequential have nothing to give or take). Unloads when
        the plan changes; the next use loads the new one. Returns whether it changed."""
        self._check_open()
        first_mode, first_plan, first_prefetch = self._first
        if first_mode.name not in ("full_load", "budget") or not self.discovery.has_blocks:
            return False
        full = int(first_plan["device_bytes"])
        current = int(self.plan["device_bytes"])
        want = full if allowed is None else max(0, min(int(allowed), full))
        last = self._fit_target if self._fit_target is not None else full
        if want < current:
            pass  # over the allowance: shrink
        elif current >= full or (want < last + 0.05 * self.model_bytes and allowed is not None):
            return False  # already the node's plan, or not enough more room to be worth a reload
        # 2% of the model below the allowance: the next run's allowance, a few MB either
        # way, then fits without another reload
        target = want if want >= full else max(0, want - int(0.02 * self.model_bytes))
        self._fit_target = want
        self.unload()
        rt = self._rt
        if target >= full:  # the node's plan again
            budget = first_mode.budget_bytes if first_plan["policy"] == "budget" else -1
            self.plan = rt.plan(first_plan["policy"], budget, first_prefetch)
            self.mode, self.prefetch = first_mode, first_prefetch
            return True
        try:
            plan = rt.plan("budget", target, self.prefetch)
        except ValueError:  # below the streaming minimum: stream every block
            plan = rt.plan("stream_all", -1, self.prefetch)
        self._use_streaming_plan(plan, self.prefetch, first_mode,
                                 f"fitted to {format_bytes(target)} of device memory allowed for this run: "
                                 f"{plan['describe']}")
        return True

    def _use_streaming_plan(self, plan: dict, prefetch: int, base, why: str) -> None:
        """Run under ``plan`` (budget or stream_all) from now on, made instead of the plan
        ``base`` chose: the mode follows the plan and says why; streaming needs the
        per-block hooks, which full_load and model_offload did not install."""
        name = "budget" if plan["policy"] == "budget" else "sequential"
        self.plan, self.prefetch = plan, prefetch
        self.mode = ResolvedMode(name, base.requested, f"{base.reason}; {why}",
                                 plan["device_bytes"] if name == "budget" else None, base.transfer_dtype)
        if not self._hooks.per_block:
            self._hooks.remove()
            self._install_hooks(per_block=True)

    @property
    def streams_blocks(self) -> bool:
        """Whether the plan sends any block (or the rest of a split one) through the
        ring of reused device slots."""
        return bool(self.plan.get("streamed_blocks") or self.plan.get("split_blocks") or self.plan.get("coded_blocks"))
