"""Measuring for ``bench gpu``: the log, the time budget and each section's deadline,
timed steps (device synchronized around each), peak device memory, host RSS, and giving
memory back between systems."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
import traceback
from collections.abc import Callable

from .config import Config


def log(msg: str) -> None:
    print(f"[bench gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return 0


def mb_key(mb: float) -> str:
    return f"{mb:g}"


def short_error(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    last = "".join(tb[-3:]).strip().replace("\n", " | ")
    return f"{type(e).__name__}: {e} [{last[-600:]}]"


def malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def free_memory(cfg: Config, host_cache: bool = True) -> None:
    """Give back what the previous system left: Python garbage, torch's device
    cache, torch's pinned-host cache (unless ``host_cache`` is False) and free
    heap pages."""
    import torch

    gc.collect()
    if cfg.cuda and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        if host_cache:
            with contextlib.suppress(Exception):
                torch._C._host_emptyCache()
    malloc_trim()


def sync(cfg: Config) -> None:
    if cfg.cuda:
        import torch

        torch.cuda.synchronize()


def reset_peak(cfg: Config) -> None:
    if cfg.cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_bytes(cfg: Config, fallback: int = 0) -> int:
    if cfg.cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(fallback)


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Clock:
    """The run's time budget and each section's deadline."""

    def __init__(self, budget_s: float):
        self.t0 = time.monotonic()
        self.budget_s = float(budget_s)
        self.end = self.t0 + self.budget_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def deadline(self, share: float) -> float:
        """A section's deadline: this share of what is left, from now."""
        return time.monotonic() + max(0.0, self.left()) * share


def time_steps(cfg: Config, fn: Callable[[], object], *, warmup: int, timed: int, deadline: float,
               after_warmup: Callable[[], None] | None = None, on_step: Callable[[], None] | None = None):
    """Milliseconds of ``timed`` calls of ``fn`` after ``warmup`` untimed ones,
    device synchronized around each. Stops early (after at least one timed step)
    when the next step would end past ``deadline``."""
    for _ in range(warmup):
        fn()
        sync(cfg)
    if after_warmup is not None:
        after_warmup()
    out: list[float] = []
    for i in range(timed):
        if i > 0 and time.monotonic() + out[-1] / 1000.0 > deadline:
            break
        sync(cfg)
        t0 = time.perf_counter()
        fn()
        sync(cfg)
        out.append((time.perf_counter() - t0) * 1000.0)
        if on_step is not None:
            on_step()
    return out


class RssPeak:
    def __init__(self):
        self.value = rss()

    def sample(self) -> None:
        self.value = max(self.value, rss())
