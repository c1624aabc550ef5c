"""Tests of the tiny models (tests/fixtures/models): real key layouts, shapes, determinism, block isolation."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fixtures import models as M


def _sd_keys(model):
    return set(model.state_dict().keys())


def _block_list(model):
    """The blocks of each family, listed by hand (independent of pinstream.discovery)."""
    if isinstance(model, M.WanTransformer):
        return list(model.blocks)
    if isinstance(model, M.TinyUNet):
        return list(model.input_blocks) + [model.middle_block] + list(model.output_blocks)
    if isinstance(model, M.TinyT5Encoder):
        return list(model.encoder.block)
    if isinstance(model, M.TinyFlux):
        return list(model.double_blocks) + list(model.single_blocks)
    raise TypeError(type(model))


def _tiny(fam, **kw):
    torch.manual_seed(0)
    return M.build(fam, **kw)


FAMILIES = ["wan", "unet", "t5", "flux"]
VARIANTS = [
    ("wan", {}),
    ("wan", {"model_type": "i2v", "in_dim": 36}),
    ("unet", {}),
    ("unet", {"use_linear_in_transformer": True, "adm_in_channels": 16}),
    ("t5", {}),
    ("t5", {"preset": "tiny-t5"}),
    ("flux", {}),
    ("flux", {"guidance_embed": True}),
]


# ----------------------------------------------------------------------------- key layouts


def test_wan_keys_and_shapes():
    m = _tiny("wan")
    sd = m.state_dict()
    for k in [
        "patch_embedding.weight",
        "patch_embedding.bias",
        "text_embedding.0.weight",
        "text_embedding.2.weight",
        "time_embedding.0.weight",
        "time_embedding.2.weight",
        "time_projection.1.weight",
        "blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.k.bias",
        "blocks.0.self_attn.v.weight",
        "blocks.0.self_attn.o.weight",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.0.self_attn.norm_k.weight",
        "blocks.0.norm3.weight",
        "blocks.0.norm3.bias",
        "blocks.0.cross_attn.q.weight",
        "blocks.0.cross_attn.norm_k.weight",
        "blocks.0.ffn.0.weight",
        "blocks.0.ffn.2.weight",
        "blocks.0.modulation",
        "blocks.3.modulation",
        "head.head.weight",
        "head.modulation",
    ]:
        assert k in sd, k
    # norm1 / norm2 / head.norm carry no weights in Wan checkpoints
    assert "blocks.0.norm1.weight" not in sd and "blocks.0.norm2.weight" not in sd
    assert "head.norm.weight" not in sd
    assert not any(k.startswith("img_emb") or "k_img" in k for k in sd)
    assert sd["patch_embedding.weight"].shape == (64, 16, 1, 2, 2)
    assert sd["blocks.0.modulation"].shape == (1, 6, 64)
    assert sd["head.modulation"].shape == (1, 2, 64)
    assert sd["head.head.weight"].shape == (16 * 4, 64)
    assert sd["time_projection.1.weight"].shape == (64 * 6, 64)
    assert sd["text_embedding.0.weight"].shape == (64, 32)
    assert sd["time_embedding.0.weight"].shape == (64, 32)
    assert sd["blocks.0.ffn.0.weight"].shape == (128, 64)
    assert len(m.blocks) == 4 and all(type(b) is M.WanAttentionBlock for b in m.blocks)


def test_wan_i2v_keys_and_forward():
    m = _tiny("wan", model_type="i2v", in_dim=36)
    keys = _sd_keys(m)
    for k in [
        "img_emb.proj.0.weight",
        "img_emb.proj.1.weight",
        "img_emb.proj.3.weight",
        "img_emb.proj.4.weight",
        "blocks.0.cross_attn.k_img.weight",
        "blocks.0.cross_attn.v_img.weight",
        "blocks.0.cross_attn.norm_k_img.weight",
    ]:
        assert k in keys, k
    assert m.state_dict()["img_emb.proj.1.weight"].shape == (1280, 1280)
    x, t, ctx, clip = M.example_inputs(m)
    assert x.shape[1] == 36
    with torch.no_grad():
        out = m(x, t, ctx, clip)
        out_zero_clip = m(x, t, ctx)
    assert out.shape == (1, 16, 2, 8, 8)
    assert not torch.equal(out, out_zero_clip)  # the image tokens reach the output


def test_unet_keys():
    m = _tiny("unet")
    keys = _sd_keys(m)
    for k in [
        "time_embed.0.weight",
        "time_embed.2.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.0.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.2.0.op.weight",
        "input_blocks.3.0.skip_connection.weight",
        "input_blocks.3.1.norm.weight",
        "input_blocks.3.1.proj_in.weight",
        "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.3.1.transformer_blocks.0.attn2.to_out.0.weight",
        "input_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.3.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.3.1.transformer_blocks.0.norm3.weight",
        "input_blocks.3.1.proj_out.weight",
        "middle_block.0.in_layers.2.weight",
        "middle_block.1.transformer_blocks.1.attn1.to_v.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.0.0.skip_connection.weight",
        "output_blocks.1.2.conv.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert k in keys, k
    assert "label_emb.0.0.weight" not in keys
    assert not any("to_q.bias" in k for k in keys)  # LDM attention has no q/k/v bias
    assert m.state_dict()["input_blocks.3.1.proj_in.weight"].dim() == 4  # SD1.x: 1x1 conv


def test_unet_sdxl_layout_and_published_counts():
    xl = M.build("unet", preset="sdxl", device="meta")
    keys = _sd_keys(xl)
    assert "label_emb.0.0.weight" in keys and "label_emb.0.2.weight" in keys
    assert "input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in keys
    assert "middle_block.1.transformer_blocks.9.ff.net.2.weight" in keys
    assert "output_blocks.2.2.conv.weight" in keys
    assert xl.state_dict()["input_blocks.4.1.proj_in.weight"].dim() == 2  # SDXL: linear proj
    assert len(xl.input_blocks) == 9 and len(xl.output_blocks) == 9
    # published parameter counts of the SD1.5 and SDXL base UNets
    assert M.param_count(xl) == 2_567_463_684
    sd15 = M.build("unet", preset="sd15", device="meta")
    assert M.param_count(sd15) == 859_520_964
    assert "output_blocks.2.1.conv.weight" in _sd_keys(sd15)
    assert len(sd15.input_blocks) == 12 and len(sd15.output_blocks) == 12


def test_t5_keys_umt5_and_t5_variants():
    m = _tiny("t5")
    keys = _sd_keys(m)
    for k in [
        "shared.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder.block.0.layer.0.SelfAttention.k.weight",
        "encoder.block.0.layer.0.SelfAttention.v.weight",
        "encoder.block.0.layer.0.SelfAttention.o.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight",  # UMT5: every block
        "encoder.block.0.layer.0.layer_norm.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi_1.weight",
        "encoder.block.0.layer.1.DenseReluDense.wo.weight",
        "encoder.block.0.layer.1.layer_norm.weight",
        "encoder.final_layer_norm.weight",
    ]:
        assert k in keys, k
    assert not any(k.endswith(".bias") and "relative" not in k for k in keys)  # T5 linears have no bias
    t5 = _tiny("t5", preset="tiny-t5")
    keys = _sd_keys(t5)
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in keys
    assert "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in keys


def test_t5_xxl_counts():
    assert M.param_count(M.build("t5", preset="t5-xxl", device="meta")) == 4_762_310_656
    assert M.param_count(M.build("t5", preset="umt5-xxl", device="meta")) == 5_680_910_336


def test_flux_keys_and_published_count():
    m = _tiny("flux")
    keys = _sd_keys(m)
    for k in [
        "img_in.weight",
        "time_in.in_layer.weight",
        "time_in.out_layer.weight",
        "vector_in.in_layer.weight",
        "txt_in.weight",
        "double_blocks.0.img_mod.lin.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.img_attn.qkv.bias",
        "double_blocks.0.img_attn.norm.query_norm.scale",
        "double_blocks.0.img_attn.norm.key_norm.scale",
        "double_blocks.0.img_attn.proj.weight",
        "double_blocks.0.img_mlp.0.weight",
        "double_blocks.0.img_mlp.2.weight",
        "double_blocks.1.txt_mod.lin.weight",
        "double_blocks.1.txt_attn.qkv.weight",
        "double_blocks.1.txt_attn.norm.key_norm.scale",
        "double_blocks.1.txt_mlp.2.weight",
        "single_blocks.0.linear1.weight",
        "single_blocks.0.linear2.weight",
        "single_blocks.0.modulation.lin.weight",
        "single_blocks.0.norm.query_norm.scale",
        "single_blocks.3.norm.key_norm.scale",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
    ]:
        assert k in keys, k
    assert "guidance_in.in_layer.weight" not in keys
    assert m.state_dict()["single_blocks.0.linear1.weight"].shape == (64 * 3 + 256, 64)
    dev = M.build("flux", preset="flux-dev", device="meta")
    assert "guidance_in.in_layer.weight" in _sd_keys(dev)
    assert M.param_count(dev) == 11_901_408_320  # published FLUX.1-dev transformer size
    assert len(dev.double_blocks) == 19 and len(dev.single_blocks) == 38


# ----------------------------------------------------------------------------- presets


def test_wan_presets_on_meta():
    small = M.WanTransformer.from_preset("wan2.1-1.3b", device="meta")
    assert small.patch_embedding.weight.is_meta
    assert M.param_count(small) == 1_418_996_800
    big = M.WanTransformer.from_preset("wan2.1-14b", device="meta")
    assert M.param_count(big) == 14_288_491_584
    assert len(big.blocks) == 40 and big.blocks[0].self_attn.q.weight.shape == (5120, 5120)
    demo = M.WanTransformer.from_preset("demo", device="meta")
    assert 100e6 <= M.param_bytes(demo) <= 200e6
    bf16 = M.WanTransformer.from_preset("wan2.1-14b", device="meta", dtype=torch.bfloat16)
    assert M.param_bytes(bf16) * 2 == M.param_bytes(big)


def test_preset_and_build_errors():
    with pytest.raises(ValueError, match="unknown Wan preset"):
        M.WanTransformer.from_preset("nope")
    with pytest.raises(ValueError, match="unknown model"):
        M.build("sd3")
    with pytest.raises(ValueError, match="model_type"):
        M.WanTransformer(dim=64, ffn_dim=64, num_heads=4, num_layers=1, model_type="v2v")
    for fam in FAMILIES:
        m = M.build(fam, device="meta")
        assert not m.training


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("fam,kw", VARIANTS)
def test_forward_shape_and_bitwise_determinism(fam, kw):
    m = _tiny(fam, **kw)
    args = M.example_inputs(m)
    with torch.no_grad():
        a = m(*args)
        b = m(*args)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    if fam == "wan":
        assert a.shape == (1, m.out_dim) + tuple(args[0].shape[2:])
    elif fam == "unet":
        assert a.shape == args[0].shape
    elif fam == "t5":
        assert a.shape == (1, args[0].shape[1], m.d_model)
    else:
        assert a.shape == args[0].shape
    # a rebuilt model from the same seed gives the same weights and the same output
    m2 = _tiny(fam, **kw)
    with torch.no_grad():
        assert torch.equal(m2(*args), a)


def test_same_seed_same_weights_other_seed_other_weights():
    torch.manual_seed(1)
    a = M.build("wan").state_dict()
    torch.manual_seed(1)
    b = M.build("wan").state_dict()
    torch.manual_seed(2)
    c = M.build("wan").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.self_attn.q.weight"], c["blocks.0.self_attn.q.weight"])
    assert not torch.equal(a["blocks.0.self_attn.norm_q.weight"], torch.ones(64))  # norms are not all ones


def test_wan_bf16_and_batch():
    m = _tiny("wan", dtype=torch.bfloat16)
    x = torch.randn(2, 16, 3, 4, 6)
    with torch.no_grad():
        out = m(x, torch.tensor([10.0, 900.0]), torch.randn(2, 7, 32))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert m.blocks[0].modulation.dtype == torch.bfloat16


def test_wan_output_depends_on_inputs():
    m = _tiny("wan")
    x, t, ctx = M.example_inputs(m)
    with torch.no_grad():
        base = m(x, t, ctx)
        assert not torch.equal(base, m(x, t + 100, ctx))
        assert not torch.equal(base, m(x, t, ctx + 1))


def test_wan_block_inputs():
    m = _tiny("wan")
    inp = M.wan_block_inputs(m, seq_len=100, batch=2, text_len=20)
    x, e, ctx, freqs = inp
    assert x.shape == (2, 100, 64) and e.shape == (2, 6, 64) and ctx.shape == (2, 20, 64)
    assert freqs[0].shape == (1, 100, 1, 8)
    with torch.no_grad():
        y = m.blocks[0](x, e, ctx)
        y_rope = m.blocks[0](x, e, ctx, freqs=freqs)
    assert y.shape == x.shape and y_rope.shape == x.shape
    assert not torch.equal(y, y_rope)
    again = M.wan_block_inputs(m, seq_len=100, batch=2, text_len=20)
    assert all(torch.equal(a, b) for a, b in zip(inp[:3], again[:3], strict=True))
    i2v = _tiny("wan", model_type="i2v")
    x, e, ctx, _ = M.wan_block_inputs(i2v, seq_len=16, text_len=10)
    assert ctx.shape == (1, 257 + 10, 64)
    with torch.no_grad():
        assert i2v.blocks[1](x, e, ctx).shape == x.shape


def test_unet_needs_y_when_adm():
    m = _tiny("unet", adm_in_channels=16)
    x, t, ctx, y = M.example_inputs(m)
    with torch.no_grad():
        assert m(x, t, ctx, y).shape == x.shape
        with pytest.raises(ValueError, match="adm_in_channels"):
            m(x, t, ctx)


def test_flux_needs_guidance_when_embedded():
    m = _tiny("flux", guidance_embed=True)
    args = M.example_inputs(m)
    with torch.no_grad(), pytest.raises(ValueError, match="guidance"):
        m(*args[:4])


def test_t5_attention_mask_hides_padding():
    m = _tiny("t5")
    ids = torch.randint(0, m.vocab_size, (1, 10), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], dim=1)
    with torch.no_grad():
        short = m(ids)
        long = m(padded, attention_mask=mask)
        unmasked = m(padded)
    torch.testing.assert_close(long[:, :10], short, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked[:, :10], short, atol=1e-4)


# ----------------------------------------------------------------------------- block isolation


def _run_poisoned(model, blocks, args):
    """Emulate the offload engine: every block's parameters are poisoned (NaN) except while
    that block runs (forward pre-hook swaps the real ones in, post-hook swaps them out)."""
    real = {}
    for b in blocks:
        for p in b.parameters():
            real[id(p)] = p.data
            p.data = torch.full_like(p.data, float("nan"))
    ran = []

    def pre(mod, _args):
        ran.append(mod)
        for p in mod.parameters():
            p.data = real[id(p)]

    def post(mod, _args, _out):
        for p in mod.parameters():
            p.data = torch.full_like(p.data, float("nan"))

    handles = [h for b in blocks for h in (b.register_forward_pre_hook(pre), b.register_forward_hook(post))]
    try:
        with torch.no_grad():
            return model(*args), ran
    finally:
        for h in handles:
            h.remove()
        for b in blocks:
            for p in b.parameters():
                p.data = real[id(p)]


@pytest.mark.parametrize("fam,kw", VARIANTS)
def test_blocks_read_only_their_own_parameters(fam, kw):
    """Output bitwise identical to a plain run while only the running block holds real
    weights, and every block ran once, in order."""
    m = _tiny(fam, **kw)
    args = M.example_inputs(m)
    with torch.no_grad():
        expected = m(*args)
    blocks = _block_list(m)
    got, ran = _run_poisoned(m, blocks, args)
    assert torch.equal(got, expected)
    assert [id(b) for b in ran] == [id(b) for b in blocks]
    with torch.no_grad():
        assert torch.equal(m(*args), expected)  # weights restored


def test_poison_harness_catches_a_cross_block_read():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(2))

        def forward(self, x):
            x = self.blocks[0](x)
            return self.blocks[1](x) + self.blocks[0][0].weight.sum()  # block 0 read outside its forward

    m = Leaky()
    got, _ = _run_poisoned(m, list(m.blocks), (torch.ones(1, 4),))
    assert torch.isnan(got).all()


@pytest.mark.parametrize("fam,kw", VARIANTS)
def test_blocks_share_nothing_and_hold_no_buffers(fam, kw):
    m = _tiny(fam, **kw)
    blocks = _block_list(m)
    owner = {}
    for i, b in enumerate(blocks):
        assert not list(b.buffers())
        for p in b.parameters():
            assert owner.setdefault(id(p), i) == i
    inside = set(owner)
    assert len(inside) < len(list(m.parameters()))  # there is a non-block part
