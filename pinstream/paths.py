"""Where PinStream keeps files on local disk (no torch: the recommend CLI reads these too)."""

from __future__ import annotations

import os


def _cache_base() -> str:
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def exact_cache_dir(cache_dir: str | None = None) -> str:
    """Where the coded form of compressed weights is cached ("" = no cache)."""
    if cache_dir is not None:
        return str(cache_dir)
    env = os.environ.get("PINSTREAM_CACHE_DIR")
    if env is not None:
        return env.strip()
    return os.path.join(_cache_base(), "pinstream", "exact")


def spill_dir(path: str | None = None) -> str:
    """Where the disk tier writes spill files (blocks beyond a host budget that cannot be
    read from the model's own file): ``path``, else PINSTREAM_SPILL_DIR, else
    $XDG_CACHE_HOME/pinstream/spill or ~/.cache/pinstream/spill."""
    return spill_dir_and_source(path)[0]


def spill_dir_and_source(path: str | None = None) -> tuple[str, str]:
    """:func:`spill_dir` and where it came from."""
    if path:
        return str(path), "given"
    env = os.environ.get("PINSTREAM_SPILL_DIR", "").strip()
    if env:
        return env, "PINSTREAM_SPILL_DIR"
    return os.path.join(_cache_base(), "pinstream", "spill"), "default; PINSTREAM_SPILL_DIR sets another"
