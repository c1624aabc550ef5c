"""The example workflows: they parse, use only nodes that exist (PinStream's or
ComfyUI's own), connect matching types, and carry valid widget values."""

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import harness

ns = harness.load_comfyui()

from comfy_nodes.classic import NODE_CLASS_MAPPINGS as PS_NODES

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")


def _server_stub():
    """comfy_extras modules import server.PromptServer (aiohttp) only to send UI events;
    the tests import them for their node definitions, so a stand-in is enough."""
    try:
        import server  # noqa: F401
    except Exception:  # noqa: BLE001
        import types

        stub = types.ModuleType("server")

        class PromptServer:
            instance = None

        stub.PromptServer = PromptServer
        sys.modules["server"] = stub


def _v3_classes():
    """node_id -> node class for ComfyUI's own extra nodes (comfy_extras)."""
    _server_stub()
    out = {}
    extras = Path(ns.root) / "comfy_extras"
    for path in sorted(extras.glob("nodes_*.py")):
        text = path.read_text(errors="ignore")
        if "ComfyNode" not in text and "NODE_CLASS_MAPPINGS" not in text:
            continue
        try:
            mod = importlib.import_module(f"comfy_extras.{path.stem}")
        except Exception:  # noqa: BLE001 - an extra whose optional deps are missing
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and hasattr(obj, "define_schema") and obj.__module__ == mod.__name__:
                try:
                    out[obj.define_schema().node_id] = obj
                except Exception:  # noqa: BLE001
                    pass
        for name, cls in getattr(mod, "NODE_CLASS_MAPPINGS", {}).items():
            out.setdefault(name, cls)
    return out


V3 = _v3_classes()

# Nodes of the packs whose pipelines PinStream manages (not on PyPI). With the pack's checkout
# named by its variable, its own classes are used; otherwise their widgets as the pack defines
# them (name, kind; multiline text boxes marked), which the local run with the pack checks.
PACKS = {"FLASHPORTRAIT_PATH": {
    "FlashPortraitFeatureExtractor": [("source_fps", "FLOAT"), ("context_size", "INT"), ("context_overlap", "INT")],
    "FlashPortraitSampler": [("prompt", "STRING*"), ("negative_prompt", "STRING*"), ("seed", "INT"), ("steps", "INT"),
                             ("cfg_scale", "FLOAT"), ("guidance_scale", "FLOAT"), ("text_cfg_scale", "FLOAT"),
                             ("emo_cfg_scale", "FLOAT"), ("max_size", "INT"), ("shift", "FLOAT"),
                             ("context_size", "INT"), ("context_overlap", "INT")],
}, "WANVIDEOWRAPPER_PATH": {
    "WanVideoModelLoader": [("model", "COMBO"), ("base_precision", "COMBO"), ("quantization", "COMBO"),
                            ("load_device", "COMBO"), ("attention_mode", "COMBO")],
    "LoadWanVideoT5TextEncoder": [("model_name", "COMBO"), ("precision", "COMBO"), ("load_device", "COMBO"),
                                  ("quantization", "COMBO")],
    "WanVideoTextEncode": [("positive_prompt", "STRING*"), ("negative_prompt", "STRING*"), ("force_offload", "BOOLEAN")],
    "WanVideoEmptyEmbeds": [("width", "INT"), ("height", "INT"), ("num_frames", "INT")],
    "WanVideoSampler": [("steps", "INT"), ("cfg", "FLOAT"), ("shift", "FLOAT"), ("seed", "INT"),
                        ("force_offload", "BOOLEAN"), ("scheduler", "COMBO"), ("riflex_freq_index", "INT"),
                        ("denoise_strength", "FLOAT")],
    "WanVideoVAELoader": [("model_name", "COMBO"), ("precision", "COMBO")],
    "WanVideoDecode": [("enable_vae_tiling", "BOOLEAN"), ("tile_x", "INT"), ("tile_y", "INT"),
                       ("tile_stride_x", "INT"), ("tile_stride_y", "INT")],
}}
_PACK_CLASSES = {}


def _pack_class(node_type):
    """The pack's own class for node_type when its checkout is named, else None."""
    for var, nodes in PACKS.items():
        if node_type not in nodes or not os.environ.get(var):
            continue
        if var not in _PACK_CLASSES:
            path = os.environ[var]
            import importlib.machinery
            import types

            for name in ("onnx", "onnxruntime"):  # FlashPortrait's face detection; its node classes do not use them
                if name not in sys.modules and importlib.util.find_spec(name) is None:
                    stub = types.ModuleType(name)
                    stub.InferenceSession = object
                    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
                    sys.modules[name] = stub
            spec = importlib.util.spec_from_file_location(f"pack_{var.lower()}", os.path.join(path, "__init__.py"),
                                                          submodule_search_locations=[path])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            _PACK_CLASSES[var] = mod.NODE_CLASS_MAPPINGS
        return _PACK_CLASSES[var].get(node_type)
    return None


def _recorded(node_type):
    return next((nodes[node_type] for nodes in PACKS.values() if node_type in nodes), None)


