"""PinStream loaded the way a ComfyUI server loads a custom node pack, and API-format
prompts run through ComfyUI's own ``execution.validate_prompt`` + ``PromptExecutor``
(the code behind ``POST /prompt``), in-process on the CPU.

- The repository root goes through ``nodes.load_custom_node`` (async or sync,
  depending on the ComfyUI version), so ``__init__.py``'s ``comfy_entrypoint`` (V3) or
  ``NODE_CLASS_MAPPINGS`` (classic) is registered into ``nodes.NODE_CLASS_MAPPINGS``.
  ``EmptyHunyuanLatentVideo`` comes from ``comfy_extras/nodes_hunyuan.py``, loaded the
  way ``init_builtin_extra_nodes`` does.
- One graph, Wan 2.1 T2V text-to-video: diffusion loader -> CLIPLoader(umt5, wan) ->
  CLIPTextEncode x2 -> EmptyHunyuanLatentVideo -> KSampler (2 steps, fixed seed) ->
  SaveLatent + PinStream Stats. The reference is the same graph with core's UNETLoader;
  the latents are read back from the files SaveLatent wrote and compared bit for bit.
- One executor serves several prompts, as in a server: a mode change on the PinStream
  loader must re-execute it (and everything downstream) while the text encoding stays
  cached; an interrupt during sampling must be reported as such, and the next prompt,
  which reuses the cached PinStream model, must still equal core.
- The classic node classes (what the pack registers on a ComfyUI without the V3 API)
  go through the same executor too (budget mode), and the Stats node's "anything"
  input must pass this ComfyUI's link type validation.

Everything this module registers (node classes, loaded modules, the text encoder
override, the output folder) is put back at the end.
"""

import copy
import gc
import inspect
import math
import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import harness

ns = harness.load_comfyui()

import checkpoints as ck
import execution  # ComfyUI's executor (imports nodes, comfy_execution, comfy_api)
import pipeline as pl
import torch
from bench.comfyui_prompt import PromptServerStandIn
from bench.comfyui_prompt import await_if_coroutine as _run
from safetensors.torch import load_file

mm = ns.model_management
nodes = ns.nodes
REPO_ROOT = harness.REPO_ROOT

PS_LOADER = "PinStreamLoadDiffusionModel"
PS_IDS = {
    PS_LOADER: "Load Diffusion Model (PinStream)",
    "PinStreamLoadCheckpoint": "Load Checkpoint (PinStream)",
    "PinStreamLoadCLIP": "Load CLIP (PinStream)",
    "PinStreamLoadVAE": "Load VAE (PinStream)",
    "PinStreamOffloadModel": "PinStream Offload (Model)",
    "PinStreamOffloadCLIP": "PinStream Offload (CLIP)",
    "PinStreamOffloadWanVideoModel": "PinStream Offload (WanVideo Model)",
    "PinStreamLoadFlashPortrait": "FlashPortrait Loader (PinStream)",
    "PinStreamOffloadPipeline": "PinStream Offload (Pipeline)",
    "PinStreamStats": "PinStream Stats",
}
CLIENT_ID = "pinstream-test-client"
SEED, STEPS, CFG = 7, 2, 2.0


# ---- ComfyUI plumbing ------------------------------------------------------------------------

class FakeServer(PromptServerStandIn):
    """The stand-in for server.PromptServer, with what the tests read of the events."""

    def of(self, event):
        return [d for e, d in self.events if e == event]

    def executed_nodes(self):
        """Nodes that ran this prompt ("executing" is sent only for nodes not served from cache)."""
        return [d["node"] for d in self.of("executing") if d.get("node") is not None]


def new_executor():
    server = FakeServer()
    params = inspect.signature(execution.PromptExecutor.__init__).parameters
    kw = {}
    # main.py's default cache: releases with --cache-classic (0.1x and newer) default to the
    # RAM-pressure cache, with headrooms from the machine's RAM; older ones to the classic one.
    ram_pressure = hasattr(ns.args, "cache_classic") and hasattr(getattr(execution, "CacheType", None),
                                                                    "RAM_PRESSURE")
    if "cache_type" in params and hasattr(execution, "CacheType"):
        kw["cache_type"] = execution.CacheType.RAM_PRESSURE if ram_pressure else execution.CacheType.CLASSIC
    if "cache_args" in params:
        ram = getattr(ns.args, "cache_ram", 0)
        if ram_pressure:  # as main.py's prompt_worker computes them (GB)
            total_gb = mm.total_ram / 1024.0
            kw["cache_args"] = {"lru": 0, "ram": min(10.0, max(2.0, total_gb * 0.10)),
                                "ram_inactive": min(128.0, total_gb)}
        else:  # newer releases read "ram" and "ram_inactive" as numbers
            kw["cache_args"] = {"lru": getattr(ns.args, "cache_lru", 0),
                                "ram": ram if isinstance(ram, (int, float)) else 0, "ram_inactive": 0}
    elif "cache_size" in params:
        kw["cache_size"] = getattr(ns.args, "cache_lru", 0)
    return execution.PromptExecutor(server, **kw), server


