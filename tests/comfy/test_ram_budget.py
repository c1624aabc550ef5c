"""The disk tier through the nodes (ram_budget_gb), in-process against real ComfyUI source
(--cpu, host engine).

A model loaded with a ram_budget_gb smaller than itself keeps its blocks beyond the budget
on disk, in the file the loader read (where they are there as stored) or in a spill file
(PINSTREAM_SPILL_DIR: a folder of this test run, see conftest.py), and reads them back
whenever they are needed. Every comparison is against ComfyUI's own loader and sampler on
the same tiny file: the same latent, bit for bit, with blocks on disk.
"""

import gc
import math
import os
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_nodes as T  # files, references, the loader helper
from test_nodes import tiny_text_encoder_configs  # noqa: F401 - a fixture

import torch

from comfy_nodes import nodes as N
from comfy_nodes import patcher as P

ns, pl, mm, f, name_of = T.ns, T.pl, T.mm, T.f, T.name_of
GIB = 1024**3
DISK_MODES = ["sequential", "budget", "model_offload", "full_load"]


def _discovery(kind_or_path):
    from pinstream.discovery import discover_blocks

    core = T._core_unet(kind_or_path) if isinstance(kind_or_path, str) else pl.load_unet(ns, kind_or_path)
    d = discover_blocks(core.model.diffusion_model, min_fraction=0.2)
    del core
    return d


