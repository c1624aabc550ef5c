"""OffloadHandle: a model under PinStream, made by :func:`pinstream.offload`.

The module owns its handle (``module._pinstream_handle``); the handle refers to the
module only weakly and its hooks never refer to it, so there is no reference cycle:
when the last reference to the model goes, the handle goes with it, at once, and so do
its pinned host memory and its device memory.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch
from torch import nn

from . import pin_cap
from .discovery import BlockDiscovery
from .hooks import PassHooks
from .modes import ResolvedMode, read_ring_bytes
from .replan import Replanning
from .wrappers import show_all, to_keeping_inference

GIB = 1024**3

# Model-offload handles holding device memory, per device: loading one offloads the
# others (one large model on the device at a time), like diffusers' model CPU offload
# but without device-to-host copies.
_LOADED_MODEL_OFFLOAD: dict[str, list] = {}
_LOADED_LOCK = threading.Lock()

# The model whose pass ran last (weakly): host RAM follows a model from its second pass
# in a row (see OffloadHandle._follow_ram).
_LAST_RUNNER: list = [None]
_RUN_SEQ: list = [0]
_RAM_LOCK = threading.Lock()
# what the moves of RAM following the running model took in this process: milliseconds
# and bytes brought back into RAM, each move weighing twice the one before it (the cost of
# the next move is judged by their pace). A block's copy on disk is checked (or written)
# only on its first move to disk: a move that did that is not counted.
_MOVE_COST: list = [0.0, 0]


def sampler_step(kwargs) -> tuple[float, int] | None:
    """Under a ComfyUI sampler (the forward's ``transformer_options`` hold the step's
    ``sigmas`` and the run's ``sample_sigmas``, which fall step by step): the step's sigma and
    the sampler's steps left, this one included. None elsewhere."""
    opts = kwargs.get("transformer_options") if isinstance(kwargs, dict) else None
    if not isinstance(opts, dict):
        return None
    sigma, run = opts.get("sigmas"), opts.get("sample_sigmas")
    if not (isinstance(sigma, torch.Tensor) and isinstance(run, torch.Tensor)) or sigma.numel() == 0 \
            or run.dim() != 1 or run.numel() < 2:
        return None
    s = float(sigma.detach().float().max())
    starts = run.detach()[:-1].float().cpu()  # the sigma each step starts at
    return s, max(1, int((starts <= s * (1 + 1e-4)).sum()))


class OffloadHandle(Replanning):
    """A model under PinStream. Created by :func:`pinstream.offload`."""

    def __init__(self, module: nn.Module, *, mode: ResolvedMode, runtime, discovery: BlockDiscovery,
                 block_ids: list[int], fixed_id: int | None, device: torch.device,
                 original_device: torch.device, prefetch: int, model_bytes: int, plan: dict,
                 original_requires_grad: dict, wrappers: dict | None = None, settings: dict | None = None):
        self._module = weakref.ref(module)
        self.mode = mode
        self.device = device
        self.prefetch = prefetch
        self.discovery = discovery
        self.model_bytes = model_bytes
        self.plan = plan
        self._rt = runtime
        self._block_ids = block_ids
        self._fixed_id = fixed_id
        self._original_device = original_device
        self._detached = False
        self._requires_grad = original_requires_grad
        self.oom_retries = 0
        # wrapper-subclass weights by unit: block index, or None for the resident rest
        self._wrappers: dict = wrappers or {}
        self._params = list(original_requires_grad)
        # The plan offload() made: fit_device_bytes() never plans above it.
        self._first = (mode, plan, prefetch)
        self._fit_target: int | None = None  # the allowance the plan was last fitted to
        # how offload() was called (rebuild() offloads again the same way)
        self._settings = dict(settings or {})
        self._where: dict = {}  # id(registered tensor) -> (block, index) in the runtime
        # units whose host values are held apart from their weights (the exact coded form,
        # or on disk): between uses their weights point at a placeholder
        self._apart_units: set = set()
        self._has_disk = False  # some of its blocks live on disk
        self._arriving = False  # blocks read into RAM by the pass running or next
        self._arrival_error = ""
        self._coded_units: set = set()  # held in the exact coded form
        self._run_seq = 0  # when its last pass began (a process-wide count)
        self._pass_snap = None  # disk bytes, compute ms, disk wait ms when its last pass began
        self._rent_ms = 0.0  # time the disk held its passes in a row beyond their compute
        self._rent_passes = 0  # the passes counted in it
        self._rent_read = (0, 0.0)  # the bytes those passes read from disk, and their compute ms
        self._placed = False  # its blocks on disk placed once by their timed compute
        self._told: int | None = None  # passes still to run in a row, as told by expect_passes()
        self._step = (None, 0, 1)  # under a sampler: its step's sigma, passes at it, passes a step
        self._host_budget_given: int | None = None  # host_budget_gb as bytes, when one was given
        # moves between RAM and disk (set_host_budget, RAM following the running model)
        self.ram_moves = {"moves": 0, "to_disk_bytes": 0, "to_ram_bytes": 0, "ms": 0.0}
        # blocks that were on disk once: their copy on disk was checked (or written) then
        self._disk_once: set | None = None
        self._first_to_disk_bytes = 0  # what went to disk for the first time, checked as it went
        self._hooks = PassHooks(self)
        self._install_hooks(per_block=mode.name in ("sequential", "budget") or mode.transfer_dtype == "fp8_e4m3")

    def _install_hooks(self, per_block: bool) -> None:
        whole = (self.mode.name in ("model_offload", "full_load") and self.mode.transfer_dtype != "fp8_e4m3"
                 and not per_block)
        self._hooks.install(self.module, rt=self._rt, whole_model=whole, per_block=per_block,
                            block_ids=self._block_ids, blocks=self.discovery.blocks, wrappers=self._wrappers)

    # ---- what it is --------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        m = self._module()
        if m is None:
            raise RuntimeError("PinStream: the model of this handle no longer exists")
        return m

    @property
    def detached(self) -> bool:
        return self._detached

    @property
    def loaded(self) -> bool:
        return not self._detached and self._rt.loaded

    @property
    def device_bytes(self) -> int:
        """Device bytes this model holds now (slots and resident blocks)."""
        return 0 if self._detached else int(self._rt.device_bytes)

    @property
    def pinned_bytes(self) -> int:
        """Host bytes of its copy that are pinned."""
        return 0 if self._detached else int(self._rt.pinned_bytes)

    @property
    def host_bytes(self) -> int:
        """Host bytes of its copy, pinned or not."""
        return 0 if self._detached else int(self._rt.host_bytes)

    @property
    def ram_bytes(self) -> int:
        """Host RAM it holds: its copy and the disk tier's read ring."""
        return 0 if self._detached else int(self._rt.ram_bytes)

    @property
    def runtime(self):
        """The native runtime (pinstream._C.Runtime): for benchmarks and tests."""
        return self._rt

    # ---- host values (a coded weight's only host copy is its coded form; a disk one's, its file)
    def stored_apart(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` (a registered tensor) has its values held apart from it: in the
        exact coded form or on disk. Between uses it points at a placeholder; read it with
        :meth:`host_value`, change it with :meth:`write_host_values`."""
        w = self._where.get(id(weight))
        return w is not None and w[0] in self._apart_units

    def host_value(self, weight: torch.Tensor) -> torch.Tensor:
        """The exact values of ``weight`` on the host: its host copy (an alias), or for a
        weight stored apart a new tensor (decoded from the coded form, read from disk)."""
        self._check_open()
        w = self._where.get(id(weight))
        if w is None:
            raise KeyError("PinStream: this tensor is not one of the model's weights PinStream holds")
        return self._rt.host_value(*w)

    def write_host_values(self, values: dict) -> None:
        """New values {weight: tensor of its shape and dtype} into the host copy (a coded
        weight's block is coded again). Unloads first: the next use uploads them."""
        self._check_open()
        by_block: dict = {}
        for weight, value in values.items():
            w = self._where.get(id(weight))
            if w is None:
                raise KeyError("PinStream: this tensor is not one of the model's weights PinStream holds")
            by_block.setdefault(w[0], []).append((w[1], value.detach().to("cpu")))
        self.unload()
        for block, items in by_block.items():
            self._rt.write_host_values(block, items)
        self.plan = self._rt.current_plan()  # a coded block's size may have changed

    def _install_apart_state_dict(self, units: set) -> None:
        """state_dict() gives the weights of ``units`` that are held apart at that moment as
        values read on demand (:class:`pinstream.coded.CodedValue`)."""
        from .coded import install_state_dict_hook

        module = self.module
        names = {}
        for name, t in list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers()):
            w = self._where.get(id(t))
            if w is not None and w[0] in units:
                names[name] = w
        self._hooks.keep(install_state_dict_hook(module, self._rt, names, self._apart_units))

    def _refresh_apart(self, st: dict | None = None) -> list:
        """After blocks moved between RAM and disk: which units are held apart now (from the
        runtime's stats ``st``, taken now when not given). Returns which blocks are on disk."""
        on_disk = (st or self._rt.stats())["block_on_disk"]
        self._has_disk = any(on_disk)
        now = self._coded_units | {b for b, d in enumerate(on_disk) if d}
        self._apart_units.clear()  # the same set: the state_dict hook reads it
        self._apart_units.update(now)
        return on_disk

    # ---- host RAM: the disk tier's budget, moved between models -----------------------
    def set_host_budget(self, host_budget_gb: float | None) -> int:
        """Move blocks between host RAM and disk so this model holds at most
        ``host_budget_gb`` GiB of weights in RAM (None: no limit of its own, every block back
        in RAM; the process's pinning cap still bounds what it takes from waiting models).
        Blocks going to disk are read later from the model's own file where its bytes are
        the same, else from a spill file written once; blocks coming back are read from disk.
        Between forwards only. Returns the host bytes of weights held after."""
        from . import modes as _modes

        self._check_open()
        if self._hooks.pass_owner is not None:
            raise RuntimeError("PinStream: set_host_budget() during a forward of this model; call it between forwards")
        budget = -1 if host_budget_gb is None else int(_modes.check_host_budget_gb(host_budget_gb) * GIB)
        self._host_budget_given = None if budget < 0 else budget  # its cap from now on
        self._placed = True  # placed as asked: not again by its timed compute
        return self._move_ram(budget)

    def expect_passes(self, passes: int | None) -> None:
        """Says how many passes (forwards) this model runs in a row from its next one, such
        as a sampler's steps. Host RAM following then weighs taking RAM by the passes left to
        gain from it: a model about to hand over to another takes none late in its run, one
        starting a long run takes it as soon as its second pass shows what the disk costs it.
        Each pass counts it down; ``None``, or once counted out: not known, and the passes run
        so far stand for those to come. Under ComfyUI's samplers nothing needs telling: the
        steps left are read from the sampler's sigmas."""
        if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int) or passes < 0):
            raise ValueError(f"PinStream: expect_passes() takes a count of passes (an int >= 0) or None, "
                             f"not {passes!r}")
        self._told = passes or None

    def _passes_left(self, told: int | None, kwargs) -> int | None:
        """The passes it still runs in a row, this one included: as told, else under a ComfyUI
        sampler its steps left times the passes a step took; None when not known."""
        if told is not None:
            return told
        at = sampler_step(kwargs)
        if at is None:
            return None
        sigma, steps = at
        last, passes, per_step = self._step
        if sigma == last:
            passes += 1
            per_step = max(per_step, passes)
        else:
            if last is None or sigma > last:  # sigmas fall within a run: a new one
                per_step = 1
            passes = 1
        self._step = (sigma, passes, per_step)
        return max(1, steps * per_step - (passes - 1))

    def _move_ram(self, budget: int, pin_cap_bytes: int | None = None, by_timing: bool = False,
                  read_through: bool = False) -> int:
        """set_host_budget on the runtime, counted in ram_moves. ``read_through``: blocks
        coming back are read by the next pass into their RAM (which streams them anyway)
        instead of now; until it ends they count as moved, and are held apart still."""
        import time

        before = self._rt.stats()["block_on_disk"]
        start = time.perf_counter()
        try:
            held = self._rt.set_host_budget(budget, pin_cap_bytes, by_timing, read_through)
        finally:
            st = self._rt.stats()
            after = self._refresh_apart(st)
            arriving = st["block_arriving"]  # (none without read_through: the runtime settled them first)
            self._arriving = any(arriving)
            after = [d and not a for d, a in zip(after, arriving, strict=True)]
        if self._disk_once is None:
            self._disk_once = {i for i, d in enumerate(before) if d}
        first = {i for i, d in enumerate(after) if d} - self._disk_once
        self._first_to_disk_bytes += sum(self._rt.block_bytes[i] for i in first)
        self._disk_once |= first
        if after != before:
            m = self.ram_moves
            m["moves"] += 1
            pairs = list(zip(before, after, self._rt.block_bytes))
            m["to_disk_bytes"] += sum(b for was, now, b in pairs if now and not was)
            m["to_ram_bytes"] += sum(b for was, now, b in pairs if was and not now)
            m["ms"] += (time.perf_counter() - start) * 1e3
        return held

    def _disk_now(self) -> bool:
        """Whether blocks of it live on disk, those read through its last pass counted in
        RAM (and a read-through that failed said once)."""
        if self._arriving:
            self._arriving = False
            st = self._rt.stats()
            self._refresh_apart(st)
            err = st.get("arrival_error")
            if err and err != self._arrival_error:
                import warnings

                self._arrival_error = err
                warnings.warn(f"PinStream: blocks could not come back to RAM: {err}", RuntimeWarning, stacklevel=3)
        return self._has_disk

    def _follow_ram(self, kwargs=None) -> None:
        """Before a pass (``kwargs``: the forward's): host RAM follows the model that runs.
        A model with blocks on disk counts, pass after pass in a row, the time the disk held
        its passes beyond their compute; once that reaches what the move costs (the giver
        reads those bytes twice at its next turn, at the disk rate measured, and the move
        takes what the moves so far took a byte), it takes the RAM that hides its disk time
        under its compute (what the disk reads in the time a pass outlasted it): models
        waiting for their turn (the least recently run first, those with an automatic host
        budget) move as many of their blocks to disk as it is short of, and its own blocks
        come back, up to the process's pinning cap (and its own host budget when one was
        given). They are read through the pass that follows, which would read them from disk
        anyway: into their RAM, and uploaded from there. Where the passes left in its run are
        known (expect_passes(), or a ComfyUI sampler's sigmas), the disk time those passes
        would save stands for the time counted: a model about to hand over takes nothing
        late, one starting a long run takes RAM at its second pass. Wan 2.2's two experts:
        where the disk is far slower than the compute, the one not running lives on disk. A
        disk that keeps up with the compute, or models that alternate every pass, move
        nothing."""
        told, self._told = self._told, (self._told - 1 if self._told and self._told > 1 else None)
        with _RAM_LOCK:
            last = _LAST_RUNNER[0]() if _LAST_RUNNER[0] is not None else None
            _LAST_RUNNER[0] = weakref.ref(self)
            _RUN_SEQ[0] += 1
            self._run_seq = _RUN_SEQ[0]
        if not self._disk_now():
            self._pass_snap = None
            self._reset_rent()
            return
        left = self._passes_left(told, kwargs)  # (every pass: a sampler's passes a step are counted)
        st = self._rt.pace()  # no wait for the timings of work still in flight
        prev, self._pass_snap = self._pass_snap, (st["disk_bytes"], st["compute_ms"], st["disk_wait_ms"])
        if last is not self or prev is None:
            self._reset_rent()  # a switch: the count starts again
            return
        if not self._placed and st["passes"] >= 2:
            # once its blocks' compute was timed: placed again by it where it is spread unlike their bytes
            self._placed = True
            try:
                self._move_ram(int(st["host_budget_bytes"]), by_timing=True, read_through=True)
            except (RuntimeError, MemoryError) as e:  # a read or an allocation failed: the blocks stay
                import warnings

                warnings.warn(f"PinStream: blocks on disk could not be placed by their compute: {e}",
                              RuntimeWarning, stacklevel=2)
        self._rent_ms += self._disk_excess_ms(st, prev)
        self._rent_passes += 1
        self._rent_read = (self._rent_read[0] + st["disk_bytes"] - prev[0],
                           self._rent_read[1] + st["compute_ms"] - prev[1])
        cap = pin_cap.default_pin_cap_bytes()
        if cap < 0 or self._rent_ms <= 0:
            return
        elsewhere = int(self._settings.get("pinned_elsewhere", 0))
        room = max(0, cap - elsewhere)
        held, need = self._rt.host_bytes, self._rt.host_bytes + int(st["disk_block_bytes"])
        others = sorted((h for h in pin_cap.live_handles() if h is not self), key=lambda h: h._run_seq)
        givers = [h for h in others if h._host_budget_given is None and h._hooks.pass_owner is None
                  and h.host_bytes > h.discovery.nonblock_bytes]

        def goal(left: int) -> int:  # all of it when RAM allows (its ring goes then), else beside its ring
            want = need if need <= left else left - self._ring_bytes()
            return want if self._host_budget_given is None else min(want, self._host_budget_given)

        # what it could hold with every giver on disk (each then keeps its part outside the
        # blocks and its read ring); of that it takes what hides its disk time under its
        # compute: the bytes the disk reads in the time a pass exceeded it by, a block more.
        # More RAM would save it nothing, and the giver would read it back at its turn.
        floor = sum(h.ram_bytes for h in others if h not in givers) + sum(
            h.discovery.nonblock_bytes + h._ring_bytes() for h in givers)
        gbps = self._pass_read_gbps(self._rent_read[0], self._rent_read[1], self._rent_ms,
                                    float(st.get("disk_gbps", 0.0)))
        want = self._hiding_bytes(held, self._rent_ms / max(1, self._rent_passes), gbps,
                                  self.discovery.largest_block_bytes, goal(room - floor))
        gain = want - held
        if gain < self.discovery.largest_block_bytes or (left is not None and left < 2):
            return
        # the blocks coming back are read through this pass, which would read them anyway:
        # the passes after it gain, as many as are left where that is known, else as many as
        # ran (the disk time counted). The cost is the giver's (see _move_pays).
        gained = self._rent_ms if left is None else (left - 1) * self._rent_ms / self._rent_passes
        if not self._move_pays(gained, gain, gbps, _MOVE_COST):
            if self._move_pays(gained, gain, gbps):
                # turned down by the pace of the moves so far alone: a pace not measured again
                # loses a tenth at each move it turns down, so that one slow move cannot keep
                # every later one from paying (the next move measures it again)
                with _RAM_LOCK:
                    _MOVE_COST[0] *= 0.9
            return
        # the room it needs beside the others: its ring too while blocks stay on disk
        required = need if want >= need else want + self._ring_bytes()
        import time

        start = time.perf_counter()
        checked = sum(h._first_to_disk_bytes for h in givers)
        try:
            for other in givers:  # the least recently run first, each what is still short
                short = required - (room - sum(h.ram_bytes for h in others))
                if short <= 0:
                    break
                ring = 0 if other._disk_now() else other._ring_bytes()  # it reads from disk after
                other._move_ram(max(0, other.host_bytes - short - ring))
            target = min(want, goal(room - sum(h.ram_bytes for h in others)))
            if target >= held + self.discovery.largest_block_bytes or target >= need:
                self._move_ram(target, pin_cap_bytes=pin_cap.available_pin_bytes(elsewhere) + self.pinned_bytes,
                               read_through=True)
            # the givers' moves to disk and its new buffers, against what came back; not a move
            # that checked (or wrote) blocks' copies on disk: that is once a block, not a pace
            if sum(h._first_to_disk_bytes for h in givers) == checked:
                with _RAM_LOCK:
                    _MOVE_COST[0] = _MOVE_COST[0] / 2 + (time.perf_counter() - start) * 1e3
                    _MOVE_COST[1] = _MOVE_COST[1] // 2 + max(0, self._rt.host_bytes - held)
        except (RuntimeError, MemoryError) as e:
            # (another model began a forward meanwhile, a read failed, no host memory for a
            # block coming back): every block is still where it can be read from, and this
            # pass streams as it is
            import warnings

            warnings.warn(f"PinStream: host RAM could not follow the model that runs: {e}", RuntimeWarning,
                          stacklevel=2)
        self._reset_rent()

    def _reset_rent(self) -> None:
        self._rent_ms, self._rent_passes, self._rent_read = 0.0, 0, (0, 0.0)

    @staticmethod
    def _pass_read_gbps(read: int, compute_ms: float, excess_ms: float, gbps: float) -> float:
        """The rate a model's passes read from disk at, as the passes saw it (GB/s): where
        the disk held them beyond their compute it was reading all along, so their bytes
        over their compute and that excess; else (or nothing timed) ``gbps``, the rate per
        second of busy disk time. The RAM that hides the excess, and the reads a giver makes
        again, are reckoned at it."""
        spent = compute_ms + excess_ms
        if read > 0 and excess_ms > 0 and compute_ms > 0 and math.isfinite(spent):
            return read / spent / 1e6
        return gbps

    def _ring_bytes(self) -> int:
        """Its read ring while blocks live on disk: prefetch + read-ahead of its largest block."""
        return read_ring_bytes(self.prefetch, self.discovery.largest_block_bytes)

    @staticmethod
    def _hiding_bytes(held: int, excess_ms: float, gbps: float, block: int, most: int) -> int:
        """The host bytes that hide a model's disk time under its compute: ``held`` and what
        the disk reads in ``excess_ms`` (how long a pass's reads outlasted its compute) at
        ``gbps``, a ``block`` more for the blocks' granularity; at most ``most``, all of it
        while no disk rate was measured."""
        bytes_ = held + excess_ms * gbps * 1e6 + block
        return most if gbps <= 0 or bytes_ >= most else int(bytes_)  # (excess_ms may be inf)

    @staticmethod
    def _move_pays(rent_ms: float, gain_bytes: int, gbps: float, past=(0.0, 0)) -> bool:
        """Whether the disk time counted (``rent_ms``) reached what moving ``gain_bytes``
        back into RAM costs: the giver reads them at its next turn twice, at ``gbps`` (GB/s):
        its first pass streams them and its second, taking them back, reads them through;
        and the move itself, at the pace the moves so far took (``past``: milliseconds, bytes
        brought back: the givers' moves to disk, the new buffers, the waits). With no rate
        measured yet and no move made, it pays."""
        cost = 2 * gain_bytes / (gbps * 1e6) if gbps > 0 else 0.0
        if past[1] > 0:
            cost += gain_bytes * past[0] / past[1]
        return rent_ms >= cost

    @staticmethod
    def _disk_excess_ms(st: dict, prev: tuple) -> float:
        """How long the disk held the pass since ``prev`` (disk bytes, compute ms, disk wait ms
        when it began) beyond its compute: its reads at the disk rate measured so far less its
        compute, at most the host's waits for reads (a device's compute queued ahead hides
        some of them; the host engine's compute, timed by its blocks alone, leaves out the
        rest of the pass that hides reads too); with no compute timed, the waits. 0 when the
        disk kept up."""
        read, compute, wait = (st["disk_bytes"] - prev[0], st["compute_ms"] - prev[1],
                               st["disk_wait_ms"] - prev[2])
        gbps = float(st.get("disk_gbps", 0.0))
        if compute > 0 and gbps > 0:
            return max(0.0, min(read / (gbps * 1e6) - compute, wait))
        return max(0.0, wait)

    # ---- wrapper-subclass weights (see pinstream.wrappers) -------------------------------
    def _after_load(self) -> None:
        """The resident part's wrappers (all of them when no block hooks run) say device."""
        for key, slots in self._wrappers.items():
            show_all(slots, key is None or not self._hooks.per_block)

    def _hide_all(self) -> None:
        for slots in self._wrappers.values():
            show_all(slots, False)

    # ---- checks the hooks make -----------------------------------------------------------
    def _check_no_grad(self, args, kwargs) -> None:
        """Autograd keeps the weights a forward uses for its backward; streamed weights
        live in device slots that later blocks refill, so the gradients would be wrong.
        Called only while grad mode is on."""
        if not self.streams_blocks:
            return  # nothing streams: every weight keeps its own device memory
        if not (any(p.requires_grad for p in self._params)
                or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
                or any(isinstance(a, torch.Tensor) and a.requires_grad for a in kwargs.values())):
            return
        raise RuntimeError(
            f"PinStream: gradients cannot be computed through a model offloaded in {self.mode.name} mode: "
            "its streamed weights live in device slots that are reused by later blocks, so autograd cannot "
            "keep them for backward. Run the forward under torch.no_grad() or torch.inference_mode(), or "
            "use mode full_load or model_offload for training or gradients")

    def _before_load_state_dict(self, _module, _state_dict, _prefix, local_metadata, *_rest) -> None:
        """load_state_dict() pre-hook: the new values must land in the host copy (the
        truth between uses), so the device copies and prefetched slots go first; the next
        forward uploads the new values."""
        if self._detached:
            return
        if local_metadata.get("assign_to_params_buffers"):
            raise RuntimeError("PinStream: load_state_dict(assign=True) would replace the tensors of an "
                               "offloaded model; use assign=False, or detach() the handle, load, then offload again")
        if self.mode.transfer_dtype != "auto":
            raise RuntimeError(f"PinStream: load_state_dict() on a model offloaded with transfer_dtype "
                               f"{self.mode.transfer_dtype!r}: its transfer codes were made from the weights at "
                               "offload(); detach() the handle, load, then offload again")
        self.unload()

    def _warm_others(self) -> None:
        """After a pass: the other live models with blocks on disk (the other expert of Wan
        2.2, waiting for its turn) read the blocks their next pass starts with into their read
        ring, and a loaded one uploads them into its slots too, so switching to them waits for
        no disk read at first."""
        for other in pin_cap.live_handles():
            if other is not self and other._hooks.pass_owner is None and other._disk_now():
                other._rt.warm()

    # ---- load and unload -----------------------------------------------------------------
    def load(self) -> None:
        """Upload the plan's resident part now; no-op if loaded. A model_offload model
        first unloads the other model_offload models on its device."""
        self._check_open()
        if self._rt.loaded:
            return
        key = str(self.device)
        if self.mode.name == "model_offload":
            with _LOADED_LOCK:
                others = [h for h in (r() for r in _LOADED_MODEL_OFFLOAD.get(key, [])) if h is not None and h is not self]
                _LOADED_MODEL_OFFLOAD[key] = [weakref.ref(self)]
            for other in others:
                other.unload()
        self._load_with_retry()

    def unload(self) -> None:
        """Free the device copy. Weights point at the pinned host copy again; no
        device-to-host copy happens unless weights were modified on the device."""
        if self._detached:
            return
        self._hooks.end_open_pass(self._rt, "unload()")
        self._hide_all()
        self._rt.unload()

    # ---- stats ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Runtime counters plus what this handle is: mode (and why), sizes, plan."""
        s = self._rt.stats() if not self._detached else {}
        s.update(
            mode=self.mode.name,
            mode_reason=self.mode.reason,
            requested_mode=self.mode.requested,
            prefetch=self.prefetch,
            model_bytes=self.model_bytes,
            num_blocks=len(self.discovery.blocks),
            largest_block_bytes=self.discovery.largest_block_bytes,
            nonblock_bytes=self.discovery.nonblock_bytes,
            detached=self._detached,
            # moves between RAM and disk (set_host_budget, RAM following the model that runs)
            ram_moves=self.ram_moves["moves"],
            ram_to_disk_bytes=self.ram_moves["to_disk_bytes"],
            ram_to_ram_bytes=self.ram_moves["to_ram_bytes"],
            ram_move_ms=self.ram_moves["ms"],
        )
        plan = s.get("plan") or self.plan
        if plan:
            s["resident_bytes"] = int(plan["fixed_bytes"] + plan["resident_block_bytes"])
            # blocks held on the device in their coded form, decoded into a slot per use
            s["resident_coded_bytes"] = int(plan.get("coded_block_bytes", 0))
            s["streamed_bytes"] = int(plan["streamed_block_bytes"])
        return s

    def reset_stats(self) -> None:
        if not self._detached:
            self._rt.reset_stats()

    def _check_open(self) -> None:
        if self._detached:
            raise RuntimeError("PinStream: this handle was detached; call pinstream.offload() again")

    # ---- detach and rebuild --------------------------------------------------------------
    def detach(self) -> nn.Module:
        """Remove PinStream: hooks off, device and pinned memory freed, weights back
        in ordinary memory on the device the module was on, with the same values."""
        module = self._module()
        if self._detached:
            return module
        self._hooks.remove()
        self._hooks.pass_owner = None
        self._hide_all()
        try:
            self._rt.close(restore_pageable=True)  # raises after closing when a file could not be read back
        finally:
            self._detached = True
            pin_cap.untrack(self)
        if module is not None and getattr(module, "_pinstream_handle", None) is self:
            try:
                del module._pinstream_handle
            except AttributeError:
                pass
        with _LOADED_LOCK:
            for key, refs in list(_LOADED_MODEL_OFFLOAD.items()):
                _LOADED_MODEL_OFFLOAD[key] = [r for r in refs if r() is not None and r() is not self]
        if module is None:
            return None
        # Wrappers first: Module.to() rebuilds a wrapper that already says the target
        # device from its inner tensors, so those must be there before it runs.
        for slots in self._wrappers.values():
            for slot in slots:
                slot.follow_outer_device()
        if self._original_device.type != "cpu":
            to_keeping_inference(module, self._original_device)
        for p, rg in self._requires_grad.items():
            if p.requires_grad != rg:  # (an inference tensor refuses even a no-op requires_grad_(True))
                p.requires_grad_(rg)
        return module

    def rebuild(self, **changes) -> "OffloadHandle":
        """The same model offloaded again from its weights as they are now (for example
        after a weight patch changed the weights an fp8 transfer form was made from), with
        ``changes`` to how :func:`pinstream.offload` is called (mode, budget_gb, ...).
        This handle is detached first; when the new offload fails, the model is offloaded
        again as it was (a handle with this one's settings is made) and the error is
        raised. The new handle keeps the plan this one started from, so
        :meth:`fit_device_bytes` may still grow back to it."""
        from .engine import offload

        self._check_open()
        module = self.module
        settings = dict(self._settings)
        settings.pop("pin_cap_bytes", None)  # what the cap leaves is asked again, after the detach
        pinned_elsewhere = settings.pop("pinned_elsewhere", 0)
        # as it runs now (auto's decision, a plan fitted to an allowance)
        settings["mode"] = self.mode.name
        settings["budget_gb"] = self.mode.budget_bytes / GIB if self.mode.name == "budget" else None
        settings["prefetch"] = self.prefetch
        settings["load"] = False  # the next use loads it
        same = not changes
        wanted = {**settings, **changes}
        first, reason = self._first, self.mode.reason
        self.detach()
        try:
            new = offload(module, pin_cap_bytes=pin_cap.available_pin_bytes(pinned_elsewhere), **wanted)
        except BaseException:
            if not same:
                back = offload(module, pin_cap_bytes=pin_cap.available_pin_bytes(pinned_elsewhere), **settings)
                back.mode.reason, back._first = reason, first
                back._settings["pinned_elsewhere"] = pinned_elsewhere
            raise
        new._settings["pinned_elsewhere"] = pinned_elsewhere
        if same:
            new.mode.reason, new._first = reason, first
        return new

    def __repr__(self) -> str:
        return (f"OffloadHandle(mode={self.mode.name}, device={self.device}, blocks={len(self._block_ids)}, "
                f"model={self.model_bytes / GIB:.2f} GiB, detached={self._detached})")