def validate(prompt):
    """execution.validate_prompt across versions: (prompt), (prompt_id, prompt) or
    (prompt_id, prompt, partial_execution_list); sync or async. Returns (ok, error,
    outputs, node_errors)."""
    params = list(inspect.signature(execution.validate_prompt).parameters)
    if params[0] == "prompt":
        args = (prompt,)
    elif len(params) >= 3:
        args = (str(uuid.uuid4()), prompt, None)
    else:
        args = (str(uuid.uuid4()), prompt)
    return _run(execution.validate_prompt(*args))


def run_prompt(executor, server, prompt):
    """What the server's prompt worker does with a queued, validated prompt."""
    ok, error, outputs, node_errors = validate(prompt)
    assert ok, (error, node_errors)
    assert sorted(outputs) == sorted(k for k in ("7", "8") if k in prompt), outputs  # SaveLatent, PinStream Stats
    server.events.clear()
    prompt_id = str(uuid.uuid4())
    if hasattr(executor, "execute_async"):
        _run(executor.execute_async(prompt, prompt_id, {"client_id": CLIENT_ID}, outputs))
    else:
        executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, outputs)
    return prompt_id


def saved_latent(executor, node_id="7"):
    """The LATENT SaveLatent wrote, read back from the output folder it reported."""
    import folder_paths

    entries = executor.history_result["outputs"][node_id]["latents"]
    assert len(entries) == 1, entries
    e = entries[0]
    path = Path(folder_paths.get_output_directory()) / e["subfolder"] / e["filename"]
    return load_file(str(path))["latent_tensor"]


def stats_text(executor, node_id="8"):
    ui = executor.history_result["outputs"][node_id]
    return "\n".join(str(t) for t in ui["text"])


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files():
    unet = ck.write_wan21_t2v()
    unet_b = ck.write_wan21_t2v(name="tiny_wan2.1_t2v_b.safetensors", seed=ck.SEEDS["wan_t2v"] + 1)
    te = ck.write_umt5_xxl()
    harness.refresh_model_lists(ns)
    return {"unet": pl._name_in(ns, "diffusion_models", unet), "unet_b": pl._name_in(ns, "diffusion_models", unet_b),
            "te": pl._name_in(ns, "text_encoders", te)}


@pytest.fixture(scope="module")
def pack(files):
    """Load PinStream (and core's nodes_hunyuan extra) with ComfyUI's custom node loader;
    put ComfyUI's registries and sys.modules back afterwards."""
    saved = {name: dict(getattr(nodes, name)) for name in
             ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "LOADED_MODULE_DIRS", "EXTENSION_WEB_DIRS")
             if isinstance(getattr(nodes, name, None), dict)}
    modules_before = set(sys.modules)
    try:
        loaded = _run(nodes.load_custom_node(str(REPO_ROOT), module_parent="custom_nodes"))
        extras = os.path.join(str(ns.root), "comfy_extras", "nodes_hunyuan.py")
        extras_loaded = _run(nodes.load_custom_node(extras, module_parent="comfy_extras"))
        module = sys.modules.get(str(REPO_ROOT).replace(".", "_x_"))
        yield {"loaded": loaded, "extras_loaded": extras_loaded, "module": module}
    finally:
        for name, value in saved.items():
            d = getattr(nodes, name)
            d.clear()
            d.update(value)
        pack_prefix = str(REPO_ROOT).replace(".", "_x_")
        for m in set(sys.modules) - modules_before:
            if m == pack_prefix or m.startswith(pack_prefix + ".") or m.endswith("nodes_hunyuan"):
                del sys.modules[m]
        gc.collect()


