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

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import baselines
from .profile import describe as describe_profile
from .profile import profile_step

GIB = 1024**3
MIB = 1024**2

SYSTEMS = ("pinstream", "naive_swap", "accelerate", "diffusers_block", "diffusers_leaf", "comfyui_lowvram")
# --skip accepts these names (sections and systems)
SKIPPABLE = ("link", "wan14b", "real_seq", "model_offload", "baselines", "naive_swap", "accelerate",
             "diffusers", "diffusers_block", "diffusers_leaf", "comfyui_lowvram", "fp8", "short_seq", "profile")

# Wan 480p x 81 frames: latent (21, 60, 104) -> (1, 2, 2) patches -> 21 * 30 * 52 tokens
REAL_GRID = (21, 60, 104)
REAL_SEQ = 21 * 30 * 52  # 32,760


# --------------------------------------------------------------------------- config


@dataclass
class Config:
    dry: bool
    device: str
    engine: str
    dtype_name: str
    wan: dict
    link_mb: list
    link_total_mb: float
    seq_candidates: list
    real_grid: tuple
    budgets_gb: list  # None: computed from the model size (dry run)
    budget_fractions: tuple = (0.45, 0.7, 1.4)
    prefetches: tuple = (1, 2, 3)
    budget_prefetch: int = 2
    real_prefetch: int = 2
    # a second, transfer-bound length (one block computes far faster than it uploads),
    # where PinStream, ComfyUI lowvram, diffusers and fp8 transfer are also compared
    short_seq: int = 2048
    warmup: int = 1
    timed: int = 3
    slow_timed: int = 2  # baselines and the real sequence length
    # one traced step (profile.py) of each judged comparison's runs, at both lengths
    profile: bool = True
    text_len: int = 512
    host_link_gbps: float = 25.0
    # seconds a step must leave before the section's deadline to start another
    reserve_s: dict = field(default_factory=dict)

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def make_config(dry: bool) -> Config:
    if dry:
        return Config(
            dry=True, device="cpu", engine="host", dtype_name="float32",
            wan={"dim": 128, "ffn_dim": 512, "num_heads": 4, "num_layers": 8, "text_dim": 32, "freq_dim": 32},
            link_mb=[0.25, 1.0, 4.0], link_total_mb=16.0,
            seq_candidates=[16, 32, 64, 128], real_grid=(4, 16, 16), budgets_gb=None,
            text_len=16, timed=2, slow_timed=2, short_seq=8,
            reserve_s={"build": 1, "run": 0.5, "system": 1},
        )
    return Config(
        dry=False, device="cuda", engine="cuda", dtype_name="bfloat16",
        wan={"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "text_dim": 4096, "freq_dim": 256},
        link_mb=[4.0, 16.0, 64.0, 256.0, 1024.0], link_total_mb=1024.0,
        seq_candidates=[2048, 4096, 6144, 8192, 10240, 12288, 16384, 20480, 24576, REAL_SEQ],
        real_grid=REAL_GRID, budgets_gb=[10.0, 20.0, 40.0],
        reserve_s={"build": 20, "run": 3, "system": 25},
    )


# --------------------------------------------------------------------------- small helpers


def _log(msg: str) -> None:
    print(f"[bench gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return 0


def _mb_key(mb: float) -> str:
    return f"{mb:g}"


def _short_error(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    last = "".join(tb[-3:]).strip().replace("\n", " | ")
    return f"{type(e).__name__}: {e} [{last[-600:]}]"


def _malloc_trim() -> None:
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
    _malloc_trim()


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
        self.value = _rss()

    def sample(self) -> None:
        self.value = max(self.value, _rss())


# --------------------------------------------------------------------------- models and inputs


def _fill_random_(module, dtype, dim: int, seed: int = 0) -> None:
    """Random values for every parameter, fast enough for 28 GB: slices of a random
    pool at random offsets (weights ~ N(0, 1/dim), norm weights ~ 1, others small).
    Never zeros: zeros can time differently from real data."""
    import random

    import torch

    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    params = [(n, p) for n, p in module.named_parameters()] + [(n, b) for n, b in module.named_buffers()]
    largest = max((p.numel() for _, p in params), default=1)
    chunk = int(min(largest, 16 * 1024 * 1024))
    dev = params[0][1].device if params else torch.device("cpu")
    wpool = (torch.randn(2 * chunk, generator=g) * (1.0 / math.sqrt(dim))).to(dtype).to(dev)
    spool = (torch.randn(2 * chunk, generator=g) * 0.02).to(dtype).to(dev)
    with torch.no_grad():
        for name, p in params:
            flat = p.data.view(-1)
            n = flat.numel()
            norm_like = "norm" in name and p.dim() == 1
            pool = spool if (p.dim() <= 1) else wpool
            for i in range(0, n, chunk):
                m = min(chunk, n - i)
                off = rng.randrange(0, chunk + 1)
                flat[i:i + m].copy_(pool[off:off + m])
            if norm_like:
                flat.add_(1.0)


def build_wan(cfg: Config, device: str = "cpu", seed: int = 0):
    """The Wan-shaped transformer, built on the meta device and materialised with
    random values straight on ``device`` (no second copy, no slow init)."""
    from ..demo_model import WanTransformer

    model = WanTransformer(**cfg.wan, dtype=cfg.dtype, device="meta")
    model.to_empty(device=device)
    _fill_random_(model, cfg.dtype, cfg.wan["dim"], seed)
    model.requires_grad_(False)
    model.eval()
    if device == "cpu":
        _malloc_trim()
    return model


def build_block(cfg: Config, device: str, seed: int = 1):
    from ..demo_model import WanAttentionBlock

    w = cfg.wan
    blk = WanAttentionBlock(w["dim"], w["ffn_dim"], w["num_heads"], "t2v", True, True, 1e-6,
                            dtype=cfg.dtype, device="meta")
    blk.to_empty(device=device)
    _fill_random_(blk, cfg.dtype, w["dim"], seed)
    blk.requires_grad_(False)
    return blk.eval()


def tensor_bytes(module) -> int:
    seen = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def model_inputs(cfg: Config, model, device: str, seq_len: int | None = None, grid=None, seed: int = 1):
    """Forward arguments for ``model(x, t, context)`` giving ``seq_len`` tokens
    (latent (1, C, 1, 2, 2*seq_len)), or the tokens of a latent ``grid``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if grid is None:
        grid = (1, 2, 2 * int(seq_len))
    x = torch.randn(1, model.in_dim, *grid, generator=g).to(device=device, dtype=cfg.dtype)
    t = torch.tensor([500.0], device=device)
    ctx = torch.randn(1, cfg.text_len, model.text_dim, generator=g).to(device=device, dtype=cfg.dtype)
    return x, t, ctx


def tokens_of_grid(grid) -> int:
    f, h, w = grid
    return int(f * (h // 2) * (w // 2))


def block_inputs(cfg: Config, seq_len: int, device: str, seed: int = 2):
    import torch

    from ..demo_model import wan_rope_freqs

    g = torch.Generator().manual_seed(seed)
    d = cfg.wan["dim"]
    x = torch.randn(1, seq_len, d, generator=g).to(device=device, dtype=cfg.dtype)
    e = (torch.randn(1, 6, d, generator=g) * 0.1).to(device=device, dtype=cfg.dtype)
    ctx = torch.randn(1, cfg.text_len, d, generator=g).to(device=device, dtype=cfg.dtype)
    freqs = wan_rope_freqs((1, 1, seq_len), d // cfg.wan["num_heads"], device=device)
    return x, e, ctx, freqs


# --------------------------------------------------------------------------- the benchmark


class Bench:
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
        _log(f"  {run['system']:<16} {run['mode']:<22} budget {run['budget_gb']!s:<8} "
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
            p = {"error": _short_error(e)}
        p["profile_s"] = round(time.monotonic() - t0, 2)
        run["profile"] = p
        _log(f"    profile: {describe_profile(p)}")
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
            "baselines": {},
            "sections_s": {},
        })
        self.write()

    # ---- fp8 transfer ----------------------------------------------------------------
    def fp8_transfer(self, deadline: float) -> None:
        """Sequential streaming of a Wan-14B-shaped slice (8 blocks, same block size)
        with blocks sent as stored and as fp8: bytes per step, step time, quantization
        time and the per-block weight error, in the same run."""
        import dataclasses

        import pinstream

        cfg = self.cfg
        res = self.results.setdefault("fp8", {})
        small = dataclasses.replace(cfg, wan=dict(cfg.wan, num_layers=min(8, int(cfg.wan["num_layers"]))))
        seq = int(self.results["wan14b"].get("seq_len") or 256)
        model = build_wan(small, "cpu")
        lengths = [("", seq)]
        short = self.results["wan14b"].get("short_seq_len")
        if short and not self.skipped("short_seq"):
            lengths.append(("short", int(short)))
        inputs = {key: model_inputs(small, model, cfg.device, seq_len=n) for key, n in lengths}
        res.update(num_blocks=len(model.blocks), seq_len=seq, block_bytes=int(tensor_bytes(model.blocks[0])))
        if len(lengths) > 1:
            res["short_seq_len"] = int(short)

        def step_at(key):
            def step():
                import torch

                with torch.inference_mode():
                    model(*inputs[key])
            return step

        try:
            for transfer in ("auto", "fp8_e4m3"):
                if time.monotonic() > deadline:
                    res.setdefault("skipped", []).append(f"{transfer}: time budget")
                    continue
                t0 = time.monotonic()
                h = pinstream.offload(model, mode="sequential", prefetch=2, device=cfg.device, engine=cfg.engine,
                                      transfer_dtype=transfer,
                                      link_gbps=cfg.host_link_gbps if cfg.engine == "host" else None)
                offload_s = time.monotonic() - t0
                try:
                    for key, n in lengths:
                        if key and time.monotonic() > deadline:
                            res.setdefault("skipped", []).append(f"{transfer} at seq {n}: time budget")
                            continue
                        times = time_steps(cfg, step_at(key), warmup=1, timed=3, deadline=deadline,
                                           after_warmup=h.reset_stats)
                        st = h.stats()
                        one = {
                            "step_ms": median(times), "seq_len": n,
                            "bytes_per_step": int(st["bytes_uploaded"]) // max(1, len(times)),
                            "upload_gbps": float(st.get("upload_gbps", 0.0)),
                            "stall_ms_per_step": float(st.get("stall_ms", 0.0)) / max(1, len(times)),
                        }
                        if not key:
                            res[transfer] = dict(one, offload_s=round(offload_s, 2),
                                                 fp8_max_abs_error=float(st.get("fp8_max_abs_error", 0.0)),
                                                 fp8_mean_abs_error=float(st.get("fp8_mean_abs_error", 0.0)))
                        elif transfer in res:
                            res[transfer][key] = one
                finally:
                    h.detach()
                    free_memory(cfg)
            if "auto" in res and "fp8_e4m3" in res:
                res["bytes_ratio"] = res["fp8_e4m3"]["bytes_per_step"] / max(1, res["auto"]["bytes_per_step"])
                res["step_ratio"] = res["fp8_e4m3"]["step_ms"] / max(1e-9, res["auto"]["step_ms"])
                if "short" in res["auto"] and "short" in res["fp8_e4m3"]:
                    res["short_step_ratio"] = (res["fp8_e4m3"]["short"]["step_ms"]
                                               / max(1e-9, res["auto"]["short"]["step_ms"]))
        finally:
            model = None
            free_memory(cfg)

    # ---- sections ------------------------------------------------------------------
    def section(self, name: str, fn: Callable[[], None], share: float) -> None:
        """Run one section with a deadline; record its time and any error."""
        t0 = time.monotonic()
        deadline = self.clock.deadline(share)
        if self.clock.left() <= 0:
            self._mark(name, {"skipped": "time budget spent"})
            return
        _log(f"section {name} (deadline in {deadline - time.monotonic():.0f} s, {self.clock.left():.0f} s left)")
        try:
            fn(deadline)
        except Exception as e:  # noqa: BLE001 - a section failing must not end the run
            _log(f"section {name} FAILED: {_short_error(e)}")
            self._mark(name, {"error": _short_error(e)})
            free_memory(self.cfg)
        self.results["sections_s"][name] = round(time.monotonic() - t0, 2)
        self.write()

    def _mark(self, name: str, value: dict) -> None:
        target = {"link": "link", "wan14b": "wan14b", "model_offload": "model_offload"}.get(name)
        if target is not None:
            self.results[target].update(value)
        else:
            self.results.setdefault("section_status", {})[name] = value

    # ---- link --------------------------------------------------------------------------
    def link(self, deadline: float) -> None:
        import torch


        cfg = self.cfg
        res = self.results["link"]
        pageable, pinned, ps_wall, ps_event = {}, {}, {}, {}
        res.update({"pageable_gbps_by_mb": pageable, "pinned_gbps_by_mb": pinned,
                    "pinstream_gbps_by_mb": ps_wall, "pinstream_event_gbps_by_mb": ps_event})
        dev = torch.device(cfg.device)
        per_size = max(0.5, (deadline - time.monotonic()) / max(1, len(cfg.link_mb)))
        for mb in cfg.link_mb:
            size_deadline = time.monotonic() + per_size
            n = int(mb * MIB)
            src = torch.empty(n, dtype=torch.uint8)
            src.copy_(torch.randint(0, 256, (min(n, 16 * MIB),), dtype=torch.uint8).repeat(-(-n // (16 * MIB)))[:n])
            dst = torch.empty(n, dtype=torch.uint8, device=dev)
            reps = int(max(3, min(20, (256 * MIB) // max(n, 1))))
            # pageable .to(): synchronous through a staging buffer
            ts = []
            for i in range(reps + 1):
                sync(cfg)
                t0 = time.perf_counter()
                dst.copy_(src)
                sync(cfg)
                if i:
                    ts.append(time.perf_counter() - t0)
            pageable[_mb_key(mb)] = n / median(ts) / 1e9
            # pinned cudaMemcpyAsync: back-to-back copies between two events
            if cfg.cuda:
                psrc = torch.empty(n, dtype=torch.uint8, pin_memory=True)
                psrc.copy_(src)
                rates = []
                for _ in range(3):
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    dst.copy_(psrc, non_blocking=True)
                    e0.record()
                    for _ in range(reps):
                        dst.copy_(psrc, non_blocking=True)
                    e1.record()
                    e1.synchronize()
                    rates.append(reps * n / (e0.elapsed_time(e1) / 1000.0) / 1e9)
                pinned[_mb_key(mb)] = median(rates)
                del psrc
            else:  # dry run: plain host memcpy stands in for the pinned copy
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        dst.copy_(src)
                    ts.append((time.perf_counter() - t0) / reps)
                pinned[_mb_key(mb)] = n / median(ts) / 1e9
            del dst
            # PinStream: the blocks of a streamed pass, no compute
            nblocks = max(4, math.ceil(cfg.link_total_mb / mb))
            blocks = []
            for _ in range(nblocks):
                t = torch.empty(n, dtype=torch.uint8)
                t.copy_(src)
                blocks.append([t])
            del src
            try:
                self._link_pinstream(mb, n, blocks, size_deadline)
            except Exception as e:  # noqa: BLE001 - the copy baselines above still count
                res.setdefault("errors", {})[_mb_key(mb)] = _short_error(e)
                _log(f"  link {mb:g} MB: PinStream FAILED: {_short_error(e)}")
            blocks = None
            free_memory(cfg)
            _log(f"  link {mb:>7g} MB: pageable {pageable[_mb_key(mb)]:6.2f}  pinned {pinned[_mb_key(mb)]:6.2f}  "
                 f"pinstream {ps_wall.get(_mb_key(mb), float('nan')):6.2f} "
                 f"(event-timed {ps_event.get(_mb_key(mb), float('nan')):6.2f}) GB/s")
            self.write()
        res["pinned_peak_gbps"] = max(pinned.values())
        res["pageable_gbps"] = max(pageable.values())
        res["note"] = ("GB/s = 1e9 bytes/s. pinned: back-to-back copy_(non_blocking=True) from pinned memory "
                       "between CUDA events; pinstream: a pass of acquire/release over blocks of that size, "
                       "no compute, bytes moved / wall clock (event-timed copy rate alongside)"
                       + ("; DRY RUN: host memcpy and the host engine's emulated link" if cfg.dry else ""))

    def _link_pinstream(self, mb: float, n: int, blocks: list, size_deadline: float) -> None:
        """A pass of acquire/release through _C.Runtime over ``blocks`` (one tensor of
        ``n`` bytes each), no compute: bytes the engine moved / wall clock."""
        import torch

        from ..native import load_native

        cfg = self.cfg
        res = self.results["link"]
        _C = load_native()
        rt = _C.Runtime(device=str(torch.device(cfg.device)), engine=cfg.engine, prefetch=2,
                        link_gbps=cfg.host_link_gbps if cfg.engine == "host" else 0.0, timing=True)
        try:
            ids = rt.register_blocks(blocks)
            blocks.clear()  # the runtime holds the only copy now (pinned)
            rt.plan("stream_all", -1, 2)
            rt.load()
            wall = 0.0
            for p in range(4):  # the first pass learns the order, the others are timed
                if p >= 2 and time.monotonic() > size_deadline:
                    break
                if p == 1:
                    rt.reset_stats()
                sync(cfg)
                t0 = time.perf_counter()
                rt.begin_pass()
                for i in ids:
                    rt.acquire(i)
                    rt.release(i)
                rt.end_pass()
                sync(cfg)
                if p:
                    wall += time.perf_counter() - t0
            st = rt.stats()
            # bytes the engine moved (a pass's end prefetches the next pass's first blocks)
            res["pinstream_gbps_by_mb"][_mb_key(mb)] = int(st["bytes_uploaded"]) / wall / 1e9
            res["pinstream_event_gbps_by_mb"][_mb_key(mb)] = float(st.get("upload_gbps", 0.0))
        finally:
            rt.close(restore_pageable=False)

    def pinned_gbps(self) -> float:
        v = self.results["link"].get("pinned_peak_gbps")
        if v:
            return float(v)
        if self.cfg.dry:
            return self.cfg.host_link_gbps
        import torch

        n = 256 * MIB
        src = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        src.fill_(3)
        dst = torch.empty(n, dtype=torch.uint8, device=self.cfg.device)
        dst.copy_(src, non_blocking=True)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(8):
            dst.copy_(src, non_blocking=True)
        e1.record()
        e1.synchronize()
        return 8 * n / (e0.elapsed_time(e1) / 1000.0) / 1e9

    # ---- sequence length ----------------------------------------------------------------
    def choose_seq_len(self, deadline: float) -> None:
        import torch

        cfg = self.cfg
        w = self.results["wan14b"]
        blk = build_block(cfg, cfg.device)
        self.block_bytes = tensor_bytes(blk)
        gbps = self.pinned_gbps()
        upload_ms = self.block_bytes / (gbps * 1e9) * 1000.0
        by_seq = {}

        def block_ms(s: int) -> float:
            inputs = block_inputs(cfg, s, cfg.device)

            def f():
                with torch.inference_mode():
                    blk(*inputs[:3], freqs=inputs[3])
            return median(time_steps(cfg, f, warmup=1, timed=3, deadline=deadline))

        for s in cfg.seq_candidates:
            if time.monotonic() > deadline and by_seq:
                break
            by_seq[s] = block_ms(s)
            if by_seq[s] > 3 * upload_ms and len(by_seq) >= 2:
                break
        if self.forced_seq:
            seq = int(self.forced_seq)
            if seq not in by_seq:
                by_seq[seq] = block_ms(seq)
        else:
            seq = min(by_seq, key=lambda s: abs(math.log(max(by_seq[s], 1e-6) / max(upload_ms, 1e-6))))
        blk = None
        free_memory(cfg)
        w.update({
            "seq_len": int(seq),
            "block_bytes": int(self.block_bytes),
            "block_upload_ms": upload_ms,
            "block_compute_ms": by_seq[seq],
            "block_compute_ms_by_seq": {str(k): v for k, v in by_seq.items()},
            "seq_choice": ("given by --seq-len" if self.forced_seq else
                           "the candidate whose one-block forward time is closest to one block's upload time "
                           "(block bytes / pinned peak)"),
        })
        _log(f"  seq_len {seq}: one block computes in {by_seq[seq]:.2f} ms, uploads in {upload_ms:.2f} ms "
             f"({self.block_bytes / MIB:.1f} MiB at {gbps:.1f} GB/s)")
        self.write()

    # ---- PinStream on the 14B model ---------------------------------------------------------
    def wan14b(self, deadline: float) -> None:
        """Builds the model, runs every PinStream configuration and the model-offload
        timings on it, then frees it (the slow_baselines section builds it again)."""


        cfg = self.cfg
        w = self.results["wan14b"]
        if w.get("seq_len") is None:
            self.choose_seq_len(deadline)
        seq = int(w["seq_len"])
        _log(f"building the Wan model ({cfg.wan['num_layers']} blocks, dim {cfg.wan['dim']}, {cfg.dtype_name}) "
             "in host memory")
        t0 = time.monotonic()
        model = build_wan(cfg, "cpu")
        self.model_bytes = tensor_bytes(model)
        self.block_bytes = tensor_bytes(model.blocks[0])
        self.nonblock_bytes = self.model_bytes - sum(tensor_bytes(b) for b in model.blocks)
        w.update(model_bytes=int(self.model_bytes), nonblock_bytes=int(self.nonblock_bytes),
                 num_blocks=len(model.blocks), build_s=round(time.monotonic() - t0, 2))
        _log(f"  built {self.model_bytes / GIB:.2f} GiB in {time.monotonic() - t0:.1f} s")
        self.inputs_s = model_inputs(cfg, model, cfg.device, seq_len=seq)
        self.inputs_real = model_inputs(cfg, model, cfg.device, grid=cfg.real_grid)
        if cfg.short_seq < seq and not self.skipped("short_seq"):
            w["short_seq_len"] = int(cfg.short_seq)
            self.inputs_short = model_inputs(cfg, model, cfg.device, seq_len=cfg.short_seq)
        try:
            self.pinstream_runs(model, seq, deadline)
        except Exception as e:  # noqa: BLE001 - the baselines still run on the same model
            _log(f"  PinStream runs FAILED: {_short_error(e)}")
            self.results.setdefault("errors", {})["pinstream"] = _short_error(e)
            free_memory(cfg)
        self.write()
        model = None
        free_memory(cfg)

    def pinstream_runs(self, model, seq: int, deadline: float) -> None:
        """Every PinStream configuration on one registration of ``model`` (one pinned
        copy), re-planned per configuration; hands the model back as ordinary
        pageable tensors at the end, also on failure."""

        import pinstream

        cfg = self.cfg
        w = self.results["wan14b"]
        _log("  offloading to PinStream")
        t0 = time.monotonic()
        h = pinstream.offload(model, mode="sequential", prefetch=1, device=cfg.device, engine=cfg.engine,
                              link_gbps=cfg.host_link_gbps if cfg.engine == "host" else None)
        w["pin_s"] = round(time.monotonic() - t0, 2)
        try:
            self._pinstream_configs(model, h, seq, deadline)
        finally:
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                h.runtime.unload()
            h.detach()
            free_memory(cfg)
            w["detach_s"] = round(time.monotonic() - t0, 2)

    def _pinstream_configs(self, model, h, seq: int, deadline: float) -> None:
        import torch

        cfg = self.cfg
        w = self.results["wan14b"]
        rt = h.runtime
        block_ids = list(getattr(h, "_block_ids", range(len(model.blocks))))
        real_seq = tokens_of_grid(cfg.real_grid)
        n_sections = 8.0

        def step(inputs):
            def f():
                with torch.inference_mode():
                    model(*inputs)
            return f

        def ps_run(mode: str, policy: str, budget_gb: float | None, prefetch: int, inputs, seq_len: int,
                   timed: int, sub_deadline: float, profile: bool = False) -> dict | None:
            if not self.enough(sub_deadline, "run"):
                w.setdefault("skipped_runs", []).append(f"{mode} budget {budget_gb} prefetch {prefetch}: time budget")
                return None
            free_memory(cfg)
            budget = -1 if budget_gb is None else int(budget_gb * GIB)
            try:
                rt.plan(policy, budget, prefetch)
                reset_peak(cfg)
                rt.load()
                rss = RssPeak()
                times = time_steps(cfg, step(inputs), warmup=cfg.warmup, timed=timed, deadline=sub_deadline,
                                   after_warmup=rt.reset_stats, on_step=rss.sample)
                st = h.stats()
            except Exception as e:  # noqa: BLE001 - one configuration failing must not end the others
                key = f"pinstream {mode} budget {budget_gb} prefetch {prefetch} seq {seq_len}"
                _log(f"  {key} FAILED: {_short_error(e)}")
                self.results.setdefault("errors", {})[key] = _short_error(e)
                with contextlib.suppress(Exception):
                    rt.unload()
                free_memory(cfg)
                return None
            run = {
                "system": "pinstream", "mode": mode, "budget_gb": budget_gb,
                "prefetch": prefetch if policy != "all_resident" else None,
                "step_ms": median(times), "peak_device_bytes": peak_bytes(cfg, st.get("peak_device_bytes", 0)),
                "host_rss_bytes": rss.value, "seq_len": seq_len, "steps_ms": times,
                "runtime_peak_device_bytes": int(st.get("peak_device_bytes", 0)),
                "stall_ms_per_step": float(st.get("stall_ms", 0.0)) / max(1, len(times)),
                "upload_gbps": float(st.get("upload_gbps", 0.0)),
                "bytes_uploaded_per_step": int(st.get("bytes_uploaded", 0)) // max(1, len(times)),
                "plan": (st.get("plan") or {}).get("describe"),
            }
            self.add_run(run)
            if profile:
                self.profile(run, step(inputs), sub_deadline)
            return run

        def sub(k: float = 1.0) -> float:
            return time.monotonic() + max(0.0, deadline - time.monotonic()) * min(1.0, k / max(1.0, n_sections))

        # compute-only: everything resident
        r = ps_run("full_load", "all_resident", None, 1, self.inputs_s, seq, cfg.timed, sub(1))
        n_sections -= 1
        if r:
            w["full_load_ms"] = w["compute_only_ms"] = r["step_ms"]
        if not self.skipped("real_seq"):
            r = ps_run("full_load", "all_resident", None, 1, self.inputs_real, real_seq, cfg.slow_timed, sub(1))
            if r:
                w["real_seq"]["full_load_ms"] = r["step_ms"]
        n_sections -= 1
        # model offload: the whole model as one unit, loaded and unloaded
        if not self.skipped("model_offload"):
            self.guard("model_offload", lambda: self.model_offload_pinstream(rt, sub(1)))
        n_sections -= 1
        # sequential, prefetch 1..3; the one with the least memory is what diffusers is judged against
        for p in cfg.prefetches:
            ps_run("sequential", "stream_all", None, p, self.inputs_s, seq, cfg.timed, sub(1),
                   profile=p == min(cfg.prefetches))
        n_sections -= 1
        if not self.skipped("real_seq"):
            r = ps_run("sequential", "stream_all", None, cfg.real_prefetch, self.inputs_real, real_seq,
                       cfg.slow_timed, sub(1))
            if r:
                w["real_seq"]["sequential_ms"] = r["step_ms"]
                w["real_seq"]["sequential_prefetch"] = cfg.real_prefetch
        n_sections -= 1
        # transfer-only: every block through the ring, no compute
        self.guard("transfer_only", lambda: self.transfer_only(rt, block_ids, sub(1)))
        n_sections -= 1
        judged = self.judged_budget()
        for b in self.budgets():
            ps_run("budget", "budget", b, cfg.budget_prefetch, self.inputs_s, seq, cfg.timed, sub(1),
                   profile=b == judged)
        n_sections -= 1
        # the transfer-bound length: compute-only, sequential and the budgets the model does not fit in
        if self.inputs_short is not None:
            short = int(w["short_seq_len"])
            r = ps_run("full_load", "all_resident", None, 1, self.inputs_short, short, cfg.timed, sub(1))
            if r:
                w["short_compute_only_ms"] = r["step_ms"]
            # prefetch 1 as well as 2 here: when uploads set the pace, one block in flight already
            # keeps the link busy, and the slot it saves holds one more resident block
            low = min(cfg.prefetches)
            for p in sorted({low, cfg.budget_prefetch}):
                ps_run("sequential", "stream_all", None, p, self.inputs_short, short, cfg.timed, sub(1),
                       profile=p == low)
            # every budget traced here: where uploads set the pace, each budget is its own case
            for b in self.budgets():
                if b * GIB < self.model_bytes:
                    for p in sorted({low, cfg.budget_prefetch}):
                        ps_run("budget", "budget", b, p, self.inputs_short, short, cfg.timed, sub(1),
                               profile=True)
        n_sections -= 1
        self.overlap()


    def guard(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            _log(f"  {name} FAILED: {_short_error(e)}")
            self.results.setdefault("errors", {})[name] = _short_error(e)
            free_memory(self.cfg)
        self.write()

    def model_offload_pinstream(self, rt, sub_deadline: float) -> None:
        cfg = self.cfg
        mo = self.results["model_offload"]
        free_memory(cfg)
        rt.plan("all_resident", -1, 1)
        loads, unloads = [], []
        for i in range(3):
            if i and time.monotonic() > sub_deadline:
                break
            sync(cfg)
            t0 = time.perf_counter()
            rt.load()
            sync(cfg)
            loads.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt.unload()
            sync(cfg)
            unloads.append(time.perf_counter() - t0)
        mo.update(load_s=median(loads), unload_s=median(unloads), loads_s=loads, unloads_s=unloads,
                  model_bytes=int(self.model_bytes),
                  load_gbps=self.model_bytes / median(loads) / 1e9,
                  pinned_limit_s=self.model_bytes / (self.pinned_gbps() * 1e9))
        _log(f"  model offload: load {median(loads):.3f} s ({mo['load_gbps']:.1f} GB/s), "
             f"unload {median(unloads) * 1000:.1f} ms")

    def transfer_only(self, rt, block_ids, sub_deadline: float) -> None:
        cfg = self.cfg
        w = self.results["wan14b"]
        free_memory(cfg)
        rt.plan("stream_all", -1, 2)
        rt.load()

        def one_pass():
            rt.begin_pass()
            for b in block_ids:
                rt.acquire(b)
                rt.release(b)
            rt.end_pass()

        times = time_steps(cfg, one_pass, warmup=1, timed=cfg.timed, deadline=sub_deadline)
        rt.unload()
        streamed = self.block_bytes * len(block_ids)
        w["transfer_only_ms"] = median(times)
        w["transfer_only_steps_ms"] = times
        w["transfer_only_est_ms"] = streamed / (self.pinned_gbps() * 1e9) * 1000.0
        w["transfer_only_note"] = ("measured: one pass of acquire/release over every block through _C.Runtime "
                                   "(stream_all, prefetch 2), no compute; est: streamed bytes / pinned peak")
        _log(f"  transfer-only {median(times):.1f} ms (estimate {w['transfer_only_est_ms']:.1f} ms)")

    def overlap(self) -> None:
        w = self.results["wan14b"]
        comp, tr = w.get("compute_only_ms"), w.get("transfer_only_ms")
        if not comp or not tr:
            return
        total_blocks = max(1, self.block_bytes * self.num_blocks)
        for r in self.runs:
            if r["system"] != "pinstream" or r["mode"] == "full_load" or r.get("seq_len") != w["seq_len"]:
                continue
            frac = min(1.0, r.get("bytes_uploaded_per_step", total_blocks) / total_blocks)
            floor = max(comp, tr * frac)
            r["overlap_floor_ms"] = floor
            r["overlap_efficiency"] = r["step_ms"] / floor

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
        _log(f"  .to(device) {mo['baseline_load_s']:.3f} s, .to('cpu') {mo['baseline_unload_s']:.3f} s")

    def baseline(self, system: str, fn: Callable[[float], None], deadline: float, share: float) -> None:
        if not self.enough(deadline, "system"):
            self.status(system, {"skipped": "time budget"})
            return
        sub_deadline = time.monotonic() + (deadline - time.monotonic()) * share
        _log(f"baseline {system}")
        try:
            n_before = len(self.runs)
            fn(sub_deadline)
            n = len(self.runs) - n_before
            if system not in self.results["baselines"]:
                self.status(system, {"ok": n} if n else {"skipped": "no run fitted in the time budget"})
        except ImportError as e:
            self.status(system, {"skipped": f"not importable: {e}"})
        except Exception as e:  # noqa: BLE001
            _log(f"  {system} FAILED: {_short_error(e)}")
            self.status(system, {"error": _short_error(e)})
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
        from ..comfyui_locate import find_comfyui

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


# --------------------------------------------------------------------------- targets


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


# --------------------------------------------------------------------------- entry point


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
    _log(f"{'DRY RUN: ' if cfg.dry else ''}device {bench.results['device']}, time budget {budget:.0f} s, "
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
    bench.section("slow_baselines", bench.slow_baselines, 1.0)
    text = bench.finish()
    print(text, flush=True)
    _log(f"wrote {out / 'results.json'} and {out / 'summary.txt'} in {bench.clock.elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
