"""MASFormer (arXiv 2310.12442): the layer pattern in config, gradient isolation across blocks in an
all-block-sparse stack, crossing with one full layer, reduction to the vanilla model, the FLOP
counter l*n^2 + (L-l)*n*b against counts from the actual masks, and O(b) decoding caches."""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.sparse import PatternAttention, pattern_matrix
from formers.nn.masformer import (
    full_layer_indices, masformer_attention_flops, masformer_config, masformer_flops_formula,
    masformer_score_pairs,
)
from formers.nn.presets import apply_preset

BASE = ModelConfig(arch="decoder", vocab_size=37, d_model=16, n_layers=4, n_heads=2, d_ff=32,
                   max_seq_len=64, init_std=0.1, position="rope")


def test_placements():
    assert full_layer_indices(8, 2, "bottom") == [0, 1]
    assert full_layer_indices(8, 2, "top") == [6, 7]
    assert full_layer_indices(8, 2, "even") == [2, 6]
    assert full_layer_indices(6, 1, "even") == [3]
    assert full_layer_indices(6, 0, "even") == []
    assert full_layer_indices(6, 2, [5, 1]) == [1, 5]
    for bad in [dict(n_full=7), dict(n_full=-1), dict(placement="middle"), dict(placement=[1, 1]),
                dict(placement=[0, 9]), dict(n_full=1, placement=[0, 2])]:
        kw = {"n_full": 2, "placement": "bottom", **bad}
        with pytest.raises(ValueError, match="masformer"):
            full_layer_indices(6, **kw)


def test_pattern_is_config_and_survives_serialisation():
    c = masformer_config(BASE.replace(n_layers=6), n_full=2, placement=[1, 4], span=8)
    kinds = [(s.attention, dict(s.attention_options), s.cache) for s in c.layers]
    assert kinds == [("block-sparse", {"block": 8}, "window") if i not in (1, 4) else ("softmax", {}, "auto")
                     for i in range(6)]
    assert all(s.cache_options == {"window": 8} for i, s in enumerate(c.layers) if i not in (1, 4))
    assert ModelConfig.from_dict(c.to_dict()) == c
    w = masformer_config(BASE, n_full=1, sparse="local", span=5, window_cache=False)
    assert [s.attention for s in w.layers] == ["softmax", "local", "local", "local"]
    assert w.layers[1].attention_options == {"window": 5} and w.layers[1].cache == "auto"
    with pytest.raises(ValueError, match="sparse"):
        masformer_config(BASE, sparse="bigbird")
    with pytest.raises(ValueError, match="span"):
        masformer_config(BASE, span=0)


def test_presets():
    c = apply_preset("masformer", BASE.replace(n_layers=8))
    assert [s.attention for s in c.layers] == ["softmax"] * 2 + ["block-sparse"] * 6
    c = apply_preset("masformer-window", BASE.replace(n_layers=3))
    assert [s.attention for s in c.layers] == ["softmax", "local", "local"]


# --------------------------------------------------------------------- gradient isolation
def _input_grads(cfg: ModelConfig, t: int, n: int = 16) -> torch.Tensor:
    """|d logits[0, t] / d x_s| per position s, x = the embedder's output (the stack's input)."""
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    held = {}

    def hook(mod, inp, out):
        out[0].retain_grad()
        held["x"] = out[0]

    m.embed.register_forward_hook(hook)
    ids = torch.randint(0, 37, (1, n), generator=torch.Generator().manual_seed(1))
    m(ids)[0, t].sum().backward()
    return held["x"].grad[0].abs().sum(-1)


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
@pytest.mark.parametrize("n_layers", [1, 4])
def test_all_block_sparse_stack_isolates_blocks(arch, n_layers):
    cfg = masformer_config(BASE.replace(arch=arch, n_layers=n_layers), n_full=0, span=4)
    for t in (0, 5, 10, 15):
        g = _input_grads(cfg, t)
        block = torch.arange(16) // 4 == t // 4
        assert (g[~block] == 0).all(), f"token {t} depends on other blocks: {g}"
        assert (g[t] > 0), "no dependence on itself"
        if arch == "encoder":  # the whole block (both sides) influences t
            assert (g[block] > 0).all()
        else:
            assert (g[block & (torch.arange(16) <= t)] > 0).all()


