"""Tests of pinstream.discovery.discover_blocks."""

import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fixtures import models as M

from pinstream.discovery import BlockDiscovery, DiscoveryError, discover_blocks


def _tiny(fam, **kw):
    torch.manual_seed(0)
    return M.build(fam, **kw)


def _bytes(module):
    seen = {id(t): t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())}
    return sum(seen.values())


def _check_accounting(model, d: BlockDiscovery):
    assert len(d.block_bytes) == len(d.blocks)
    assert sum(d.block_bytes) + d.nonblock_bytes == d.total_bytes
    assert d.total_bytes == _bytes(model)
    if not d.shared_params:
        for (name, mod), nb in zip(d.blocks, d.block_bytes, strict=True):
            assert nb == _bytes(mod), name
            assert mod is model.get_submodule(name)


class ComfyWrapper(nn.Module):
    """Shape of ComfyUI's BaseModel: the network under ``diffusion_model`` plus small extras."""

    def __init__(self, net):
        super().__init__()
        self.diffusion_model = net
        self.model_sampling = nn.Module()
        self.model_sampling.register_buffer("sigmas", torch.linspace(0.03, 14.6, 1000))


class DiTBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class TinyDiT(nn.Module):
    def __init__(self, d=32, depth=6):
        super().__init__()
        self.pos_embed = nn.Linear(8, d)
        self.t_embedder = nn.Sequential(nn.Linear(16, d), nn.SiLU(), nn.Linear(d, d))
        self.transformer_blocks = nn.ModuleList(DiTBlock(d) for _ in range(depth))
        self.proj_out = nn.Linear(d, 8)


# ----------------------------------------------------------------------------- per model


def test_wan():
    m = _tiny("wan")
    d = discover_blocks(m)
    assert d.containers == ["blocks"]
    assert d.names == [f"blocks.{i}" for i in range(4)]
    assert all(mod is m.blocks[i] for i, (_, mod) in enumerate(d.blocks))
    assert d.shared_params == []
    assert d.has_blocks and 0.5 < d.block_fraction < 1.0
    assert "4 blocks" in d.message and "'blocks'" in d.message
    _check_accounting(m, d)
    # non-block = embeddings, time projection and head
    nonblock = sum(
        _bytes(getattr(m, n))
        for n in ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")
    )
    assert d.nonblock_bytes == nonblock


def test_wan_i2v_keeps_img_emb_out_of_blocks():
    m = _tiny("wan", model_type="i2v", clip_dim=32)
    d = discover_blocks(m)
    assert d.names == [f"blocks.{i}" for i in range(4)]
    assert not any(n.startswith("img_emb") for n in d.names)
    _check_accounting(m, d)
    # with Wan's real 1280-wide CLIP projection, the tiny model's img_emb outweighs its blocks
    heavy = _tiny("wan", model_type="i2v")
    d = discover_blocks(heavy)
    assert d.blocks == [] and "min_fraction" in d.message and "model_offload" in d.message
    assert discover_blocks(heavy, min_fraction=0.05).names == [f"blocks.{i}" for i in range(4)]


def test_flux_double_and_single_blocks():
    m = _tiny("flux")
    d = discover_blocks(m)
    assert d.containers == ["double_blocks", "single_blocks"]
    assert d.names == ["double_blocks.0", "double_blocks.1"] + [f"single_blocks.{i}" for i in range(4)]
    _check_accounting(m, d)


def test_unet_input_middle_output():
    m = _tiny("unet")
    d = discover_blocks(m)
    assert d.containers == ["input_blocks", "output_blocks"]
    n_in, n_out = len(m.input_blocks), len(m.output_blocks)
    assert d.names == (
        [f"input_blocks.{i}" for i in range(n_in)] + ["middle_block"] + [f"output_blocks.{i}" for i in range(n_out)]
    )
    # middle_block is ONE block, and nested transformer_blocks are never picked on their own
    assert not any(n.startswith("middle_block.") or "transformer_blocks" in n for n in d.names)
    _check_accounting(m, d)


def test_t5_encoder_block():
    for preset in ("tiny", "tiny-t5"):
        m = _tiny("t5", preset=preset)
        d = discover_blocks(m)
        assert d.containers == ["encoder.block"]
        assert d.names == [f"encoder.block.{i}" for i in range(4)]
        _check_accounting(m, d)
    # the stack alone: its container is `block`
    d = discover_blocks(m.encoder)
    assert d.names == [f"block.{i}" for i in range(4)]


def test_dit_transformer_blocks():
    m = TinyDiT()
    d = discover_blocks(m)
    assert d.containers == ["transformer_blocks"]
    assert d.names == [f"transformer_blocks.{i}" for i in range(6)]
    assert "t_embedder" not in " ".join(d.names)
    _check_accounting(m, d)


