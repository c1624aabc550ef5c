"""PinStream: per-model weight offloading between pinned host RAM and the GPU.

    import pinstream
    handle = pinstream.offload(model, mode="sequential", prefetch=2)
    out = model(x)              # blocks stream through a ring of device slots
    print(handle.stats())
    handle.detach()             # the model is as it was

Modes: full_load, model_offload, sequential, budget, auto (see pinstream.modes).
"""

from .modes import ALIASES, MODES, ModeError, normalize_mode

__version__ = "0.1.0"

__all__ = ["ALIASES", "MODES", "ModeError", "OffloadHandle", "__version__", "handle_of", "normalize_mode",
           "offload"]


def __getattr__(name):
    # Lazy: importing pinstream must not import torch (recommend, start.sh).
    if name in ("offload", "OffloadHandle", "handle_of"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pinstream' has no attribute {name!r}")
