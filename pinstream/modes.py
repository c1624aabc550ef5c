"""Offload modes, their aliases, and the `auto` decision.

PinStream offers four concrete modes per model:

* ``full_load``      all weights on the device.
* ``model_offload``  the whole model lives in pinned host memory and is uploaded
                     (in large chunks at full link speed) while it is used.
* ``sequential``     non-block weights stay resident; every block is streamed
                     through a ring of ``prefetch + 1`` device slots.
* ``budget``         as much of the model resident as fits in a VRAM budget:
                     whole blocks, or a block's head (its first tensors) with only
                     its rest streamed, so the ring's slots hold the streamed rests
                     and not whole blocks.

``auto`` picks one of them from free device memory, the model's sizes and host
RAM.  The seed's ``GPU_MEMORY_MODE`` spellings are accepted as aliases.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

MODES = ("auto", "full_load", "model_offload", "sequential", "budget")

# GPU_MEMORY_MODE spellings (VideoX-Fun / FlashPortrait) -> (mode, transfer dtype).
ALIASES = {
    "model_full_load": ("full_load", "auto"),
    "model_cpu_offload": ("model_offload", "auto"),
    "sequential_cpu_offload": ("sequential", "auto"),
    "model_cpu_offload_and_qfloat8": ("model_offload", "fp8_e4m3"),
    "model_full_load_and_qfloat8": ("full_load", "fp8_e4m3"),
    "sequential_cpu_offload_and_qfloat8": ("sequential", "fp8_e4m3"),
    "model_cpu_offload_and_compressed": ("model_offload", "compressed"),
    "model_full_load_and_compressed": ("full_load", "compressed"),
    "sequential_cpu_offload_and_compressed": ("sequential", "compressed"),
}

# auto: as stored. fp8_e4m3: blocks cross the link as fp8 with per-row scales (lossy).
# compressed: every unit held and sent in the exact coded form (bit-identical results).
TRANSFER_DTYPES = ("auto", "fp8_e4m3", "compressed")

GIB = 1024**3

# Device memory kept free for activations, the CUDA context and other models when
# auto decides.  ComfyUI keeps ~0.8 GB + an OS reserve; we use the larger of a fixed
# floor and a fraction of the device.
AUTO_RESERVE_FLOOR_BYTES = int(1.0 * GIB)
AUTO_RESERVE_FRACTION = 0.10
# full_load needs this much headroom above the model for activations.
AUTO_FULL_LOAD_HEADROOM = 1.15


class ModeError(ValueError):
    """A mode, budget or prefetch value that PinStream cannot use."""


@dataclass
class ResolvedMode:
    """What mode a handle runs, and why (for auto: the decision and its inputs)."""

    name: str
    requested: str
    reason: str
    budget_bytes: int | None = None
    transfer_dtype: str = "auto"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:  # handle.mode == "sequential"
        if isinstance(other, str):
            return self.name == other
        return isinstance(other, ResolvedMode) and self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)


def allowed_names() -> str:
    return ", ".join(MODES) + " (aliases: " + ", ".join(ALIASES) + ")"


def normalize_mode(name) -> tuple[str, str]:
    """Return (mode, transfer_dtype) for a mode name or alias.

    Raises ModeError naming what is allowed when ``name`` is unknown.
    """
    if not isinstance(name, str):
        raise ModeError(f"mode must be a string, got {type(name).__name__}; allowed: {allowed_names()}")
    key = name.strip().lower()
    if key in MODES:
        return key, "auto"
    if key in ALIASES:
        return ALIASES[key]
    raise ModeError(f"unknown mode {name!r}; allowed: {allowed_names()}")


def env_default_mode() -> tuple[str, str] | None:
    """The mode named by GPU_MEMORY_MODE, or None when unset or empty.

    A set but unknown value is an error (never silently ignored).
    """
    raw = os.environ.get("GPU_MEMORY_MODE", "").strip()
    if not raw:
        return None
    try:
        return normalize_mode(raw)
    except ModeError as e:
        raise ModeError(f"GPU_MEMORY_MODE={raw!r} is not a PinStream mode; allowed: {allowed_names()}") from e


def check_budget_gb(budget_gb) -> float | None:
    if budget_gb is None:
        return None
    try:
        value = float(budget_gb)
    except (TypeError, ValueError):
        raise ModeError(f"budget_gb must be a number of GiB, got {budget_gb!r}") from None
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise ModeError(f"budget_gb must be a finite number > 0 (GiB), got {budget_gb!r}")
    return value


# disk-tier blocks read beyond the uploads' look-ahead
READ_AHEAD = 2


def read_ring_bytes(prefetch: int, largest_block: int) -> int:
    """The disk tier's pinned read ring while blocks live on disk: prefetch + read-ahead
    buffers of the largest block, on top of the host budget."""
    return (prefetch + READ_AHEAD) * largest_block


def check_host_budget_gb(host_budget_gb) -> float:
    try:
        value = float(host_budget_gb)
    except (TypeError, ValueError):
        raise ModeError(f"host_budget_gb must be a number of GiB, got {host_budget_gb!r}") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ModeError(f"host_budget_gb must be a finite number >= 0 (GiB of the model's weights held in host RAM; "
                        f"the rest lives on disk), got {host_budget_gb!r}")
    return value


def check_prefetch(prefetch) -> int:
    if isinstance(prefetch, bool) or not isinstance(prefetch, int):
        raise ModeError(f"prefetch must be a whole number >= 0, got {prefetch!r}")
    if prefetch < 0 or prefetch > 16:
        raise ModeError(f"prefetch must be between 0 and 16 blocks, got {prefetch}")
    return prefetch


def min_streaming_bytes(nonblock_bytes: int, largest_block_bytes: int, prefetch: int) -> int:
    """Smallest device footprint that can stream: resident non-block part + ring."""
    return nonblock_bytes + (prefetch + 1) * largest_block_bytes


@dataclass(frozen=True)
class AutoChoice:
    mode: str
    budget_bytes: int | None
    reason: str


def auto_reserve_bytes(free_device_bytes: int) -> int:
    """Device memory auto keeps free: the larger of a fixed floor and a fraction of free."""
    return max(AUTO_RESERVE_FLOOR_BYTES, int(AUTO_RESERVE_FRACTION * max(free_device_bytes, 0)))


def auto_usable_bytes(free_device_bytes: int) -> int:
    """Free device memory less the reserve."""
    return max(0, free_device_bytes - auto_reserve_bytes(free_device_bytes))


def activation_headroom_bytes(model_bytes: int) -> int:
    """Device memory kept for activations beside the weights (15% of the model)."""
    return int((AUTO_FULL_LOAD_HEADROOM - 1.0) * max(model_bytes, 0))


def whole_model_fits(free_device_bytes: int, model_bytes: int) -> bool:
    """True when the whole model plus activation headroom fits in the usable memory.

    The test of full_load, and of model_offload too: it uploads the whole model while
    the model runs.
    """
    return model_bytes * AUTO_FULL_LOAD_HEADROOM <= auto_usable_bytes(free_device_bytes)


def auto_budget_bytes(free_device_bytes: int, model_bytes: int) -> int:
    """The VRAM budget auto gives a model that does not fit whole: the usable memory less
    the same activation headroom full_load keeps.  Below the model size whenever
    full_load was refused (model * headroom > usable)."""
    return max(0, auto_usable_bytes(free_device_bytes) - activation_headroom_bytes(model_bytes))


def choose_auto(
    *,
    free_device_bytes: int,
    model_bytes: int,
    largest_block_bytes: int,
    nonblock_bytes: int,
    host_ram_bytes: int | None,
    prefetch: int = 1,
    has_blocks: bool = True,
) -> AutoChoice:
    """Decide full_load / budget / sequential / model_offload for one model.

    * full_load when the model plus activation headroom (15% of the model) fits in free
      memory less the reserve;
    * else budget, with the free memory less the reserve less that same activation
      headroom (so everything resident never leaves less room for activations than
      full_load would), when that budget holds at least the streaming minimum plus one
      resident block;
    * else sequential (streams every block);
    * a model without repeated blocks cannot stream: model_offload, which uploads the
      whole model while it runs; the reason then warns that it does not fit.
    """
    def g(b):
        return f"{b / GIB:.2f} GiB"

    reserve = auto_reserve_bytes(free_device_bytes)
    usable = auto_usable_bytes(free_device_bytes)
    headroom = activation_headroom_bytes(model_bytes)
    facts = f"free {g(free_device_bytes)}, reserve {g(reserve)}, model {g(model_bytes)}"
    if whole_model_fits(free_device_bytes, model_bytes):
        return AutoChoice("full_load", None, f"model fits: {facts}")
    if not has_blocks:
        return AutoChoice(
            "model_offload",
            None,
            f"model does not fit and has no repeated blocks to stream: {facts}; warning: model_offload uploads "
            f"the whole model ({g(model_bytes)}) while it runs, and it plus {g(headroom)} of activation headroom "
            f"exceeds the usable {g(usable)}: expect out-of-memory errors",
        )
    minimum = min_streaming_bytes(nonblock_bytes, largest_block_bytes, prefetch)
    budget = auto_budget_bytes(free_device_bytes, model_bytes)
    ram_note = ""
    if host_ram_bytes is not None and host_ram_bytes < model_bytes:
        ram_note = f"; warning: host RAM {g(host_ram_bytes)} is below the model size, pinning will be partial"
    if budget >= minimum + largest_block_bytes:
        return AutoChoice(
            "budget",
            int(budget),
            f"model does not fit, budget {g(budget)} (usable {g(usable)} less {g(headroom)} of activation "
            f"headroom) keeps part resident: {facts}{ram_note}",
        )
    return AutoChoice(
        "sequential",
        None,
        f"model does not fit and free memory less {g(headroom)} of activation headroom leaves no room for "
        f"resident blocks (streaming minimum {g(minimum)}): {facts}{ram_note}",
    )