@pytest.mark.parametrize(
    "fam,preset,containers,count",
    [
        ("wan", "wan2.1-14b", ["blocks"], 40),
        ("wan", "wan2.1-1.3b", ["blocks"], 30),
        ("flux", "flux-dev", ["double_blocks", "single_blocks"], 57),
        ("unet", "sdxl", ["input_blocks", "output_blocks"], 19),
        ("unet", "sd15", ["input_blocks", "output_blocks"], 25),
        ("t5", "umt5-xxl", ["encoder.block"], 24),
    ],
)
def test_full_size_presets_on_meta(fam, preset, containers, count):
    m = M.build(fam, preset=preset, device="meta")
    t0 = time.perf_counter()
    d = discover_blocks(m)
    elapsed = time.perf_counter() - t0
    assert d.containers == containers and len(d.blocks) == count
    assert sum(d.block_bytes) + d.nonblock_bytes == d.total_bytes == M.param_bytes(m)
    assert elapsed < 2.0
    if fam == "unet":
        assert "middle_block" in d.names


def test_wan_14b_block_sizes():
    m = M.build("wan", preset="wan2.1-14b", device="meta", dtype=torch.bfloat16)
    d = discover_blocks(m)
    assert len(set(d.block_bytes)) == 1  # identical blocks
    dim, ffn = 5120, 13824
    per_block = 2 * (4 * (dim * dim + dim) + 2 * dim) + 2 * dim + (2 * dim * ffn + ffn + dim) + 6 * dim
    assert d.block_bytes[0] == per_block * 2


def test_wrapped_like_comfyui_base_model():
    for fam, first in (("wan", "blocks.0"), ("flux", "double_blocks.0"), ("unet", "input_blocks.0")):
        net = _tiny(fam)
        wrapped = ComfyWrapper(net)
        d = discover_blocks(wrapped)
        plain = discover_blocks(net)
        assert d.names == ["diffusion_model." + n for n in plain.names]
        assert d.names[0] == "diffusion_model." + first
        assert d.containers == ["diffusion_model." + c for c in plain.containers]
        assert d.block_bytes == plain.block_bytes
        assert d.total_bytes == plain.total_bytes + 1000 * 4  # the sigmas buffer is counted, outside blocks
        assert d.nonblock_bytes == plain.nonblock_bytes + 4000
        _check_accounting(wrapped, d)


def test_module_that_is_itself_the_container():
    m = _tiny("wan")
    d = discover_blocks(m.blocks)
    assert d.containers == [""]
    assert d.names == ["0", "1", "2", "3"]
    assert d.nonblock_bytes == 0


# ----------------------------------------------------------------------------- no blocks


@pytest.mark.parametrize(
    "model",
    [
        nn.Linear(16, 16),
        nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)),
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()),
    ],
)
def test_no_repeated_blocks(model):
    d = discover_blocks(model)
    assert d.blocks == [] and d.containers == [] and d.block_bytes == []
    assert d.nonblock_bytes == d.total_bytes == _bytes(model) > 0
    assert "no repeated blocks" in d.message and "model_offload" in d.message
    assert not d.has_blocks


def test_no_weights_at_all():
    d = discover_blocks(nn.Sequential(nn.ReLU(), nn.Identity()))
    assert d.blocks == [] and d.total_bytes == 0
    assert "no weights" in d.message and "model_offload" in d.message


def test_small_container_is_not_chosen():
    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(2000, 64)  # holds almost everything
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(3))

    d = discover_blocks(Big())
    assert d.blocks == [] and "model_offload" in d.message


def test_min_fraction():
    m = _tiny("wan")  # blocks hold ~81%
    assert discover_blocks(m, min_fraction=0.8).has_blocks
    d = discover_blocks(m, min_fraction=0.9)
    assert d.blocks == [] and d.nonblock_bytes == d.total_bytes
    assert "min_fraction" in d.message and "model_offload" in d.message
    with pytest.raises(ValueError, match="min_fraction"):
        discover_blocks(m, min_fraction=1.5)
    with pytest.raises(TypeError):
        discover_blocks("not a module")


def test_heterogeneous_sequential_is_not_a_container():
    """A Sequential of three different composite layers is not a run of repeated blocks."""

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.Sequential(
                nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)),
                DiTBlock(64),
                nn.Sequential(nn.Conv1d(64, 64, 3), nn.BatchNorm1d(64)),
            )

    d = discover_blocks(Stem())
    assert d.blocks == []


# ----------------------------------------------------------------------------- explicit names


