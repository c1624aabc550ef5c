"""The ``link`` section of ``bench gpu``: host-to-device bandwidth at each block size,
pageable ``.to()``, pinned ``copy_(non_blocking=True)`` (cudaMemcpyAsync, the limit) and
PinStream block uploads through ``_C.Runtime`` (acquire/release with no compute)."""

from __future__ import annotations

import math
import time

from .config import MIB
from .measure import free_memory, log, mb_key, median, short_error, sync


class LinkSection:
    """Mixed into :class:`bench.runner.Bench`."""

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
            pageable[mb_key(mb)] = n / median(ts) / 1e9
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
                pinned[mb_key(mb)] = median(rates)
                del psrc
            else:  # dry run: plain host memcpy stands in for the pinned copy
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        dst.copy_(src)
                    ts.append((time.perf_counter() - t0) / reps)
                pinned[mb_key(mb)] = n / median(ts) / 1e9
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
                res.setdefault("errors", {})[mb_key(mb)] = short_error(e)
                log(f"  link {mb:g} MB: PinStream FAILED: {short_error(e)}")
            blocks = None
            free_memory(cfg)
            log(f"  link {mb:>7g} MB: pageable {pageable[mb_key(mb)]:6.2f}  pinned {pinned[mb_key(mb)]:6.2f}  "
                 f"pinstream {ps_wall.get(mb_key(mb), float('nan')):6.2f} "
                 f"(event-timed {ps_event.get(mb_key(mb), float('nan')):6.2f}) GB/s")
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

        from pinstream.native import load_native

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
            res["pinstream_gbps_by_mb"][mb_key(mb)] = int(st["bytes_uploaded"]) / wall / 1e9
            res["pinstream_event_gbps_by_mb"][mb_key(mb)] = float(st.get("upload_gbps", 0.0))
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