@pytest.fixture
def tiny_umt5(monkeypatch):
    """The tiny umt5 loads only with a config override (its sizes are not the real
    ones). CLIPLoader passes its own model_options, so the override is merged in."""
    orig = ns.sd.load_clip

    def load_clip(*args, model_options=None, **kwargs):
        opts = dict(model_options or {})
        opts.update(copy.deepcopy(ck.UMT5_MODEL_OPTIONS))
        return orig(*args, model_options=opts, **kwargs)

    monkeypatch.setattr(ns.sd, "load_clip", load_clip)


@pytest.fixture
def output_dir(tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


@pytest.fixture
def clean_models():
    yield
    mm.interrupt_current_processing(False)
    mm.unload_all_models()
    gc.collect()


# ---- the graph -------------------------------------------------------------------------------

def core_loader(files):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": files["unet"], "weight_dtype": "default"}}


def ps_loader(files, mode, budget=0.0, prefetch=1, ram_budget=None):
    """The PinStream loader's node; without ram_budget_gb (optional) unless given, as prompts
    saved before it existed."""
    loader = {"class_type": PS_LOADER, "inputs": {
        "unet_name": files["unet"], "weight_dtype": "default", "mode": mode, "vram_budget_gb": budget,
        "prefetch_blocks": prefetch, "pin_memory": True, "transfer_dtype": "auto"}}
    if ram_budget is not None:
        loader["inputs"]["ram_budget_gb"] = ram_budget
    return loader


def wan_t2v_prompt(files, loader, prefix):
    return {
        "1": loader,
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": files["te"], "type": "wan"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat sailing a small boat", "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, static", "clip": ["2", 0]}},
        "5": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": pl.SAMPLER,
            "scheduler": pl.SCHEDULER, "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
        "8": {"class_type": "PinStreamStats", "inputs": {"anything": ["6", 0]}},
    }


def assert_succeeded(executor, server):
    errors = server.of("execution_error")
    assert executor.success and not errors, errors[:1]
    assert server.of("execution_success"), [e for e, _ in server.events]


def reference_latent(executor, server, files, stats=True):
    prompt = wan_t2v_prompt(files, core_loader(files), "core")
    if not stats:
        del prompt["8"]
    run_prompt(executor, server, prompt)
    assert_succeeded(executor, server)
    ref = saved_latent(executor)
    assert ref.shape == (1, 16, 2, 4, 4) and torch.isfinite(ref).all() and ref.abs().sum() > 0
    return ref


def stats_line(text, unet_name):
    lines = [ln for ln in text.splitlines() if ln.startswith(f"{unet_name}: ")]
    assert lines, text
    return lines[-1]


# ---- tests -----------------------------------------------------------------------------------

def test_comfyui_loader_registers_the_pack(pack):
    assert pack["loaded"] is True, "nodes.load_custom_node refused the PinStream folder (see the log)"
    assert pack["extras_loaded"] is True
    module = pack["module"]
    assert module is not None
    from comfy_nodes import use_v3

    # V3 only where submission validates V3 combo values: from ComfyUI 0.8.0 on (0.3.64 and
    # 0.3.75 check a combo only in the classic form, so they get the classic nodes).
    assert use_v3() == (ns.version_tuple >= (0, 8, 0)), ns.version
    exported = {k for k in ("comfy_entrypoint", "NODE_CLASS_MAPPINGS") if hasattr(module, k)}
    assert exported == ({"comfy_entrypoint"} if use_v3() else {"NODE_CLASS_MAPPINGS"})
    for node_id, display in PS_IDS.items():
        cls = nodes.NODE_CLASS_MAPPINGS.get(node_id)
        assert cls is not None, (node_id, sorted(k for k in nodes.NODE_CLASS_MAPPINGS if "PinStream" in k))
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id) == display
        assert cls.RELATIVE_PYTHON_MODULE == f"custom_nodes.{REPO_ROOT.name}"
        # registered from the copy the loader imported, not from the tests' own import
        assert cls.__module__.startswith(str(REPO_ROOT).replace(".", "_x_")), cls.__module__
        assert hasattr(cls, "GET_SCHEMA") == use_v3()
        if use_v3():
            assert cls.GET_SCHEMA().node_id == node_id
    assert "EmptyHunyuanLatentVideo" in nodes.NODE_CLASS_MAPPINGS
    # The frontend extension: ComfyUI serves web/ under /extensions/<folder name>/ for either
    # export style (server.py lists EXTENSION_WEB_DIRS' *.js at /extensions).
    web = Path(nodes.EXTENSION_WEB_DIRS[REPO_ROOT.name])
    assert web == REPO_ROOT / "web" and (web / "js" / "pinstream.js").is_file()


