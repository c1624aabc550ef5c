"""The PinStream nodes as classic ComfyUI node classes (NODE_CLASS_MAPPINGS)."""

from __future__ import annotations

from .nodes import SPECS, NodeSpec


class AnyType(str):
    """The type of an input that takes any connection. ComfyUI before 0.8 has no "*"
    wildcard in its prompt validation, which compares types with ``!=``: this string
    is never unequal to another."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


_TYPES = {"model": "MODEL", "clip": "CLIP", "wanvideo_model": "WANVIDEOMODEL", "any": AnyType("*")}


def _input(spec):
    opts = {"tooltip": spec.tooltip}
    if spec.kind == "combo":
        values = spec.options() if spec.options else []
        if spec.default is not None:
            opts["default"] = spec.default
        return (values, opts)
    if spec.kind in ("float", "int"):
        opts.update({k: v for k, v in (("default", spec.default), ("min", spec.min), ("max", spec.max),
                                       ("step", spec.step)) if v is not None})
        return ("FLOAT" if spec.kind == "float" else "INT", opts)
    if spec.kind == "bool":
        opts["default"] = spec.default
        return ("BOOLEAN", opts)
    if spec.kind == "string":
        opts.update(multiline=True, default=spec.default or "")
        return ("STRING", opts)
    return (_TYPES[spec.kind], opts)


def make_class(spec: NodeSpec):
    def INPUT_TYPES(cls):
        req = {s.name: _input(s) for s in spec.inputs if not s.optional}
        opt = {s.name: _input(s) for s in spec.inputs if s.optional}
        out = {"required": req}
        if opt:
            out["optional"] = opt
        return out

    def run(self, **kwargs):
        result, message = spec.run(**kwargs)
        return {"ui": {"text": [message]}, "result": result}

    return type(spec.node_id, (), {
        "INPUT_TYPES": classmethod(INPUT_TYPES),
        "RETURN_TYPES": tuple(_TYPES["any"] if t == "*" else t for t, _ in spec.outputs),
        "RETURN_NAMES": tuple(n for _, n in spec.outputs),
        "FUNCTION": "run",
        "CATEGORY": "PinStream",
        "DESCRIPTION": spec.description,
        "OUTPUT_NODE": spec.output_node,
        # Newer ComfyUI (after 0.8) sends a cached node's text again when the page was reloaded.
        "HAS_INTERMEDIATE_OUTPUT": not spec.output_node,
        "run": run,
    })


NODE_CLASS_MAPPINGS = {s.node_id: make_class(s) for s in SPECS}
NODE_DISPLAY_NAME_MAPPINGS = {s.node_id: s.display_name for s in SPECS}
