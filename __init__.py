"""PinStream as a ComfyUI custom node pack (the folder goes in ComfyUI/custom_nodes).

Outside ComfyUI (tests, `python -m pinstream`) importing this folder does nothing:
the ComfyUI adapter is loaded only when ComfyUI's modules are present.
"""

import importlib.util as _ilu
import os as _os
import sys as _sys

_HERE = _os.path.dirname(_os.path.abspath(__file__))
if _HERE not in _sys.path:
    _sys.path.insert(0, _HERE)  # so `import pinstream` finds the engine next to this file

# The frontend extension that shows each PinStream node's text in the node (web/js/).
# ComfyUI's loader reads WEB_DIRECTORY before it looks for the classic mappings or the V3
# comfy_entrypoint, so one name serves both export styles.
WEB_DIRECTORY = "./web"

if _ilu.find_spec("comfy") is not None and _ilu.find_spec("folder_paths") is not None:
    try:
        from .comfy_nodes import exports as _exports
    except ImportError:  # loaded as a top-level module (not a package)
        from comfy_nodes import exports as _exports
    globals().update(_exports())
    __all__ = ["WEB_DIRECTORY"] + [k for k in ("comfy_entrypoint", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")
                                   if k in globals()]