def _widgets(node_type):
    """[(name, kind, options_or_None, min, max)] of widget inputs, in UI order."""
    cls = (PS_NODES.get(node_type) or ns.nodes.NODE_CLASS_MAPPINGS.get(node_type) or V3.get(node_type)
           or _pack_class(node_type))
    if cls is None and _recorded(node_type):
        return [(name, kind.rstrip("*"), None, None, None) for name, kind in _recorded(node_type)]
    assert cls is not None, f"node {node_type!r} exists neither in PinStream nor in ComfyUI {ns.version}"
    out = []
    if hasattr(cls, "INPUT_TYPES"):
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, value in spec.get(section, {}).items():
                kind = value[0]
                opts = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
                if isinstance(kind, (list, tuple)):
                    out.append((name, "COMBO", list(kind), None, None))
                elif kind == "COMBO":
                    out.append((name, "COMBO", opts.get("options"), None, None))
                elif kind in WIDGET_KINDS and not opts.get("forceInput"):
                    out.append((name, kind, None, opts.get("min"), opts.get("max")))
        return out
    schema = cls.define_schema()
    for inp in schema.inputs:
        io_type = getattr(inp, "io_type", None) or type(inp).__qualname__
        kind = str(io_type).upper()
        if kind in WIDGET_KINDS and not getattr(inp, "force_input", False):
            out.append((inp.id, kind, getattr(inp, "options", None), getattr(inp, "min", None),
                        getattr(inp, "max", None)))
    return out


def _is_file_option(value):
    return isinstance(value, str) and value.rsplit(".", 1)[-1] in ("safetensors", "pth", "ckpt", "png", "jpg",
                                                                   "gguf", "pt", "bin")


def _check_widgets(node, widgets=None):
    values = list(node.get("widgets_values", []))
    for name, kind, options, lo, hi in (_widgets(node["type"]) if widgets is None else widgets):
        assert values, f"{node['type']} #{node['id']}: no value for widget {name}"
        v = values.pop(0)
        if kind == "COMBO":
            if options and not _is_file_option(v):
                assert v in options, f"{node['type']}.{name} = {v!r} not in {options[:12]}"
            if (node["type"], name) in (("LoadImage", "image"), ("LoadVideo", "file")):
                values.pop(0) if values and values[0] == "image" else None  # upload widget
        elif kind == "INT":
            assert isinstance(v, int) and not isinstance(v, bool), (node["type"], name, v)
            assert (lo is None or v >= lo) and (hi is None or v <= hi), (node["type"], name, v)
            if name in SEED_NAMES:
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        elif kind == "FLOAT":
            assert isinstance(v, (int, float)) and not isinstance(v, bool), (node["type"], name, v)
            assert (lo is None or v >= lo) and (hi is None or v <= hi), (node["type"], name, v)
        elif kind == "BOOLEAN":
            assert isinstance(v, bool), (node["type"], name, v)
        elif kind == "STRING":
            assert isinstance(v, str), (node["type"], name, v)
    assert not values, f"{node['type']} #{node['id']}: {len(values)} widget values left over: {values}"


def test_there_are_the_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"sdxl_pinstream.json", "flux_dev_pinstream.json", "wan21_t2v_14b_pinstream.json",
            "wan22_i2v_a14b_two_experts_pinstream.json", "flashportrait_pinstream.json",
            "wanvideowrapper_t2v_14b_pinstream.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert wf["last_node_id"] == max(nodes)
    links = {lnk[0]: lnk for lnk in wf["links"]}
    uses_pinstream = False
    for node in wf["nodes"]:
        uses_pinstream |= node["type"].startswith("PinStream")
        _check_widgets(node)
        for slot, inp in enumerate(node.get("inputs", [])):
            if inp.get("link") is None:
                continue
            lid, src, src_slot, dst, dst_slot, typ = links[inp["link"]]
            assert dst == node["id"] and dst_slot == slot
            out = nodes[src]["outputs"][src_slot]
            assert lid in out["links"]
            assert inp["type"] in ("*", typ) and out["type"] == typ, (node["type"], inp["name"], typ)
    assert uses_pinstream
    # Every PinStream loader picks a mode, and the mode is one that exists.
    for node in wf["nodes"]:
        if node["type"].startswith("PinStreamLoad") or node["type"].startswith("PinStreamOffload"):
            assert any(v in ("auto", "full_load", "model_offload", "sequential", "budget")
                       for v in node["widgets_values"])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_saved_before_ram_budget_gb_keep_their_widget_values(path):
    """ram_budget_gb is the last widget of every PinStream loader and offload node, so a
    workflow saved before it existed (these, without their last value) gives each saved value
    to the same widget as before; the frontend leaves the new one at its default, 0 (no
    limit). The browser test loads such a workflow into the real frontend."""
    nodes = [n for n in json.loads(path.read_text())["nodes"]
             if any(name == "ram_budget_gb" for name, *_ in _widgets(n["type"]))]
    assert nodes, path.name
    for node in nodes:
        widgets = _widgets(node["type"])
        assert widgets[-1][0] == "ram_budget_gb" and [w[0] for w in widgets].count("ram_budget_gb") == 1, widgets
        assert node["widgets_values"][-1] == 0.0, node
        _check_widgets(dict(node, widgets_values=node["widgets_values"][:-1]), widgets[:-1])