def test_explicit_names_override_and_are_ordered():
    m = _tiny("wan")
    d = discover_blocks(m, names=["blocks.2", "blocks.0", "head"])
    assert d.names == ["blocks.0", "blocks.2", "head"]
    assert d.containers == ["blocks"]
    assert d.blocks[2][1] is m.head
    assert "explicitly named" in d.message
    _check_accounting(m, d)


def test_explicit_names_under_wrapper_and_middle_block():
    net = _tiny("unet")
    d = discover_blocks(ComfyWrapper(net), names=["diffusion_model.middle_block", "diffusion_model.input_blocks.1"])
    assert d.names == ["diffusion_model.input_blocks.1", "diffusion_model.middle_block"]
    assert d.blocks[1][1] is net.middle_block


def test_explicit_missing_name_error():
    m = _tiny("wan")
    with pytest.raises(DiscoveryError) as e:
        discover_blocks(m, names=["blocks.0", "transformer_blocks.0"])
    msg = str(e.value)
    assert "'transformer_blocks.0'" in msg
    for child in ("patch_embedding", "blocks", "head"):
        assert child in msg
    with pytest.raises(DiscoveryError) as e:
        discover_blocks(m, names=["blocks.99"])
    assert "'blocks.99'" in str(e.value) and "'blocks' exists" in str(e.value) and "0, 1, 2, 3" in str(e.value)


def test_explicit_name_errors():
    m = _tiny("wan")
    with pytest.raises(DiscoveryError, match="ancestor"):
        discover_blocks(m, names=["blocks.1.self_attn", "blocks.1"])
    with pytest.raises(DiscoveryError, match="twice"):
        discover_blocks(m, names=["blocks.1", "blocks.1"])
    with pytest.raises(DiscoveryError, match="list of qualified"):
        discover_blocks(m, names="blocks.0")
    with pytest.raises(DiscoveryError, match="non-empty"):
        discover_blocks(m, names=[""])


def test_explicit_prefix_is_not_ancestor():
    big = M.build("wan", preset="wan2.1-1.3b", device="meta")
    d = discover_blocks(big, names=["blocks.10", "blocks.1"])  # "blocks.1" is a string prefix, not an ancestor
    assert d.names == ["blocks.1", "blocks.10"]
    assert d.block_bytes[0] == d.block_bytes[1] > 0


# ----------------------------------------------------------------------------- tied weights


def test_tied_weight_between_blocks():
    m = _tiny("wan")
    full = discover_blocks(m)
    m.blocks[2].ffn[0].weight = m.blocks[0].ffn[0].weight
    d = discover_blocks(m)
    assert d.names == full.names
    assert d.shared_params == ["blocks.0.ffn.0.weight"]
    assert set(d.shared_aliases["blocks.0.ffn.0.weight"]) == {"blocks.0.ffn.0.weight", "blocks.2.ffn.0.weight"}
    w = m.blocks[0].ffn[0].weight
    nb = w.numel() * w.element_size()
    assert d.block_bytes[0] == full.block_bytes[0] - nb
    assert d.block_bytes[2] == full.block_bytes[2] - nb  # the tensor of block 2 is gone and the shared one is outside
    assert d.block_bytes[1] == full.block_bytes[1]
    assert d.total_bytes == full.total_bytes - nb
    assert sum(d.block_bytes) + d.nonblock_bytes == d.total_bytes
    assert "shared" in d.message


def test_tied_weight_between_block_and_outside():
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.layers = nn.ModuleList(DiTBlock(32) for _ in range(4))
            self.layers[3].out = nn.Linear(32, 50, bias=False)
            self.layers[3].out.weight = self.embed.weight

    m = TiedLM()
    d = discover_blocks(m)
    assert d.names == [f"layers.{i}" for i in range(4)]
    assert d.shared_params == ["embed.weight"]
    assert set(d.shared_aliases["embed.weight"]) == {"embed.weight", "layers.3.out.weight"}
    assert sum(d.block_bytes) + d.nonblock_bytes == d.total_bytes == _bytes(m)
    assert d.nonblock_bytes == 50 * 32 * 4


def test_same_block_module_repeated():
    """ALBERT-style weight sharing: one block object listed several times."""
    blk = DiTBlock(32)
    m = nn.Module()
    m.layers = nn.ModuleList([blk, blk, blk])
    m.head = nn.Linear(32, 2)
    d = discover_blocks(m)  # every block tensor is shared: nothing to stream
    assert d.blocks == [] and "shared" in d.message and "model_offload" in d.message
    d = discover_blocks(m, min_fraction=0.0)
    assert d.names == ["layers.0", "layers.1", "layers.2"]
    assert d.block_bytes == [0, 0, 0]
    assert len(d.shared_params) == len(list(blk.parameters()))
    assert d.nonblock_bytes == d.total_bytes == _bytes(m)
