"""install.py's choice between a prebuilt wheel, a source build and the pass-through message.

Every test runs install.py against a copy of the pack in a temporary folder (its ROOT
monkeypatched), so nothing here touches this checkout's pinstream/_C.
"""

import importlib.machinery
import importlib.util
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def load_install(root: Path):
    spec = importlib.util.spec_from_file_location("pinstream_install_under_test", REPO / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.ROOT = root
    mod.WHEEL_FOLDERS = [root / "dist", root / "wheels"]
    return mod


@pytest.fixture
def pack(tmp_path):
    """A copy of the pack's Python side (pinstream/, build_support/) without any _C."""
    root = tmp_path / "pack"
    shutil.copytree(REPO / "pinstream", root / "pinstream", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    shutil.copytree(REPO / "build_support", root / "build_support", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def wanted_label() -> str:
    import torch

    sys.path.insert(0, str(REPO / "build_support"))
    try:
        import pinstream_build_meta as meta
    finally:
        sys.path.pop(0)
    return f"{meta.pinstream_version()}+{meta.torch_label(torch.__version__, torch.version.cuda)}"


def make_wheel(folder: Path, version: str, so_bytes: bytes, py: str = PY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"pinstream-{version}-{py}-{py}-linux_x86_64.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(f"pinstream/_C{importlib.machinery.EXTENSION_SUFFIXES[0]}", so_bytes)
        zf.writestr("pinstream/__init__.py", "")
    return whl


def run_main(mod, argv, monkeypatch):
    monkeypatch.setattr(mod, "ensure_runtime_deps", lambda with_deps: None)
    monkeypatch.delenv("PINSTREAM_WHEEL", raising=False)
    return mod.main(argv)


def test_label_and_cuda_tag():
    sys.path.insert(0, str(REPO / "build_support"))
    try:
        import pinstream_build_meta as meta
    finally:
        sys.path.pop(0)
    assert meta.torch_label("2.11.0+cu130", "13.0") == "torch2.11.0.cu130"
    assert meta.torch_label("2.10.0", "12.8") == "torch2.10.0.cu128"
    assert meta.torch_label("2.11.0+cpu", None) == "torch2.11.0.cpu"


def test_wheels_for_another_torch_or_python_are_refused_with_the_reason(pack, monkeypatch, capsys):
    mod = load_install(pack)
    make_wheel(pack / "dist", "0.1.0+torch2.10.0.cu128", b"not an ELF file")
    make_wheel(pack / "dist", wanted_label(), b"not an ELF file", py="cp39")
    monkeypatch.setattr(mod, "build_from_source", lambda args, torch: 7)  # no real build here
    assert run_main(mod, [], monkeypatch) == 7
    out = capsys.readouterr().out
    assert "torch2.10.0.cu128" in out and f"need {wanted_label()}" in out
    assert "cp39-cp39-linux_x86_64, not this Python and platform" in out
    assert "building from source" in out
    assert not list((pack / "pinstream").glob("_C*.so"))


def test_a_matching_wheel_that_does_not_import_is_undone(pack, monkeypatch, capsys):
    mod = load_install(pack)
    previous = pack / "pinstream" / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    previous.write_bytes(b"the earlier _C")
    whl = make_wheel(pack / "elsewhere", wanted_label(), b"not an ELF file")
    monkeypatch.setattr(mod, "build_from_source", lambda args, torch: 7)
    assert run_main(mod, ["--wheel", str(whl)], monkeypatch) == 7
    out, err = capsys.readouterr()
    assert "does not import" in out
    assert "none of" in err and "building from source instead" in err
    assert previous.read_bytes() == b"the earlier _C"  # put back


@pytest.mark.skipif(not list((REPO / "pinstream").glob("_C*.so")), reason="pinstream._C is not built in this checkout")
def test_a_matching_wheel_gives_the_pack_its_C(pack, monkeypatch, capsys):
    mod = load_install(pack)
    so = sorted((REPO / "pinstream").glob("_C*.so"))[0]
    make_wheel(pack / "dist", wanted_label(), so.read_bytes())
    monkeypatch.setattr(mod, "build_from_source", lambda args, torch: pytest.fail("built from source"))
    assert run_main(mod, ["--cuda", "off"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "import check passed" in out
    assert (pack / "pinstream" / so.name).read_bytes() == so.read_bytes()


def test_without_a_compiler_it_names_what_is_missing_and_the_pass_through(pack, monkeypatch, capsys):
    mod = load_install(pack)
    monkeypatch.setenv("CXX", "false")
    monkeypatch.setattr(mod, "find_nvcc", lambda: None)
    with pytest.raises(SystemExit) as exit_:
        run_main(mod, ["--from-source"], monkeypatch)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "C++17 compiler (CXX=false does not run)" in err and "apt-get install g++" in err
    assert "PASS-THROUGH" in err
    assert "scripts/build_wheel.sh" in err and "--wheel" in err
    import torch

    if torch.version.cuda:
        assert "nvcc, for the CUDA engine" in err