def test_a_bad_mode_is_rejected_at_submission(pack, files):
    """A mode that does not exist is refused by ComfyUI's prompt validation (what POST /prompt
    runs before queueing), naming the input, the value and the allowed modes; nothing runs."""
    prompt = wan_t2v_prompt(files, ps_loader(files, "turbo"), "unused")
    ok, error, outputs, node_errors = validate(prompt)
    assert not ok and "1" in node_errors, (error, node_errors)
    errs = node_errors["1"]["errors"]
    bad = [e for e in errs if e["type"] == "value_not_in_list"]
    assert bad, errs
    details = bad[0]["details"]
    assert "mode" in details and "'turbo'" in details, details
    for mode in ("auto", "full_load", "model_offload", "sequential", "budget"):
        assert mode in details, details


def test_v3_nodes_are_exported_only_where_submission_checks_their_combos(pack, files, monkeypatch):
    """Why the pack picks: the V3 classes, registered in place of what the pack exported, let a
    bad mode through submission exactly where v3_combo_values_validated() says ComfyUI does not
    check V3 combos (0.3.64, 0.3.75), and are refused where it does (0.8.0, 0.30.0)."""
    import importlib

    from comfy_nodes import has_v3_api, v3_combo_values_validated

    if not has_v3_api():
        pytest.skip(f"ComfyUI {ns.version} has no V3 node API")
    v3 = importlib.import_module(str(REPO_ROOT).replace(".", "_x_") + ".comfy_nodes.v3")
    for cls in v3.NODES:
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, cls.GET_SCHEMA().node_id, cls)
    ok, error, outputs, node_errors = validate(wan_t2v_prompt(files, ps_loader(files, "turbo"), "unused"))
    assert ok == (not v3_combo_values_validated()), (ns.version, error, node_errors)
    ok, error, outputs, node_errors = validate(wan_t2v_prompt(files, ps_loader(files, "sequential"), "unused"))
    assert ok, (error, node_errors)


def _js_round(value, step):
    """The frontend's FLOAT widget: a typed value is rounded to the widget's `round`, which
    defaults to its step (Math.round(v / round) * round)."""
    return math.floor(value / step + 0.5) * step


def test_vram_budget_takes_hundredths(pack, files):
    import importlib

    from comfy_nodes import has_v3_api
    from comfy_nodes.nodes import check_offload_inputs

    prefix = str(REPO_ROOT).replace(".", "_x_")
    classes = [importlib.import_module(prefix + ".comfy_nodes.classic").NODE_CLASS_MAPPINGS[PS_LOADER]]
    if has_v3_api():
        classes.append(next(c for c in importlib.import_module(prefix + ".comfy_nodes.v3").NODES
                            if c.GET_SCHEMA().node_id == PS_LOADER))
    for cls in classes:
        kind, opts = cls.INPUT_TYPES()["required"]["vram_budget_gb"]
        assert kind == "FLOAT" and opts["step"] == 0.01, (cls, opts)
        step = opts.get("round") or opts["step"]
        assert _js_round(0.05, step) == pytest.approx(0.05, abs=1e-12), (cls, step)
    ok, error, outputs, node_errors = validate(wan_t2v_prompt(files, ps_loader(files, "budget", budget=0.05),
                                                              "unused"))
    assert ok, (error, node_errors)
    assert check_offload_inputs("budget", 0.05, 1, True).vram_budget_gb == 0.05


def test_prompt_equals_core_and_a_mode_change_reexecutes_the_loader(pack, files, tiny_umt5, output_dir,
                                                                    clean_models):
    executor, server = new_executor()
    ref = reference_latent(executor, server, files)

    def run_mode(mode):
        """The graph with the PinStream loader in ``mode``: only the loader and what is
        downstream of it run (text encoding and the empty latent come from the cache), and
        the latent equals core's."""
        run_prompt(executor, server, wan_t2v_prompt(files, ps_loader(files, mode), f"ps_{mode}"))
        assert_succeeded(executor, server)
        ran = server.executed_nodes()
        assert {"1", "6", "7", "8"} <= set(ran) and not {"2", "3", "4", "5"} & set(ran), ran
        out = saved_latent(executor)
        assert torch.equal(out, ref), f"{mode}: max diff {(out - ref).abs().max().item()}"
        line = stats_line(stats_text(executor), files["unet"])
        assert f": {mode} (" in line, line

    run_mode("sequential")
    executed = {d["node"]: d["output"] for d in server.of("executed")}
    assert "sequential" in str(executed["8"]["text"])  # the ui the browser gets
    # Same graph, another mode: the loader's inputs changed, so it runs again, and so does
    # everything downstream of it; nothing upstream of the sampler but the loader does.
    run_mode("model_offload")

    # The identical prompt again: everything is served from the cache.
    run_prompt(executor, server, wan_t2v_prompt(files, ps_loader(files, "model_offload"), "ps_model_offload"))
    assert_succeeded(executor, server)
    assert server.executed_nodes() == [], server.executed_nodes()


