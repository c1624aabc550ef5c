"""ComfyUI adapter of PinStream: nodes, ModelPatcher integration, stats.

``exports()`` returns the names the pack's ``__init__.py`` publishes: the V3
``comfy_entrypoint`` where the running ComfyUI has ``comfy_api.latest``, else the
classic ``NODE_CLASS_MAPPINGS``; never both (ComfyUI would load only the classic).
"""

from __future__ import annotations

import logging

log = logging.getLogger("PinStream")


def has_v3_api() -> bool:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401

        return hasattr(io, "ComfyNode")
    except Exception:  # noqa: BLE001
        return False


def exports(prefer_v3: bool = True) -> dict:
    from pinstream.native import native_available, native_error

    if not native_available():
        log.warning("PinStream: the native runtime is not built (%s). The nodes load and pass models through "
                    "unchanged; run `python install.py` in the PinStream folder and restart ComfyUI.", native_error())
    if prefer_v3 and has_v3_api():
        from .v3 import comfy_entrypoint

        return {"comfy_entrypoint": comfy_entrypoint}
    from .classic import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    return {"NODE_CLASS_MAPPINGS": NODE_CLASS_MAPPINGS, "NODE_DISPLAY_NAME_MAPPINGS": NODE_DISPLAY_NAME_MAPPINGS}
