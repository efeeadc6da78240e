"""Sparse-pattern mixers (local, Longformer, BigBird, Sparse Transformer strided / fixed,
block-sparse) and the FlexAttention path of the attention core.

What is proved here: each pattern equals its paper's set definition (hand-written small matrices
and an independent set-based implementation), its density equals a closed formula, each mixer
reduces to full softmax attention in its degenerate setting, cached decoding through ``window`` /
``sink-window`` caches equals the masked full forward while holding O(window) keys, BigBird's
random blocks are a deterministic function of (seed, query block, key block), and the flex path
(run here in flex's eager form on CPU) equals the dense-mask SDPA path.
"""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention import core
from formers.nn.attention.core import attend, choose_path
from formers.nn.attention.sparse import (
    BigBirdPattern, BlockPattern, FixedPattern, LocalPattern, LongformerPattern, StridedPattern,
    bigbird_random_blocks, pattern_matrix,
)
from formers.nn.models import make_cache

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

BASE = ModelConfig(arch="decoder", vocab_size=37, d_model=16, n_layers=2, n_heads=4, d_ff=32,
                   max_seq_len=64, init_std=0.1)


def _rows(m: torch.Tensor) -> list[str]:
    return ["".join("1" if x else "." for x in r) for r in m.tolist()]


# ------------------------------------------------------------------ patterns vs the papers
def test_strided_pattern_by_hand():
    # Child et al. §4.2, l = 3: A1 = {max(0, i-3) .. i}, A2 = {j : (i - j) mod 3 = 0}, j <= i.
    # Row 6: A1 = 3..6, A2 = {0, 3, 6}; row 7: A1 = 4..7, A2 = {1, 4, 7}.
    assert _rows(pattern_matrix(StridedPattern(3), 8, causal=True)) == [
        "1.......",
        "11......",
        "111.....",
        "1111....",
        ".1111...",
        "..1111..",
        "1..1111.",
        ".1..1111",
    ]


def test_fixed_pattern_by_hand():
    # Child et al. §4.2, l = 3, c = 1: A1 = own block {3 floor(i/3) ..}, A2 = {j : j mod 3 = 2}.
    assert _rows(pattern_matrix(FixedPattern(3, 1), 8, causal=True)) == [
        "1.......",
        "11......",
        "111.....",
        "..11....",
        "..111...",
        "..1111..",
        "..1..11.",
        "..1..111",
    ]


def _sets_strided(n, l, causal):
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        a1 = set(range(max(0, i - l), i + 1)) | (set() if causal else set(range(i, min(n, i + l + 1))))
        a2 = {j for j in range(n) if (i - j) % l == 0 and (j <= i or not causal)}
        for j in a1 | a2:
            out[i, j] = True
    return out


