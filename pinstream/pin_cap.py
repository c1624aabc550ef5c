"""One pinning cap for the whole process: every PinStream model pins within what the
others left. A model gives its share back when it is detached or dropped."""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref

from . import modes as _modes

# Every handle not yet detached (weakly: a dropped model's handle leaves by itself).
_REGISTRY_LOCK = threading.Lock()
_LIVE_HANDLES: weakref.WeakSet = weakref.WeakSet()


def track(handle) -> None:
    with _REGISTRY_LOCK:
        _LIVE_HANDLES.add(handle)


def untrack(handle) -> None:
    with _REGISTRY_LOCK:
        _LIVE_HANDLES.discard(handle)


def live_handles() -> list:
    with _REGISTRY_LOCK:
        return [h for h in _LIVE_HANDLES if not h.detached]


def host_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - psutil is optional here
        return None


def pinned_bytes_in_use() -> int:
    """Host bytes pinned by this process's PinStream models (the handles not detached)."""
    return sum(h.pinned_bytes for h in live_handles())


def default_pin_cap_bytes() -> int:
    """Pinning cap for all of a process's models together: PINSTREAM_PIN_CAP_GB, else 95% of
    RAM (45% on Windows); -1 when RAM is unknown."""
    raw = os.environ.get("PINSTREAM_PIN_CAP_GB", "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise _modes.ModeError(f"PINSTREAM_PIN_CAP_GB={raw!r} is not a number of GiB") from None
        if not math.isfinite(value) or value < 0:
            raise _modes.ModeError(f"PINSTREAM_PIN_CAP_GB must be a finite number >= 0, got {raw!r}")
        return int(value * 1024**3)
    ram = host_ram_bytes()
    if ram is None:
        return -1
    return int(ram * (0.45 if sys.platform == "win32" else 0.95))


def available_pin_bytes(pinned_elsewhere: int = 0) -> int:
    """What the pinning cap (:func:`default_pin_cap_bytes`) leaves for another model: the cap
    less the bytes the live PinStream models have pinned and ``pinned_elsewhere`` (pinned
    memory PinStream does not own, such as ComfyUI's own pins). -1 when there is no cap."""
    cap = default_pin_cap_bytes()
    if cap < 0:
        return -1
    return max(0, cap - pinned_bytes_in_use() - max(0, int(pinned_elsewhere)))


def available_host_bytes() -> int:
    """What the pinning cap leaves of host RAM for another model's weights: the cap less
    every byte the live PinStream models hold in RAM, pinned or not (-1 when there is no
    cap). The disk tier's automatic host budget."""
    cap = default_pin_cap_bytes()
    if cap < 0:
        return -1
    return max(0, cap - sum(h.host_bytes for h in live_handles()))
