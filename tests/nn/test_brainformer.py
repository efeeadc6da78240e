"""Brainformer heterogeneous blocks (``nn/brainformer.py``, arXiv 2306.00008) and the ``none``
mixer (``nn/attention/identity.py``): the block-spec parser, the built layer types, parameter
counts, the FFN-only block, and the causality policy."""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model, count_params
from formers.nn.attention.identity import NoMixer
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.brainformer import BLOCK1, brainformer, brainformer_config, brainformer_layers, parse_block
from formers.nn.context import Context
from formers.nn.ffn.mlp import MLP
from formers.nn.ffn.moe import MoE, active_params, aux_loss, moe_param_counts

BASE = ModelConfig(vocab_size=31, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_seq_len=64,
                   init_std=0.1)


def kinds(model) -> list[tuple[str, str]]:
    return [(type(b.mixer).__name__, type(b.ffn).__name__) for b in model.stack.blocks]


def test_parse_block1():
    specs = parse_block(BLOCK1, {"n_experts": 4})
    assert [(s.attention, s.ffn) for s in specs] == [
        ("softmax", "moe"), ("none", "mlp"), ("softmax", "moe"), ("none", "mlp"),
        ("none", "moe"), ("none", "mlp")]
    assert all(s.ffn_options == {"n_experts": 4} for s in specs if s.ffn == "moe")
    assert parse_block("attn,moe,ffn") == parse_block(["a", "m", "f"])
    assert [(s.attention, s.ffn) for s in parse_block("f f m")] == [
        ("none", "mlp"), ("none", "mlp"), ("none", "moe")]


@pytest.mark.parametrize("bad,msg", [("", "empty"), ("a m x", "unknown"), ("a a m", "no FFN"),
                                     ("m a", "no FFN")])
def test_parse_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        parse_block(bad)


def test_brainformer_config_builds_the_layer_types_in_order():
    cfg = brainformer_config(BASE, n_blocks=2, gating="top2", n_experts=4)
    assert cfg.n_layers == 12
    model = build_model(cfg)
    one = [("SoftmaxAttention", "MoE"), ("NoMixer", "MLP"), ("SoftmaxAttention", "MoE"),
           ("NoMixer", "MLP"), ("NoMixer", "MoE"), ("NoMixer", "MLP")]
    assert kinds(model) == one * 2
    # sub-layer ratio of block #1: 2 attention, 3 MoE, 3 dense per block
    blocks = model.stack.blocks
    assert sum(isinstance(b.mixer, SoftmaxAttention) for b in blocks) == 4
    assert sum(isinstance(b.ffn, MoE) for b in blocks) == 6
    assert sum(isinstance(b.ffn, MLP) for b in blocks) == 6
    assert all(b.ffn.routing == "top_k" and b.ffn.capacity_factor is None
               for b in blocks if isinstance(b.ffn, MoE))


def test_widths_and_counts_match_analytic():
    cfg = brainformer_config(BASE, n_blocks=1, gating="top2", n_experts=4, moe_d_ff=12, ffn_d_ff=20)
    model = build_model(cfg)
    d, v, blocks = 8, 31, model.stack.blocks
    moe_c = moe_param_counts(d, 12, 4, "top_k", 2)
    dense = d * 20 + 20 * d + 20 + d
    attn = 4 * (d * d + d)
    norms = 2 * d * 2 * 6 + 2 * d  # two LayerNorms per block + the final one
    emb = v * d + 64 * d  # tied head; learned positions
    total = emb + norms + 2 * attn + 3 * moe_c["total"] + 3 * dense
    assert count_params(model) == total
    assert active_params(model) == total - 3 * (4 - 2) * moe_c["dense"]
    assert all(b.ffn.up.weight.shape == (4, 8, 12) for b in blocks if isinstance(b.ffn, MoE))
    assert all(b.ffn.up.out_features == 20 for b in blocks if isinstance(b.ffn, MLP))


def test_expert_choice_brainformer():
    """The paper's gating (expert choice, cf = 1) is refused in a decoder unless the leak is
    accepted; with noncausal_ok it trains (no aux loss) and every expert gets c tokens."""
    with pytest.raises(ValueError, match="not causal"):
        build_model(brainformer_config(BASE, n_blocks=1))
    cfg = brainformer_config(BASE, n_blocks=1, n_experts=4, noncausal_ok=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    logits = model(torch.randint(0, 31, (2, 12)))
    assert float(aux_loss(model)) == 0.0
    for b in model.stack.blocks:
        if isinstance(b.ffn, MoE):
            assert b.ffn.routing == "expert_choice" and b.ffn.capacity_factor == 1.0
            assert (b.ffn.last_stats["tokens_per_expert"] == 2 * 3).all()  # 2 seqs x 12*1/4
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_none_mixer_block_is_norm_ffn_residual():
    cfg = BASE.replace(layers=[LayerSpec(attention="none")])
    torch.manual_seed(0)
    block = build_model(cfg).stack.blocks[0]
    assert isinstance(block.mixer, NoMixer)
    x = torch.randn(2, 5, 8)
    c = Context(positions=torch.arange(5))
    torch.testing.assert_close(block(x, c), x + block.ffn(block.norm2(x)), atol=0, rtol=0)
    enc = build_model(cfg.replace(arch="encoder")).stack.blocks[0]  # valid without a mask too
    assert isinstance(enc.mixer, NoMixer)


@torch.no_grad()
def test_top2_brainformer_decoder_is_causal_and_cache_exact():
    cfg = brainformer_config(BASE, n_blocks=1, gating="top2", n_experts=4)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 31, (2, 10))
    full = model(ids)
    other = ids.clone()
    other[:, 6] = (other[:, 6] + 1) % 31
    torch.testing.assert_close(model(other)[:, :6], full[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(model(other)[:, 6], full[:, 6])
    cache = model.new_cache()
    inc = torch.cat([model(ids[:, :3], cache=cache), model(ids[:, 3:7], cache=cache),
                     model(ids[:, 7:], cache=cache)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_brainformer_preset():
    from formers import registry

    assert registry.get("model", "brainformer").obj is brainformer
    cfg = brainformer(BASE.replace(n_layers=6))
    assert [(s.attention, s.ffn) for s in cfg.layers] == [
        (s.attention, s.ffn) for s in brainformer_layers(gating="top2")]
    build_model(cfg)
    with pytest.raises(ValueError, match="multiple of 6"):
        brainformer(BASE)