def _sets_fixed(n, l, c, causal):
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        a1 = {j for j in range(n) if j // l == i // l}
        a2 = {j for j in range(n) if j % l in range(l - c, l)}
        for j in a1 | a2:
            out[i, j] = j <= i or not causal
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n,l,c", [(17, 4, 1), (23, 5, 2), (16, 4, 4), (9, 1, 1)])
def test_child_patterns_equal_set_definitions(n, l, c, causal):
    assert torch.equal(pattern_matrix(StridedPattern(l), n, causal), _sets_strided(n, l, causal))
    assert torch.equal(pattern_matrix(FixedPattern(l, c), n, causal), _sets_fixed(n, l, c, causal))


def test_strided_two_layers_reach_every_earlier_position():
    """Child et al. §4.2: the strided pattern's two steps connect every j <= i (O(n sqrt n))."""
    m = pattern_matrix(StridedPattern(4), 40, causal=True).float()
    assert ((m @ m) > 0).equal(pattern_matrix(lambda a, b: a >= b, 40, causal=True))


# ------------------------------------------------------------------------- densities
@pytest.mark.parametrize("n", [1, 7, 16, 30])
def test_densities_equal_formulas(n):
    def count(p, causal):
        return int(pattern_matrix(p, n, causal).sum())

    for w in (1, 3, 8, 40):
        k = min(w, n)
        assert count(LocalPattern(w), True) == k * (k + 1) // 2 + (n - k) * k
        assert count(LocalPattern(w), False) == n + 2 * sum(n - d for d in range(1, k))
    for b in (1, 4, 5, 64):
        full, rest = divmod(n, b)
        assert count(BlockPattern(b), False) == full * b * b + rest * rest
        assert count(BlockPattern(b), True) == full * b * (b + 1) // 2 + rest * (rest + 1) // 2
    for l in (1, 3, 4):
        pairs = n + 2 * sum(n - d for d in range(1, n) if d <= l or d % l == 0)
        assert count(StridedPattern(l), False) == pairs
        assert count(StridedPattern(l), True) == (pairs + n) // 2
        for c in range(1, l + 1):
            blocks = [min(l, n - s) for s in range(0, n, l)]
            a1 = sum(s * (s + 1) // 2 for s in blocks)
            a2 = sum(c * (i // l) for i in range(n))  # summary columns of earlier blocks
            assert count(FixedPattern(l, c), True) == a1 + a2
    for w, g in ((1, 0), (2, 1), (3, 2), (5, 40)):
        # causal: window of min(q+1, w) keys, plus the globals outside it; a global query sees all q+1
        want = sum(q + 1 if q < g else min(q + 1, w) + max(0, min(g, q - w + 1)) for q in range(n))
        assert count(LongformerPattern(w, g), True) == want


@pytest.mark.parametrize("causal", [True, False])
def test_bigbird_density(causal):
    b, w, g, r, nb = 2, 1, 1, 2, 12
    p = BigBirdPattern(b, w, g, r, seed=3, causal=causal, n_blocks=nb)
    n = nb * b
    m = pattern_matrix(p, n, causal)
    want = 0
    for q in range(n):
        qb = q // b
        blocks = {kb for kb in range(nb) if abs(qb - kb) <= w or kb < g or qb < g}
        blocks |= set(bigbird_random_blocks(3, qb, p.candidates(qb), r))
        want += sum(1 for kb in blocks for k in range(kb * b, kb * b + b) if k <= q or not causal)
        n_rand = len(bigbird_random_blocks(3, qb, p.candidates(qb), r))
        assert n_rand == min(r, len(p.candidates(qb)))
    assert int(m.sum()) == want


def test_bigbird_random_blocks_deterministic_and_valid():
    p = BigBirdPattern(4, 1, 1, 3, seed=5, causal=True, n_blocks=20)
    q = BigBirdPattern(4, 1, 1, 3, seed=5, causal=True, n_blocks=40)
    # the same rows for a longer table (a function of seed, query block, key block only)
    assert torch.equal(p.random_table(), q.random_table()[:20, :20])
    t = q.random_table()
    for qb in range(40):
        chosen = t[qb].nonzero().flatten().tolist()
        assert set(chosen) <= set(q.candidates(qb))       # earlier, outside window and globals
        assert len(chosen) == min(3, len(q.candidates(qb)))
    other = BigBirdPattern(4, 1, 1, 3, seed=6, causal=True, n_blocks=40).random_table()
    assert not torch.equal(t, other)


# ---------------------------------------------------------------- degenerate reductions
def _same_weights(cfg_sparse: ModelConfig, cfg_full: ModelConfig):
    torch.manual_seed(0)
    full = build_model(cfg_full).eval()
    sparse = build_model(cfg_sparse).eval()
    sparse.load_state_dict(full.state_dict())
    return sparse, full


def _with(attention: str, arch: str = "decoder", **opts) -> ModelConfig:
    return BASE.replace(arch=arch, layers=[LayerSpec(attention=attention, attention_options=opts)])


DEGENERATE = [
    ("local", {"window": 20}),
    ("local", {"window": 25}),
    ("longformer", {"window": 1, "n_global": 20}),            # all positions global
    ("longformer", {"window": 20, "n_global": 0}),
    ("block-sparse", {"block": 20}),
    ("bigbird", {"block": 4, "window_blocks": 5, "global_blocks": 0, "random_blocks": 0}),
    ("bigbird", {"block": 3, "window_blocks": 0, "global_blocks": 7, "random_blocks": 0}),
    ("bigbird", {"block": 2, "window_blocks": 1, "global_blocks": 0, "random_blocks": 10}),
    ("sparse-strided", {"stride": 19}),
    ("sparse-fixed", {"stride": 20, "c": 1}),
    ("sparse-fixed", {"stride": 4, "c": 4}),
]


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
@pytest.mark.parametrize("name,opts", DEGENERATE)
def test_degenerate_setting_equals_full_attention(name, opts, arch):
    sparse, full = _same_weights(_with(name, arch, **opts), _with("softmax", arch))
    x = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), full(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,opts", [("local", {"window": 4}), ("block-sparse", {"block": 5}),
                                       ("sparse-strided", {"stride": 3})])
def test_sparse_setting_differs_from_full_attention(name, opts):
    sparse, full = _same_weights(_with(name, **opts), _with("softmax"))
    x = torch.randint(0, 37, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (sparse(x) - full(x)).abs().max() > 1e-3


@pytest.mark.parametrize("name,opts", [
    ("local", {"window": 3}), ("longformer", {"window": 2, "n_global": 2, "dilation": 2}),
    ("bigbird", {"block": 2, "window_blocks": 1, "global_blocks": 1, "random_blocks": 1, "seed": 4}),
    ("sparse-strided", {"stride": 3}), ("sparse-fixed", {"stride": 4, "c": 2}),
    ("block-sparse", {"block": 4}),
])
def test_model_uses_the_pattern(name, opts):
    """Reference weights of the model's first layer are zero exactly off the pattern (causal)."""
    from formers.nn.attention.sparse import PatternAttention

    torch.manual_seed(0)
    m = build_model(_with(name, **opts)).eval()
    layer = next(mod for mod in m.modules() if isinstance(mod, PatternAttention))
    allowed = pattern_matrix(layer.pattern(True), 13, causal=True)
    seen = {}
    layer.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    x = torch.randint(0, 37, (1, 13), generator=torch.Generator().manual_seed(2))
    pos = torch.arange(13)
    with torch.no_grad():
        m(x)
        q = layer._heads(layer.q(seen["x"]), layer.n_heads)
        k = layer._heads(layer.k(seen["x"]), layer.n_kv_heads)
        _, w = attend(q, k, k, causal=True, pattern=layer.pattern(True), q_pos=pos, k_pos=pos,
                      return_weights=True)
    assert torch.equal(w[0, 0] > 0, allowed)


# ------------------------------------------------------------------ caches: window, sink-window
CACHED = [
    ("local", {"window": 3}, "window", {"window": 3}, 2),
    ("local", {"window": 3}, "window", {"window": 5}, 4),
    ("block-sparse", {"block": 4}, "window", {"window": 4}, 3),
    ("longformer", {"window": 3, "n_global": 2}, "sink-window", {"sinks": 2, "window": 3}, 4),
    ("longformer", {"window": 2, "n_global": 1, "dilation": 3}, "sink-window", {"sinks": 1, "window": 4}, 4),
    ("longformer", {"window": 3, "n_global": 0}, "window", {"window": 3}, 2),
]


@pytest.mark.parametrize("position", ["rope", "alibi", "learned"])
@pytest.mark.parametrize("name,opts,policy,copts,kept", CACHED)
def test_window_cache_decoding_equals_masked_full_forward(name, opts, policy, copts, kept, position):
    cfg = BASE.replace(position=position, layers=[LayerSpec(attention=name, attention_options=opts,
                                                            cache=policy, cache_options=copts)])
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    x = torch.randint(0, 37, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)
        for sizes in ([1] * 30, [5] + [3] * 7 + [2, 2], [7, 1, 4, 9, 9]):
            cache, outs, start = m.new_cache(), [], 0
            for s in sizes:
                outs.append(m(x[:, start:start + s], cache=cache))
                start += s
                for layer in cache.layers:  # O(window): never more than the policy keeps
                    assert len(layer) <= kept, f"{len(layer)} keys kept > {kept}"
            assert start == 30
            torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,opts,policy,copts", [
    ("local", {"window": 4}, "window", {"window": 3}),                       # keeps too little
    ("longformer", {"window": 3, "n_global": 2}, "window", {"window": 8}),   # evicts the globals
    ("longformer", {"window": 3, "n_global": 2}, "sink-window", {"sinks": 1, "window": 8}),
    ("block-sparse", {"block": 6}, "window", {"window": 5}),
    ("bigbird", {}, "window", {"window": 512}),                              # random blocks reach back
    ("sparse-strided", {}, "window", {"window": 512}),
    ("sparse-fixed", {}, "sink-window", {"sinks": 64, "window": 512}),
])
def test_window_policies_refused_where_the_pattern_reaches_further(name, opts, policy, copts):
    cfg = BASE.replace(layers=[LayerSpec(attention=name, attention_options=opts, cache=policy,
                                         cache_options=copts)])
    with pytest.raises(ValueError, match="evicts keys"):
        make_cache(cfg, cfg.n_layers)


@pytest.mark.parametrize("opts", [
    {"block": 2, "window_blocks": 1, "global_blocks": 1, "random_blocks": 2, "seed": 9},
    {"block": 3, "window_blocks": 0, "global_blocks": 0, "random_blocks": 1},
])
def test_bigbird_cache_equals_full_forward(opts):
    torch.manual_seed(0)
    m = build_model(_with("bigbird", **opts).replace(position="rope")).eval()
    x = torch.randint(0, 37, (2, 25), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache()
        outs = [m(x[:, :6], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(6, 25)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ options
@pytest.mark.parametrize("name,opts,match", [
    ("local", {"window": 0}, "window must be an int >= 1"),
    ("local", {"window": 2.5}, "window"),
    ("longformer", {"n_global": -1}, "n_global must be an int >= 0"),
    ("longformer", {"dilation": 0}, "dilation"),
    ("bigbird", {"block": 0}, "block must be"),
    ("bigbird", {"random_blocks": -2}, "random_blocks"),
    ("sparse-strided", {"stride": True}, "stride"),
    ("sparse-fixed", {"stride": 4, "c": 5}, "c must be <= stride"),
    ("block-sparse", {"block": "8"}, "block"),
])
def test_bad_options_raise(name, opts, match):
    with pytest.raises((ValueError, TypeError), match=match):  # TypeError: the config's type check
        build_model(_with(name, **opts))


def test_cross_attention_refused():
    from formers.registry import get

    with pytest.raises(ValueError, match="cross-attention is not offered"):
        get("attention", "local").obj(BASE, cross=True)


# ------------------------------------------------------------------------- flex path
def test_choose_path():
    kw = dict(pattern=LocalPattern(4), q_len=512, device_type="cuda", flex=True)
    assert choose_path(**kw) == "flex"
    assert choose_path(**{**kw, "device_type": "cpu"}) == "sdpa"
    assert choose_path(**{**kw, "flex": False}) == "sdpa"
    assert choose_path(**{**kw, "pattern": None}) == "sdpa"
    assert choose_path(**{**kw, "q_len": 1}) == "sdpa"           # decoding steps: dense mask
    assert choose_path(**{**kw, "dropout_p": 0.1}) == "sdpa"
    assert choose_path(**kw, bias=torch.zeros(1, requires_grad=True)) == "sdpa"
    assert choose_path(**kw, bias=torch.zeros(1)) == "flex"        # a score_mod adds it
    assert choose_path(**{**kw, "backend": "sdpa"}) == "sdpa"
    assert choose_path(**kw, return_weights=True) == "reference"
    assert choose_path(**{**kw, "backend": "reference"}) == "reference"
    assert choose_path(**{**kw, "backend": "flex", "device_type": "cpu"}) == "flex"
    with pytest.raises(ValueError, match="dropout"):
        choose_path(**{**kw, "backend": "flex", "dropout_p": 0.1})
    with pytest.raises(ValueError, match="not available"):
        choose_path(**{**kw, "backend": "flex", "flex": False})


def test_sparse_mixers_show_the_flex_path_in_the_registry():
    from formers.registry import as_row, get

    for name in ("local", "longformer", "bigbird", "sparse-strided", "sparse-fixed", "block-sparse"):
        assert "flex block mask on CUDA; sdpa dense mask otherwise" in as_row(get("attention", name))["backend"]


FLEX_CASES = {
    "local_causal": (LocalPattern(3), True, 0, None, False),
    "bigbird_bidir_bias": (BigBirdPattern(2, 1, 1, 1, 0, False, 20), False, 0, "alibi", False),
    "fixed_short_q_offset": (FixedPattern(4, 1), True, 5, None, False),
    "longformer_evicted_keys_pad": (LongformerPattern(3, 2), True, 0, "alibi", True),
}


@pytest.mark.skipif(not core.flex_available(), reason="torch without flex_attention")
@pytest.mark.parametrize("case", list(FLEX_CASES))
def test_flex_path_equals_dense_sdpa_path(case):
    """The FlexAttention path (eager form on CPU; the CUDA kernel computes the same function)
    equals the dense-mask SDPA path: block mask from positions, causal alignment, bias as a
    score_mod, key mask, non-contiguous key positions (a sink-window cache), fully masked rows."""
    pattern, causal, offset, bias_kind, evicted = FLEX_CASES[case]
    g = torch.Generator().manual_seed(0)
    b, h, tq, tk, d = 2, 2, 7, 7 + offset, 8
    q, k, v = (torch.randn(b, h, t, d, generator=g) for t in (tq, tk, tk))
    k_pos = torch.arange(tk)
    if evicted:  # keys as a sink-window cache keeps them: sinks 0, 1 then positions 9..15
        k_pos = torch.cat([torch.arange(2), torch.arange(9, 9 + tk - 2)])
    q_pos = k_pos[-tq:]
    kw = dict(causal=causal, pattern=pattern, q_pos=q_pos, k_pos=k_pos)
    if bias_kind == "alibi":
        kw["bias"] = -0.3 * (q_pos[:, None] - k_pos[None, :]).abs().float().expand(h, tq, tk)
    if evicted:
        km = torch.ones(b, tk, dtype=torch.bool)
        km[1, :4] = False  # query rows of batch 1 that see only these keys become fully masked
        kw["key_mask"] = km
    core.CALLS.clear()
    flex, _ = attend(q, k, v, backend="flex", **kw)
    dense, _ = attend(q, k, v, backend="sdpa", **kw)
    assert core.CALLS["flex"] == 1 and core.CALLS["sdpa"] == 1
    assert torch.isfinite(flex).all()
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not core.flex_available(), reason="torch without flex_attention")
def test_flex_block_masks_are_cached_per_pattern_and_offset():
    core._BLOCK_MASKS.clear()
    q = torch.randn(1, 1, 5, 8)
    pos = torch.arange(5)
    for _ in range(2):
        attend(q, q, q, causal=True, pattern=LocalPattern(2), q_pos=pos, k_pos=pos, backend="flex")
    assert len(core._BLOCK_MASKS) == 1
    attend(q, q, q, causal=True, pattern=LocalPattern(2), q_pos=pos + 3, k_pos=pos + 3, backend="flex")
    attend(q, q, q, causal=True, pattern=LocalPattern(3), q_pos=pos, k_pos=pos, backend="flex")
    assert len(core._BLOCK_MASKS) == 3


def test_local_and_block_presets_decode_with_a_window_cache():
    from formers.nn.cache import WindowCache
    from formers.nn.presets import apply_preset

    base = ModelConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, max_seq_len=256)
    for name in ("local", "block-sparse"):
        cache = build_model(apply_preset(name, base)).new_cache()
        assert all(isinstance(c, WindowCache) and c.window == 64 for c in cache.layers)


def test_streaming_preset_window_follows_the_context_length():
    from formers.nn.presets import apply_preset

    small = apply_preset("streaming", ModelConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2,
                                                  max_seq_len=128))
    assert {s.attention_options["window"] for s in small.layers} == {32}
    big = apply_preset("streaming", ModelConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2,
                                                max_seq_len=8192))
    assert {s.attention_options["window"] for s in big.layers} == {1021}