@pytest.mark.parametrize("placement", ["bottom", "top", "even"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_one_full_layer_crosses_blocks(arch, placement):
    cfg = masformer_config(BASE.replace(arch=arch), n_full=1, placement=placement, span=4)
    g = _input_grads(cfg, 15)
    assert (g > 0).all(), f"position 15 does not see every earlier block: {g}"


def test_local_stack_reaches_about_layers_times_window():
    """Sliding windows propagate: 4 layers of window 3 reach back 4 * 2 positions exactly."""
    cfg = masformer_config(BASE, n_full=0, sparse="local", span=3)
    g = _input_grads(cfg, 15)
    assert (g[7:] > 0).all() and (g[:7] == 0).all()


def test_all_full_layers_is_the_vanilla_model():
    x = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    vanilla = build_model(BASE).eval()
    torch.manual_seed(0)
    mas = build_model(masformer_config(BASE, n_full=4, span=4)).eval()
    with torch.no_grad():
        assert torch.equal(mas(x), vanilla(x))
    # and block >= n: the block-sparse stack is the vanilla model with the same weights
    wide = build_model(masformer_config(BASE, n_full=0, span=20)).eval()
    wide.load_state_dict(vanilla.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(wide(x), vanilla(x), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------- FLOPs
def _pairs_from_masks(cfg: ModelConfig, n: int, causal: bool) -> int:
    torch.manual_seed(0)
    m = build_model(cfg)
    total = 0
    for i in range(cfg.n_layers):
        attn = m.stack.blocks[i].mixer
        if isinstance(attn, PatternAttention):
            total += int(pattern_matrix(attn.pattern(causal, n), n, causal).sum())
        else:
            total += int(pattern_matrix(lambda a, b: a >= b - b, n, causal).sum())
    return total


@pytest.mark.parametrize("L,l,n,b", [(8, 2, 64, 16), (6, 1, 48, 8), (4, 0, 32, 32), (4, 4, 32, 8)])
def test_flop_counter_matches_paper_formula_and_masks(L, l, n, b):
    cfg = masformer_config(BASE.replace(n_layers=L), n_full=l, placement="even", span=b)
    want = l * n * n + (L - l) * n * b
    assert masformer_flops_formula(L, l, n, b) == want
    assert masformer_score_pairs(cfg, n, causal=False) == want
    assert _pairs_from_masks(cfg, n, causal=False) == want
    assert masformer_attention_flops(cfg, n, causal=False) == 4 * cfg.head_dim * cfg.n_heads * want


@pytest.mark.parametrize("sparse,n,b", [("block-sparse", 30, 7), ("block-sparse", 13, 20),
                                        ("local", 30, 7), ("local", 9, 20)])
@pytest.mark.parametrize("causal", [True, False])
def test_exact_pair_counts_match_masks(sparse, n, b, causal):
    cfg = masformer_config(BASE.replace(n_layers=4), n_full=1, sparse=sparse, span=b)
    assert masformer_score_pairs(cfg, n, causal) == _pairs_from_masks(cfg, n, causal)


def test_pair_counter_refuses_unknown_mixers():
    cfg = BASE.replace(layers=[LayerSpec(attention="bigbird")])
    with pytest.raises(ValueError, match="bigbird"):
        masformer_score_pairs(cfg, 16)


# --------------------------------------------------------------------------------- cache
@pytest.mark.parametrize("sparse", ["block-sparse", "local"])
def test_sparse_layers_cache_holds_at_most_b_keys(sparse):
    b = 4
    cfg = masformer_config(BASE, n_full=1, placement="top", sparse=sparse, span=b)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    x = torch.randint(0, 37, (2, 26), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache()
        outs = [m(x[:, :3], cache=cache)]
        for t in range(3, 26):
            outs.append(m(x[:, t:t + 1], cache=cache))
            assert [len(c) for c in cache.layers] == [b - 1, b - 1, b - 1, t + 1]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)