def test_committed_workflows_match_the_generator():
    sys.path.insert(0, str(ROOT / "workflows"))
    import make_workflows

    for name, wf in make_workflows.WORKFLOWS.items():
        assert json.loads((ROOT / "workflows" / name).read_text()) == json.loads(json.dumps(wf)), name


# ---- what the frontend makes of them: model downloads, layout -----------------------------------

# Loaders and the models folder their file widgets read (folder_paths names).
LOADER_FOLDERS = {
    "PinStreamLoadCheckpoint": "checkpoints", "PinStreamLoadDiffusionModel": "diffusion_models",
    "PinStreamLoadCLIP": "text_encoders", "PinStreamLoadVAE": "vae", "CheckpointLoaderSimple": "checkpoints",
    "UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders",
    "VAELoader": "vae", "CLIPVisionLoader": "clip_vision", "WanVideoModelLoader": "diffusion_models",
    "LoadWanVideoT5TextEncoder": "text_encoders", "WanVideoVAELoader": "vae",
}
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar is drawn above its pos


def _file_widget_values(node):
    values = list(node["widgets_values"])
    return [values[i] for i, (_name, kind, *_rest) in enumerate(_widgets(node["type"]))
            if kind == "COMBO" and _is_file_option(values[i])]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_loader_nodes_name_their_models_with_a_download(path):
    """properties.models on every loader: ComfyUI's missing-models dialog lists these (name,
    folder, URL) and offers a download when the URL is on huggingface.co and the name ends in
    .safetensors (the frontend's isModelDownloadable)."""
    from urllib.parse import urlparse

    wf = json.loads(path.read_text())
    loaders = [n for n in wf["nodes"] if n["type"] in LOADER_FOLDERS]
    # FlashPortrait's pipe loads fixed folders of models/flash_portrait, downloaded by its loader
    assert loaders or any(n["type"] == "PinStreamLoadFlashPortrait" for n in wf["nodes"]), path.name
    for node in loaders:
        files = _file_widget_values(node)
        models = node["properties"].get("models")
        assert models, f"{node['type']} #{node['id']} carries no properties.models"
        assert [m["name"] for m in models] == files, (node["type"], models, files)
        for m in models:
            assert set(m) == {"name", "url", "directory"}, m
            assert m["directory"] == LOADER_FOLDERS[node["type"]], (node["type"], m)
            assert m["directory"] in ns.folder_paths.folder_names_and_paths, m
            url = urlparse(m["url"])
            assert url.scheme == "https" and url.netloc == "huggingface.co", m
            assert "/resolve/main/" in url.path and url.path.endswith("/" + m["name"]), m
            assert m["name"].endswith(".safetensors"), m


def _boxes(wf):
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in wf["nodes"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_two_nodes_overlap(path):
    """Each node's box, from its saved pos and size plus the title bar above pos, is clear of
    every other node's."""
    boxes = _boxes(json.loads(path.read_text()))
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ax0, ay0, ax1, ay1 = boxes[a]
            bx0, by0, bx1, by1 = boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{path.name}: nodes {a} and {b} overlap"


def _multiline(node_type):
    cls = (PS_NODES.get(node_type) or ns.nodes.NODE_CLASS_MAPPINGS.get(node_type) or V3.get(node_type)
           or _pack_class(node_type))
    if cls is None and _recorded(node_type):
        return {name for name, kind in _recorded(node_type) if kind.endswith("*")}
    spec = cls.INPUT_TYPES() if hasattr(cls, "INPUT_TYPES") else {}
    return {name for section in spec.values() if isinstance(section, dict) for name, value in section.items()
            if len(value) > 1 and isinstance(value[1], dict) and value[1].get("multiline")}


def _litegraph_min_height(node):
    """LiteGraph's computeSize height for the node: 20 per slot row, 24 per widget (54 for a
    multiline text box), plus a margin (measured in the 1.32 and 1.47 frontends). A node saved
    smaller is enlarged when the workflow loads, over whatever lies below it."""
    multiline = _multiline(node["type"])
    widgets = _widgets(node["type"])
    n = sum(54 if name in multiline else 24 for name, *_ in widgets)
    n += 24 * sum(1 for name, *_ in widgets if name in SEED_NAMES)  # control_after_generate
    n += 24 * (node["type"] in ("LoadImage", "LoadVideo"))  # its upload button
    slots = max(len(node.get("inputs", [])), len(node.get("outputs", [])), 1)
    return 20 * slots + n + (14 if n else 6)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_saved_sizes_hold_each_nodes_slots_and_widgets(path):
    for node in json.loads(path.read_text())["nodes"]:
        need = _litegraph_min_height(node)
        assert node["size"][1] >= need, \
            f"{path.name}: {node['type']} #{node['id']} is {node['size'][1]} tall, needs {need}"
