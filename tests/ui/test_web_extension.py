"""The frontend extension's wiring, without a browser (test_browser.py runs it in one)."""

import re
from pathlib import Path
from urllib.parse import urljoin

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB = REPO_ROOT / "web"
JS = WEB / "js" / "pinstream.js"


def test_the_extension_handles_every_pinstream_node():
    """web/js/pinstream.js lists the nodes whose text it shows: all of comfy_nodes/nodes.py's."""
    specs = re.findall(r'NodeSpec\(\s*"(\w+)"', (REPO_ROOT / "comfy_nodes" / "nodes.py").read_text())
    block = re.search(r"PINSTREAM_NODES = \[(.*?)\];", JS.read_text(), re.S)
    assert block, "PINSTREAM_NODES not found in web/js/pinstream.js"
    listed = re.findall(r'"(\w+)"', block.group(1))
    assert len(specs) == 10 and sorted(listed) == sorted(specs), (specs, listed)


def test_web_folder_holds_only_the_extension_and_imports_resolve():
    """ComfyUI's /extensions lists every .js under WEB_DIRECTORY and the frontend imports each
    one from /extensions/<pack folder>/<path>; the extension's import of the app module must
    then land on /scripts/app.js."""
    assert re.search(r'^WEB_DIRECTORY = "\./web"$', (REPO_ROOT / "__init__.py").read_text(), re.M)
    assert sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*.js")) == ["js/pinstream.js"]
    served = "http://127.0.0.1:8188/extensions/PinStream/" + JS.relative_to(WEB).as_posix()
    imports = re.findall(r'^import .* from "([^"]+)";$', JS.read_text(), re.M)
    assert imports and {urljoin(served, i) for i in imports} == {"http://127.0.0.1:8188/scripts/app.js"}, imports