def test_interrupt_during_sampling_then_next_prompt_equals_core(pack, files, tiny_umt5, output_dir, clean_models):
    executor, server = new_executor()
    ref = reference_latent(executor, server, files)
    prompt = wan_t2v_prompt(files, ps_loader(files, "sequential", prefetch=2), "ps_interrupt")

    # "Cancel" pressed while the third transformer block of the first step runs:
    # POST /interrupt sets the flag (nodes.interrupt_processing); ComfyUI's next check of
    # it raises (per op in 0.3.7x+, the progress hook in older versions) - done right here.
    calls = {"n": 0, "fired": 0}

    def interrupt(module, _args):
        if type(module).__name__ != "WanAttentionBlock":
            return
        calls["n"] += 1
        if calls["n"] == 3 and not calls["fired"]:
            calls["fired"] += 1
            nodes.interrupt_processing(True)
            mm.throw_exception_if_processing_interrupted()

    hook = torch.nn.modules.module.register_module_forward_pre_hook(interrupt)
    try:
        run_prompt(executor, server, prompt)
    finally:
        hook.remove()
    assert calls["fired"] == 1, calls
    assert not executor.success
    interrupted = server.of("execution_interrupted")
    assert len(interrupted) == 1 and interrupted[0]["node_id"] == "6", server.events
    assert not server.of("execution_error"), server.of("execution_error")[:1]
    assert "7" not in executor.history_result["outputs"]

    # The next prompt (the server clears the flag) reuses the cached PinStream model.
    run_prompt(executor, server, prompt)
    assert_succeeded(executor, server)
    ran = server.executed_nodes()
    assert "1" not in ran and {"6", "7", "8"} <= set(ran), ran
    out = saved_latent(executor)
    assert torch.equal(out, ref), f"after interrupt: max diff {(out - ref).abs().max().item()}"


def _budget_gib(files):
    """A budget that keeps the non-block part, the ring and about half of the other
    blocks resident, the rest streamed (as test_nodes does)."""
    import folder_paths

    from pinstream.discovery import discover_blocks

    core = pl.load_unet(ns, folder_paths.get_full_path_or_raise("diffusion_models", files["unet"]))
    d = discover_blocks(core.model.diffusion_model, min_fraction=0.2)
    ring = 2 * d.largest_block_bytes
    rest = sum(d.block_bytes) - ring
    del core
    return (d.nonblock_bytes + ring + max(rest, 0) // 2 + 8192) / 1024**3


def _classic_pack_classes(monkeypatch):
    """Put the classic NODE_CLASS_MAPPINGS (what the pack registers on a ComfyUI without
    the V3 API) of the copy ComfyUI loaded in place of the V3 classes, for one test."""
    import importlib

    classic = importlib.import_module(str(REPO_ROOT).replace(".", "_x_") + ".comfy_nodes.classic")
    for node_id, cls in classic.NODE_CLASS_MAPPINGS.items():
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, node_id, cls)
    assert not hasattr(nodes.NODE_CLASS_MAPPINGS[PS_LOADER], "GET_SCHEMA")


def test_classic_node_classes_in_the_executor_budget_mode(pack, files, tiny_umt5, output_dir, clean_models,
                                                          monkeypatch):
    """The classic loader run by the executor in budget mode equals core, and its classic
    {"ui", "result"} return reaches the history, the classic Stats node's included."""
    _classic_pack_classes(monkeypatch)
    budget = round(_budget_gib(files), 6)
    executor, server = new_executor()
    ref = reference_latent(executor, server, files, stats=False)
    prompt = wan_t2v_prompt(files, ps_loader(files, "budget", budget=budget), "ps_budget")
    run_prompt(executor, server, prompt)
    assert_succeeded(executor, server)
    out = saved_latent(executor)
    assert torch.equal(out, ref), f"budget: max diff {(out - ref).abs().max().item()}"
    loader_ui = executor.history_result["outputs"]["1"]["text"][0]
    assert ": budget (" in loader_ui and " 0 streamed" not in loader_ui, loader_ui  # part of the model streams
    assert ": budget (" in executor.history_result["outputs"]["8"]["text"][0]


