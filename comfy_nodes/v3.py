"""The PinStream nodes through ComfyUI's V3 node API (comfy_api.latest)."""

from __future__ import annotations

import dataclasses

from comfy_api.latest import ComfyExtension, io, ui

from .nodes import SPECS, NodeSpec

_WANVIDEOMODEL = io.Custom("WANVIDEOMODEL")  # ComfyUI-WanVideoWrapper's model type
_OUT = {"MODEL": io.Model, "CLIP": io.Clip, "VAE": io.Vae, "STRING": io.String, "WANVIDEOMODEL": _WANVIDEOMODEL,
        "*": io.AnyType}


def _input(spec):
    common = {"tooltip": spec.tooltip, "optional": spec.optional}
    if spec.kind == "combo":
        return io.Combo.Input(spec.name, options=spec.options() if spec.options else [], default=spec.default,
                              **common)
    if spec.kind == "float":
        return io.Float.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, **common)
    if spec.kind == "int":
        return io.Int.Input(spec.name, default=spec.default, min=spec.min, max=spec.max, step=spec.step, **common)
    if spec.kind == "bool":
        return io.Boolean.Input(spec.name, default=spec.default, **common)
    if spec.kind == "string":
        return io.String.Input(spec.name, multiline=True, default=spec.default or "", **common)
    if spec.kind == "model":
        return io.Model.Input(spec.name, **common)
    if spec.kind == "clip":
        return io.Clip.Input(spec.name, **common)
    if spec.kind == "wanvideo_model":
        return _WANVIDEOMODEL.Input(spec.name, **common)
    return io.AnyType.Input(spec.name, **common)


def _schema_fields() -> set:
    try:
        return {f.name for f in dataclasses.fields(io.Schema)}
    except TypeError:
        return set()


def make_node(spec: NodeSpec):
    extra = {}
    if not spec.output_node and "has_intermediate_output" in _schema_fields():
        # The loaders' plan line is shown again (from the cache) after the page is reloaded.
        extra["has_intermediate_output"] = True

    def define_schema(cls):
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category="PinStream",
            description=spec.description,
            inputs=[_input(s) for s in spec.inputs],
            outputs=[(_OUT.get(t) or io.Custom(t)).Output(display_name=n) for t, n in spec.outputs],
            is_output_node=spec.output_node,
            **extra,
        )

    def execute(cls, **kwargs):
        result, message = spec.run(**kwargs)
        return io.NodeOutput(*result, ui=ui.PreviewText(message))

    return type(spec.node_id, (io.ComfyNode,), {
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    })


NODES = [make_node(s) for s in SPECS]


class PinStreamExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ComfyExtension:
    return PinStreamExtension()