def _half_ram(d) -> float:
    """A host budget (GiB) that holds the part outside the blocks and about half of the blocks:
    the others live on disk."""
    return (d.nonblock_bytes + sum(d.block_bytes) // 2) / GIB


def _vram_budget(d) -> float:
    """A VRAM budget (GiB) that keeps about half of the blocks resident (as test_nodes')."""
    ring = 2 * d.largest_block_bytes
    return (d.nonblock_bytes + ring + max(sum(d.block_bytes) - ring, 0) // 2 + 8192) / GIB


def _disk(model):
    return model.pinstream.handle.stats()


def _in_spill_dir(path) -> bool:
    return Path(path).parent == Path(os.environ["PINSTREAM_SPILL_DIR"])


def _section(text, label):
    """The lines of the Stats report about ``label`` (its line and the indented ones below)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(f"{label}: ")]
    assert len(starts) == 1, (label, text)
    out = [lines[starts[0]]]
    for ln in lines[starts[0] + 1:]:
        if not ln.startswith("  "):
            break
        out.append(ln)
    return "\n".join(out)


@pytest.mark.parametrize("mode", DISK_MODES)
@pytest.mark.parametrize("kind", ["wan21_t2v", "flux", "sd15_unet"])
def test_loader_with_blocks_on_disk_gives_cores_latent(kind, mode):
    ref = T._ref(kind)
    d = _discovery(kind)
    ram = _half_ram(d)
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (model,), msg = T._ps_unet(kind, mode, ram_budget=ram)
    assert isinstance(model, P.PinStreamPatcherMixin), msg
    h = model.pinstream.handle
    assert h.mode.name == mode, msg
    s = _disk(model)
    assert s["host_budget_bytes"] == int(ram * GIB)
    assert 0 < s["disk_blocks"] < len(d.block_bytes), s["block_on_disk"]
    # the loader named its file: the blocks on disk are read from there, nothing is written
    assert s["disk_block_bytes"] > 0 and s["source_block_bytes"] == s["disk_block_bytes"], s["source_note"]
    assert s["spill_bytes"] == 0 and not s["spill_path"] and not os.listdir(os.environ["PINSTREAM_SPILL_DIR"])
    # what lives on disk is not held in RAM: the model's RAM is within its budget
    assert s["host_bytes"] <= s["host_budget_bytes"] < h.model_bytes
    assert f"{s['disk_blocks']} blocks" in msg and "on disk beyond the host budget" in msg, msg
    assert msg.endswith(", read from the model's own file"), msg
    out = T._sample(kind, model)
    assert torch.equal(out, ref), f"{kind} {mode}: max diff {(out - ref).abs().max().item()}"
    read = _disk(model)["disk_bytes"]
    assert read >= s["disk_block_bytes"]  # every block on disk was read
    # unloaded and loaded again: read from disk again, still the same latent
    mm.unload_all_models()
    assert torch.equal(T._sample(kind, model), ref)
    assert _disk(model)["disk_bytes"] > read
    mm.unload_all_models()


@pytest.mark.usefixtures("tiny_text_encoder_configs")
def test_other_loaders_and_offload_nodes_take_ram_budget_gb():
    """Load Checkpoint, Load CLIP, PinStream Offload (Model) and (CLIP) with blocks on disk:
    the same outputs as core."""
    # Load Checkpoint: its diffusion model
    core_model = ns.sd.load_checkpoint_guess_config(str(f("sd15_ckpt")), output_vae=True, output_clip=True)[0]
    ref = T._sample("sd15_ckpt", core_model)
    ram = _half_ram(_discovery_of(core_model))
    del core_model
    mm.unload_all_models()
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (model, _clip, _vae), msg = N.run_load_checkpoint(name_of("checkpoints", f("sd15_ckpt")), "sequential", 0.0,
                                                          1, True, "auto", ram)
    s = _disk(model)
    assert s["disk_blocks"] > 0 and s["source_block_bytes"] == s["disk_block_bytes"], (msg, s["source_note"])
    assert torch.equal(T._sample("sd15_ckpt", model), ref)
    mm.unload_all_models()

    # PinStream Offload (Model) on a core loader's model: it knows no file, its blocks on disk
    # go to a spill file, which goes with the model
    ref = T._ref("wan21_t2v")
    ram = _half_ram(_discovery("wan21_t2v"))
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (model,), msg = N.run_offload_model(T._core_unet("wan21_t2v"), "budget", T._budget_for("wan21_t2v"), 1, True,
                                            ram_budget_gb=ram)
    s = _disk(model)
    assert s["disk_blocks"] > 0 and s["source_block_bytes"] == 0 and msg.endswith(", in a spill file"), msg
    assert _in_spill_dir(s["spill_path"]) and os.path.getsize(s["spill_path"]) >= s["spill_bytes"] >= \
        s["disk_block_bytes"]
    assert torch.equal(T._sample("wan21_t2v", model), ref)
    mm.unload_all_models()
    del model
    gc.collect()
    assert not os.path.exists(s["spill_path"])  # the spill file goes with its model

    # Load CLIP and PinStream Offload (CLIP): umt5's blocks on disk
    core = ns.sd.load_clip(ckpt_paths=[str(f("umt5"))], clip_type=ns.sd.CLIPType.WAN)
    ref = pl.encode_text(ns, core, "a cat on a boat")[0][0]
    from pinstream.discovery import discover_blocks

    d = discover_blocks(core.patcher.model, min_fraction=0.2)
    assert d.has_blocks
    ram = _half_ram(d)
    mm.unload_all_models()
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (clip,), msg = N.run_load_clip(name_of("text_encoders", f("umt5")), "wan", "sequential", 0.0, 1, True,
                                       ram_budget_gb=ram)
    assert _disk(clip.patcher)["disk_blocks"] > 0, msg
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], ref)
    mm.unload_all_models()
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (clip,), msg = N.run_offload_clip(ns.sd.load_clip(ckpt_paths=[str(f("umt5"))], clip_type=ns.sd.CLIPType.WAN),
                                          "model_offload", 0.0, 1, True, ram_budget_gb=ram)
    assert _disk(clip.patcher)["disk_blocks"] > 0, msg
    assert torch.equal(pl.encode_text(ns, clip, "a cat on a boat")[0][0], ref)
    mm.unload_all_models()


def _discovery_of(patcher):
    from pinstream.discovery import discover_blocks

    return discover_blocks(patcher.model.diffusion_model, min_fraction=0.2)


@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_lora_on_a_model_with_blocks_on_disk_equals_core(mode):
    """The LoRA is written into the blocks on disk: those read from the model's own file move
    to a spill file (the model's file is never written); the clone without it still reads the
    plain weights."""
    import hashlib

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    before = digest(f("wan21_t2v"))
    lora = f("wan_lora")
    core_l, _ = pl.apply_lora(ns, pl.load_unet(ns, f("wan21_t2v")), lora, strength_model=0.8)
    ref = T._sample("wan21_t2v", core_l)
    plain_ref = T._ref("wan21_t2v")
    assert not torch.equal(ref, plain_ref)
    del core_l
    mm.unload_all_models()
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (model,), _ = T._ps_unet("wan21_t2v", mode, ram_budget=_half_ram(_discovery("wan21_t2v")))
    s = _disk(model)
    assert s["disk_blocks"] > 0 and s["source_block_bytes"] == s["disk_block_bytes"] and s["spill_bytes"] == 0
    model_l, _ = pl.apply_lora(ns, model, lora, strength_model=0.8)
    assert torch.equal(T._sample("wan21_t2v", model_l), ref)
    s = _disk(model)
    assert s["spill_bytes"] > 0 and s["source_block_bytes"] < s["disk_block_bytes"]  # patched: in the spill file
    (text,), _ = N.run_stats()
    assert f"; spill file {s['spill_path']} ({N._gb(s['spill_bytes'])})" in text, text
    mm.unload_all_models()
    assert torch.equal(T._sample("wan21_t2v", model), plain_ref)
    assert torch.equal(T._sample("wan21_t2v", model_l), ref)
    mm.unload_all_models()
    assert digest(f("wan21_t2v")) == before


def test_a_new_ram_budget_rebuilds_the_model():
    """PinStream Offload (Model) run again on the model it manages (ComfyUI re-runs the node
    when an input changed, on the cached model) with another ram_budget_gb: the model is
    offloaded again under it; back to 0, nothing is on disk."""
    ref = T._ref("wan21_t2v")
    base = T._core_unet("wan21_t2v")
    (model,), _ = N.run_offload_model(base, "sequential", 0.0, 1, True)
    first = model.pinstream.handle
    assert first.stats()["host_budget_bytes"] == -1 and first.stats()["disk_blocks"] == 0
    ram = _half_ram(_discovery("wan21_t2v"))
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (model,), msg = N.run_offload_model(base, "sequential", 0.0, 1, True, ram_budget_gb=ram)
    second = model.pinstream.handle
    assert second is not first and first.detached
    assert second.stats()["host_budget_bytes"] == int(ram * GIB) and second.stats()["disk_blocks"] > 0, msg
    assert torch.equal(T._sample("wan21_t2v", model), ref)
    mm.unload_all_models()
    (model,), _ = N.run_offload_model(base, "sequential", 0.0, 1, True, ram_budget_gb=0.0)
    third = model.pinstream.handle
    assert third is not second and second.detached
    assert third.stats()["host_budget_bytes"] == -1 and third.stats()["disk_blocks"] == 0
    assert torch.equal(T._sample("wan21_t2v", model), ref)
    mm.unload_all_models()


@pytest.mark.parametrize("mode", ["sequential", "budget", "model_offload"])
def test_two_experts_with_a_ram_budget_smaller_than_both(mode):
    """Wan 2.2's two experts, each with a ram_budget_gb: the RAM the two may hold together is
    less than both weigh, and each keeps blocks on disk; they take turns for two runs and
    give core's latent."""
    hi_path, lo_path = f("wan22_t2v")
    ref, pos, neg = pl.two_experts_reference(ns, hi_path, lo_path)
    mm.unload_all_models()
    d = _discovery(hi_path)
    ram = _half_ram(d)
    experts = []
    for path in (hi_path, lo_path):
        budget = _vram_budget(d) if mode == "budget" else 0.0
        with pytest.warns(RuntimeWarning, match="live on disk"):
            (m,), msg = N.run_load_diffusion_model(name_of("diffusion_models", path), "default", mode, budget, 1, True,
                                                   "auto", ram)
        experts.append(m)
    hi, lo = experts
    sizes = [m.pinstream.handle.model_bytes for m in experts]
    assert 2 * ram * GIB < sum(sizes), (ram, sizes)
    for m in experts:
        s = _disk(m)
        assert s["disk_blocks"] > 0 and s["host_bytes"] <= s["host_budget_bytes"] == int(ram * GIB)
    for _ in range(2):
        out = pl.sample_two_experts(ns, hi, lo, pos, neg, pl.wan_latent(32, 32, 5), steps=4, switch_at=2)
        assert torch.equal(out, ref), f"{mode}: max diff {(out - ref).abs().max().item()}"
    for m in experts:
        assert _disk(m)["disk_bytes"] >= _disk(m)["disk_block_bytes"]  # both read their blocks from disk
    mm.unload_all_models()


@pytest.mark.parametrize("mode", ["sequential", "budget"])
def test_two_experts_share_the_ram_and_the_one_waiting_lives_on_disk(mode, monkeypatch):
    """Wan 2.2's two experts with automatic RAM budgets in a process whose pinning cap holds
    one and not both: the second expert loads with blocks on disk; from each expert's
    second pass the RAM follows it (the other's blocks go to disk, read from its own file:
    nothing written), and every run gives core's latent. The steps left come from the
    sampler: where an expert's second step is its last (4 steps switching at 2), taking RAM
    would gain it nothing, and nothing moves."""
    from pinstream.handle import OffloadHandle

    # as where the disk sets the pace (with these tiny models it may keep up, and then nothing moves)
    monkeypatch.setattr(OffloadHandle, "_disk_excess_ms", staticmethod(lambda st, prev: float("inf")))
    hi_path, lo_path = f("wan22_t2v")
    ref, pos, neg = pl.two_experts_reference(ns, hi_path, lo_path)
    ref8 = pl.two_experts_reference(ns, hi_path, lo_path, steps=8, switch_at=4)[0]
    mm.unload_all_models()
    gc.collect()
    from pinstream import pin_cap
    from pinstream.modes import read_ring_bytes

    # models earlier tests left alive (in a cache) keep their RAM here and give none
    strays = pin_cap.live_handles()
    for h in strays:
        monkeypatch.setattr(h, "_host_budget_given", h.host_bytes)
    d = _discovery(hi_path)
    size = d.nonblock_bytes + sum(d.block_bytes)
    # one expert whole, and of the other the part outside its blocks and its read ring (prefetch 1):
    # not both
    cap = size + d.nonblock_bytes + read_ring_bytes(1, d.largest_block_bytes) + d.largest_block_bytes // 4
    assert cap < 2 * size
    cap += P.comfy_pinned_bytes() + sum(h.ram_bytes for h in strays)
    monkeypatch.setenv("PINSTREAM_PIN_CAP_GB", str(cap / GIB))
    experts = []
    for path in (hi_path, lo_path):
        budget = _vram_budget(d) if mode == "budget" else 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the second: blocks on disk
            (m,), _msg = N.run_load_diffusion_model(name_of("diffusion_models", path), "default", mode, budget, 1,
                                                    True, "auto", 0.0)
        experts.append(m)
    hi, lo = experts
    hh, lh = hi.pinstream.handle, lo.pinstream.handle
    assert hh.stats()["disk_blocks"] == 0 and lh.stats()["disk_blocks"] > 0
    out = pl.sample_two_experts(ns, hi, lo, pos, neg, pl.wan_latent(32, 32, 5), steps=4, switch_at=2)
    assert torch.equal(out, ref), f"{mode}: max diff {(out - ref).abs().max().item()}"
    assert hh.ram_moves["moves"] == lh.ram_moves["moves"] == 0  # each one's second step was its last
    assert hh.stats()["disk_blocks"] == 0 and lh.stats()["disk_blocks"] > 0
    for run in range(2):
        out = pl.sample_two_experts(ns, hi, lo, pos, neg, pl.wan_latent(32, 32, 5), steps=8, switch_at=4)
        assert torch.equal(out, ref8), f"{mode} run {run}: max diff {(out - ref8).abs().max().item()}"
        # the low-noise expert ran last: RAM is its, the high-noise one waits on disk
        assert lh.stats()["disk_blocks"] == 0 and hh.stats()["disk_blocks"] > 0
        assert hh.host_bytes + lh.host_bytes + sum(h.ram_bytes for h in strays) <= cap
    assert hh.ram_moves["to_disk_bytes"] > 0 and hh.ram_moves["to_ram_bytes"] > 0  # and back in the second run
    for s in (hh.stats(), lh.stats()):
        assert s["spill_bytes"] == 0  # both read from their own files: nothing written
    text = N.run_stats()[1]
    assert "RAM moves last run:" in text and "host RAM follows the model that runs" in text, text
    mm.unload_all_models()


def test_stats_show_the_disk_lines_only_for_a_model_with_blocks_on_disk(monkeypatch):
    ref = T._ref("wan21_t2v")
    on_disk = ck_copy("tiny_wan2.1_t2v_on_disk.safetensors")
    in_ram = ck_copy("tiny_wan2.1_t2v_in_ram.safetensors")
    gc.collect()
    # all blocks on disk (a budget below the part outside the blocks: as little RAM as can be)
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (disk_model,), _ = N.run_load_diffusion_model(on_disk, "default", "sequential", 0.0, 1, True, "auto", 1e-6)
    (ram_model,), _ = N.run_load_diffusion_model(in_ram, "default", "sequential", 0.0, 1, True)
    N.run_stats()  # the next report's "last run" counts from here
    assert torch.equal(T._sample("wan21_t2v", ram_model), ref)
    assert torch.equal(T._sample("wan21_t2v", disk_model), ref)
    assert disk_model.pinstream.handle.loaded  # (its read ring is pinned while it is loaded)
    s = _disk(disk_model)
    assert s["disk_blocks"] == len(disk_model.pinstream.handle.discovery.blocks) and s["passes"] == 2
    assert s["disk_over_bytes"] > 0 and s["read_ring_bytes"] > 0 and s["disk_bytes"] > 0
    # the report, and the figures it was made from (reads ahead may still land after s)
    rows = []
    collect = N.collect_stats
    monkeypatch.setattr(N, "collect_stats", lambda st: rows.append(collect(st)) or rows[-1])
    (text,), _ = N.run_stats()
    row = next(r for r in rows if r["label"] == on_disk)
    lines = _section(text, on_disk).splitlines()
    assert s["source_block_bytes"] == s["disk_block_bytes"] and not s["spill_path"]
    assert lines[2] == (f"  on disk: {s['disk_blocks']} blocks, {N._gb(s['disk_block_bytes'])}, beyond the host "
                        f"budget of {N._gb(s['host_budget_bytes'])} ({N._gb(s['disk_over_bytes'])} above it stays in "
                        f"RAM: what cannot go to disk); {N._gb(s['source_block_bytes'])} read from the model's own "
                        f"file" + (f"; read {s['disk_how']}" if s["disk_how"] else "")
                        + f", read ring {N._gb(row['read_ring_bytes'])}"), lines
    assert lines[3] == (f"  disk last run: {N._gb(row['disk_bytes_per_step'])} read per step (2 steps, "
                        f"{N._gb(row['disk_bytes_last_run'])} with the reads at load), disk {row['disk_gbps']:.2f} "
                        f"GB/s, host waited {row['disk_wait_ms_last_run']:.1f} ms for it"), lines
    assert len(lines) == 4, lines
    # per step: the bytes read from disk since the previous report over the forward passes; in
    # sequential every block on disk is read at each step, but for what the read ring holds
    # (a read ahead into the next run's first blocks counts too)
    assert row["disk_steps_last_run"] == 2 and row["disk_bytes_last_run"] >= s["disk_bytes"]
    per_step = row["disk_bytes_per_step"]
    assert per_step == row["disk_bytes_last_run"] / 2
    ring = row["read_ring_bytes"]
    assert s["disk_block_bytes"] - ring <= per_step <= s["disk_block_bytes"] + ring / 2, (per_step, ring, s)
    # the disk's rate: every byte read over the time the reader was busy
    assert row["disk_gbps"] > 0 and math.isclose(row["disk_gbps"], s["disk_bytes_total"] / (s["disk_busy_ms"] * 1e6),
                                                 rel_tol=0.5)
    # the model held in RAM: no disk lines
    plain = _section(text, in_ram)
    assert "disk" not in plain and len(plain.splitlines()) == 2, plain
    # unloaded, and nothing run since the last report: still on disk, nothing read
    mm.unload_all_models()
    N.run_stats()
    (text,), _ = N.run_stats()
    lines = _section(text, on_disk).splitlines()
    assert lines[2].startswith(f"  on disk: {s['disk_blocks']} blocks, ") and lines[3:] == ["  disk last run: nothing read"]


def ck_copy(name):
    """The tiny Wan T2V file under another name (its own label in the Stats report)."""
    import checkpoints as ck

    path = ck.write_wan21_t2v(name=name)
    T.harness.refresh_model_lists(ns)
    return name_of("diffusion_models", path)


def test_a_spill_folder_that_cannot_be_made_keeps_the_model_in_ram_and_says_why(monkeypatch, tmp_path):
    """Weights converted at load (weight_dtype fp8) are not in the file as stored: their
    blocks would go to a spill file, whose folder cannot be made here."""
    import folder_paths

    name = ck_copy("tiny_wan2.1_t2v_no_spill.safetensors")
    core = pl.load_unet(ns, folder_paths.get_full_path_or_raise("diffusion_models", name), "fp8_e4m3fn")
    ref = T._sample("wan21_t2v", core)
    del core
    mm.unload_all_models()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PINSTREAM_SPILL_DIR", str(blocker / "spill"))
    with pytest.warns(RuntimeWarning, match="blocks meant for disk stay in RAM"):
        (model,), msg = N.run_load_diffusion_model(name, "fp8_e4m3fn", "sequential", 0.0, 1, True, "auto", 0.001)
    s = _disk(model)
    assert s["disk_blocks"] == 0 and str(blocker) in s["spill_error"]
    assert f"blocks meant for disk stay in RAM: {s['spill_error']}" in msg, msg
    assert torch.equal(T._sample("wan21_t2v", model), ref)
    (text,), _ = N.run_stats()
    section = _section(text, name)
    assert section.splitlines()[-1] == f"  blocks meant for disk stay in RAM: {s['spill_error']}", section
    assert "on disk:" not in section
    mm.unload_all_models()


@pytest.mark.parametrize("bad", [-1.0, -0.01, float("nan"), float("inf"), "lots", True])
def test_a_bad_ram_budget_is_a_clear_error(bad):
    name = name_of("diffusion_models", f("wan21_t2v"))
    want = "ram_budget_gb must be a (finite )?number (of GiB )?>= 0"
    with pytest.raises(ValueError, match=want):
        N.run_load_diffusion_model(name, "default", "sequential", 0.0, 1, True, "auto", bad)
    with pytest.raises(ValueError, match=want):
        N.run_offload_model(T._core_unet("wan21_t2v"), "sequential", 0.0, 1, True, ram_budget_gb=bad)
    with pytest.raises(ValueError, match=want):
        N.run_offload_pipeline(torch.nn.Linear(2, 2), "", 0.0, 1, True, ram_budget_gb=bad)
    if isinstance(bad, float):
        assert f"got {bad!r}" in str(pytest.raises(ValueError, N.check_ram_budget, bad).value)


def test_ram_budget_gb_is_the_last_input_of_every_offload_node_and_optional():
    """Optional and last: a workflow saved before it existed gives its widget values to the
    same widgets (the frontend leaves the new trailing one at its default), and an API prompt
    without it passes validation (the node function's default is 0: automatic)."""
    import inspect

    import comfy_nodes

    offload_nodes = [s for s in N.SPECS if s.node_id != "PinStreamStats"]
    assert len(offload_nodes) == 9
    classic = comfy_nodes.exports(prefer_v3=False)["NODE_CLASS_MAPPINGS"]
    for spec in offload_nodes:
        assert spec.inputs[-1].name == "ram_budget_gb" and spec.inputs[-1].optional, spec.node_id
        assert inspect.signature(spec.run).parameters["ram_budget_gb"].default == 0.0, spec.node_id
        types = classic[spec.node_id].INPUT_TYPES()
        assert "ram_budget_gb" not in types["required"], spec.node_id
        kind, opts = types["optional"]["ram_budget_gb"]
        assert list(types["optional"])[-1] == "ram_budget_gb"
        assert kind == "FLOAT" and opts["default"] == 0.0 and opts["min"] == 0.0 and opts["step"] == 0.01, opts
        assert "disk" in opts["tooltip"] and "0 = automatic" in opts["tooltip"], opts
    if comfy_nodes.has_v3_api():
        from comfy_nodes import v3

        for node in v3.NODES:
            schema = node.define_schema()
            if schema.node_id == "PinStreamStats":
                continue
            last = schema.inputs[-1]
            assert last.id == "ram_budget_gb" and last.optional and last.default == 0.0 and last.step == 0.01


def test_the_pipeline_node_gives_the_denoiser_its_ram_budget():
    """PinStream Offload (Pipeline): ram_budget_gb is the denoiser's; the other components stay
    in RAM; another budget on the cached pipe offloads the denoiser again."""
    import test_pipeline_offload as TP

    from comfy_nodes import pipeline_offload as PO

    torch.manual_seed(5)
    pipe = {"transformer": TP.Net(n=6, dim=64), "vae": TP.Net(n=4, dim=64)}
    x = torch.randn(2, 64)
    refs = {n: m(x) for n, m in pipe.items()}
    from pinstream.discovery import discover_blocks

    ram = _half_ram(discover_blocks(pipe["transformer"], min_fraction=0.2))
    with pytest.warns(RuntimeWarning, match="live on disk"):
        _, text = TP.node(pipe, "", ram_budget_gb=ram)
    h = PO.managed_components(pipe)
    tr = h["transformer"].stats()
    assert tr["disk_blocks"] > 0 and tr["host_budget_bytes"] == int(ram * GIB), text
    assert h["vae"].stats()["disk_blocks"] == 0 and h["vae"].stats()["host_budget_bytes"] == -1
    assert "pipe.transformer: sequential" in text and "on disk beyond the host budget" in text, text
    for _ in range(2):
        assert all(torch.equal(pipe[n](x), refs[n]) for n in ("transformer", "vae"))
    assert h["transformer"].stats()["disk_bytes"] > 0
    # the same inputs again: unchanged; another budget: the transformer is offloaded again
    _, text = TP.node(pipe, "", ram_budget_gb=ram)
    assert "transformer: sequential" in text and text.count("(unchanged)") == 2, text
    _, text = TP.node(pipe, "", ram_budget_gb=0.0)
    again = PO.managed_components(pipe)
    assert again["transformer"] is not h["transformer"] and again["vae"] is h["vae"]
    assert again["transformer"].stats()["disk_blocks"] == 0
    assert torch.equal(pipe["transformer"](x), refs["transformer"])
    PO.release_pipeline(pipe)


def test_flashportrait_loader_takes_ram_budget_gb(monkeypatch):
    """FlashPortrait Loader (PinStream): the transformer's blocks on disk, the rest in RAM."""
    import test_flashportrait_loader as TF

    from comfy_nodes.pipeline_offload import managed_components, release_pipeline

    ref_frames, ref_proj = TF.T.sample_flash_portrait(TF.T.flash_portrait_pipe())
    TF._stand_in_pack(monkeypatch)
    TF._gpu_elsewhere(monkeypatch)
    from pinstream.discovery import discover_blocks

    ram = _half_ram(discover_blocks(TF.T.flash_portrait_pipe()["transformer"], min_fraction=0.2))
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (pipe, _face), msg = N.run_load_flashportrait("bf16", False, "", 0.0, 1, True, "auto", ram)
    handles = managed_components(pipe)
    assert handles["transformer"].stats()["disk_blocks"] > 0, msg
    assert all(h.stats()["disk_blocks"] == 0 for n, h in handles.items() if n != "transformer")
    frames, proj = TF.T.sample_flash_portrait(pipe)
    assert torch.equal(frames, ref_frames) and torch.equal(proj, ref_proj)
    release_pipeline(pipe)


def test_wanvideo_node_takes_ram_budget_gb():
    """PinStream Offload (WanVideo Model): the wrapper's sampler, blocks on disk."""
    import test_wanvideo as TW

    ref = TW.wrapper_sampler(TW.wanvideo_model())
    mm.unload_all_models()
    with pytest.warns(RuntimeWarning, match="live on disk"):
        (new,), msg = N.run_offload_wanvideo_model(TW.wanvideo_model(), "sequential", 0.0, 1, True,
                                                   ram_budget_gb=_half_ram(_discovery("wan21_t2v")))
    assert new.model.pinstream_state.handle.stats()["disk_blocks"] > 0, msg
    for _ in range(2):
        assert torch.equal(TW.wrapper_sampler(new), ref)
    mm.unload_all_models()