def test_classic_stats_node_accepts_any_connection(pack, files, monkeypatch):
    _classic_pack_classes(monkeypatch)
    prompt = wan_t2v_prompt(files, ps_loader(files, "sequential"), "unused")
    ok, error, outputs, node_errors = validate(prompt)
    assert ok and sorted(outputs) == ["7", "8"], (error, node_errors)


def test_prompts_alternating_two_files_keep_memory_flat(pack, files, tiny_umt5, output_dir, clean_models):
    """A queue of prompts alternating two files through the PinStream loader: each prompt
    drops the previous prompt's model. With the cycle collector off (a busy server never
    idles long enough for ComfyUI's periodic gc.collect()), PinStream's host memory stays
    at what the cached models hold, instead of growing by a model per prompt."""
    from pinstream import _C, pin_cap

    executor, server = new_executor()
    refs = {}
    for key in ("unet", "unet_b"):
        prompt = wan_t2v_prompt(dict(files, unet=files[key]), core_loader(dict(files, unet=files[key])), f"core_{key}")
        run_prompt(executor, server, prompt)
        assert_succeeded(executor, server)
        refs[key] = saved_latent(executor)
    assert not torch.equal(refs["unet"], refs["unet_b"])
    gc.collect()
    base = _C.live_bytes()["host"]
    gc.disable()
    try:
        held = []
        for i in range(8):
            key = ("unet", "unet_b")[i % 2]
            chosen = dict(files, unet=files[key])
            run_prompt(executor, server, wan_t2v_prompt(chosen, ps_loader(chosen, "sequential"), f"ps_{i}"))
            assert_succeeded(executor, server)
            assert torch.equal(saved_latent(executor), refs[key]), i
            held.append(_C.live_bytes()["host"] - base)
        models = [h for h in pin_cap.live_handles()]
        one = max(h.host_bytes for h in models)
    finally:
        gc.enable()
    assert len(models) <= 2, len(models)
    # at most the models the cache still holds (this prompt's, and the previous one's
    # until the next prompt replaces it): the same after eight prompts as after two
    assert max(held) <= 2 * one + 4096, [h / 2**20 for h in held]
    assert held[-1] <= held[1] + 4096, [h / 2**20 for h in held]


def test_ram_budget_puts_blocks_on_disk_and_equals_core(pack, files, tiny_umt5, output_dir, clean_models):
    """ram_budget_gb in a prompt: the loader's text and PinStream Stats say what lives on disk,
    the latent equals core's; a negative one is refused at submission, naming the input."""
    import folder_paths

    from pinstream.discovery import discover_blocks

    core = pl.load_unet(ns, folder_paths.get_full_path_or_raise("diffusion_models", files["unet"]))
    d = discover_blocks(core.model.diffusion_model, min_fraction=0.2)
    del core
    ram = round((d.nonblock_bytes + sum(d.block_bytes) // 2) / 1024**3, 6)  # about half of the blocks on disk
    executor, server = new_executor()
    ref = reference_latent(executor, server, files)
    run_prompt(executor, server, wan_t2v_prompt(files, ps_loader(files, "sequential", ram_budget=ram), "ps_disk"))
    assert_succeeded(executor, server)
    out = saved_latent(executor)
    assert torch.equal(out, ref), f"max diff {(out - ref).abs().max().item()}"
    loader_ui = executor.history_result["outputs"]["1"]["text"][0]
    assert "on disk beyond the host budget" in loader_ui, loader_ui
    lines = stats_text(executor).splitlines()
    ours = [i for i, ln in enumerate(lines) if ln.startswith(f"{files['unet']}: sequential (")]
    sections = []
    for i in ours:
        sections.append([lines[i]] + [ln for ln in lines[i + 1:i + 5] if ln.startswith("  ")])
    disk = [sec for sec in sections if any(ln.startswith("  on disk: ") for ln in sec)]
    assert disk, lines
    assert any(ln.startswith("  disk last run: ") and " read per step (" in ln for ln in disk[-1]), disk[-1]

    ok, error, outputs, node_errors = validate(wan_t2v_prompt(files, ps_loader(files, "sequential", ram_budget=-1.0),
                                                              "unused"))
    assert not ok and "1" in node_errors, (error, node_errors)
    errs = node_errors["1"]["errors"]
    assert any(e["type"] == "value_smaller_than_min" and "ram_budget_gb" in e["details"] for e in errs), errs
