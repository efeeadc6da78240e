"""Key-Value attention (Borji, arXiv 2305.19129): the paper tests of the research notes
(``shared/papers/architecture.md`` §4 (d)).

1. symmetric scores without positions (and the causal version agrees on the unmasked entries);
2. tying W_Q := W_K in softmax attention reproduces KV attention exactly;
3. KV-pos is asymmetric, and with P zeroed, w = e_1, b = 0 it reduces to KV;
4. parameter counts (d^2 + d fewer per layer; + c + 1 for the positional map);
5. the (n, n) bias path equals an explicit (n, n, c) pair path on a small case.
"""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model, count_params
from formers.nn.attention.kv import KVAttention, KVPosAttention, pair_encoding, pair_encoding_factors
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.context import Context
from formers.nn.position import build_position

CFG = ModelConfig(d_model=16, n_heads=2, max_seq_len=64, d_ff=32, n_layers=2, vocab_size=23)


def _ctx(t: int, causal: bool, position: str = "none", capture: dict | None = None,
         cfg: ModelConfig = CFG) -> Context:
    pos = build_position(cfg.replace(position=position))
    return Context(positions=torch.arange(t), causal=causal, position=pos, capture=capture)


def _randomise(m: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ------------------------------------------------------------------------- 1. symmetric scores
def test_symmetric_scores_without_mask_and_masked_agree():
    m = KVAttention(CFG).eval()
    _randomise(m)
    x = torch.randn(2, 7, 16)
    cap: dict = {}
    m(x, _ctx(7, causal=False, capture=cap))
    q, k, w = cap["layer0.attn.q"], cap["layer0.attn.k"], cap["layer0.attn.weights"]
    assert torch.equal(q, k), "the queries are the keys"
    s = q @ k.transpose(-1, -2) / math.sqrt(CFG.head_dim)
    torch.testing.assert_close(s, s.transpose(-1, -2), atol=0, rtol=0)
    torch.testing.assert_close(w, torch.softmax(s, -1))
    # softmax rows of a symmetric S satisfy A_ij Z_i = A_ji Z_j
    z = torch.exp(s).sum(-1, keepdim=True)
    torch.testing.assert_close(w * z, (w * z).transpose(-1, -2), rtol=1e-5, atol=1e-6)
    # causal: the same scores on the unmasked entries, zero weight on the masked ones
    cap_c: dict = {}
    m(x, _ctx(7, causal=True, capture=cap_c))
    wc = cap_c["layer0.attn.weights"]
    tri = torch.ones(7, 7, dtype=torch.bool).tril()
    expect = torch.softmax(s.masked_fill(~tri, float("-inf")), -1)
    torch.testing.assert_close(wc, expect)
    assert (wc[..., ~tri] == 0).all()


# -------------------------------------------------------------------- 2. tying W_Q := W_K
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("position", ["none", "rope", "alibi"])
def test_tied_softmax_attention_equals_kv(causal, position):
    kv = KVAttention(CFG).eval()
    _randomise(kv)
    sm = SoftmaxAttention(CFG).eval()
    with torch.no_grad():
        sm.q.load_state_dict(kv.k.state_dict())
        sm.k.load_state_dict(kv.k.state_dict())
        sm.v.load_state_dict(kv.v.state_dict())
        sm.o.load_state_dict(kv.o.state_dict())
    x = torch.randn(2, 9, 16)
    ctx = _ctx(9, causal, position)
    torch.testing.assert_close(kv(x, ctx), sm(x, ctx), atol=0, rtol=0)


# ----------------------------------------------------- 3 + 5. the positional variant (kv-pos)
def _explicit_pair_forward(m: KVPosAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The reference computation: S (B,H,n,n) -> S[..., None] + P (n,n,c) -> Linear(c, 1)."""
    b, n, d = x.shape
    h, hd = m.n_heads, m.head_dim
    k = m.k(x).view(b, n, h, hd).transpose(1, 2)
    v = m.v(x).view(b, n, h, hd).transpose(1, 2)
    s = k @ k.transpose(-1, -2) / math.sqrt(hd)
    p = pair_encoding(n, m.pos_channels)                                   # (n, n, c)
    w = m.pos_weight.view(-1, m.pos_channels)                              # (maps, c)
    s5 = s[..., None] + p                                                  # (B, H, n, n, c)
    s2 = torch.einsum("bhijc,hc->bhij", s5, w.expand(h, -1)) + m.pos_bias.expand(h)[:, None, None]
    if causal:
        s2 = s2.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    out = torch.softmax(s2, -1) @ v
    return m.o(out.transpose(1, 2).reshape(b, n, d))


def _reference_pe2d(n: int, c: int) -> torch.Tensor:
    """An independent, loop-based transcription of PositionalEncoding2D(c) (positional_encodings)."""
    inner = int(math.ceil(c / 4) * 2)
    freqs = [1.0 / 10000 ** (2 * k / inner) for k in range(inner // 2)]
    p = torch.zeros(n, n, 2 * inner, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            for k, f in enumerate(freqs):
                p[i, j, 2 * k], p[i, j, 2 * k + 1] = math.sin(i * f), math.cos(i * f)
                p[i, j, inner + 2 * k], p[i, j, inner + 2 * k + 1] = math.sin(j * f), math.cos(j * f)
    return p[..., :c].float()


@pytest.mark.parametrize("c", [10, 3, 4])
def test_pair_encoding_matches_positional_encodings_layout(c):
    torch.testing.assert_close(pair_encoding(6, c), _reference_pe2d(6, c))
    if c == 10:  # hand values: channel 0 = sin(i), 6 = sin(j), 8 = sin(j * 10000^(-1/3))
        p = pair_encoding(6, 10)
        assert p[3, 5, 0] == pytest.approx(math.sin(3)) and p[3, 5, 1] == pytest.approx(math.cos(3))
        assert p[3, 5, 6] == pytest.approx(math.sin(5))
        assert p[3, 5, 8] == pytest.approx(math.sin(5 * 10000 ** (-1 / 3)))
        phi, psi = pair_encoding_factors(6, 10)
        assert phi.shape == (6, 6) and psi.shape == (6, 4)


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_bias_path_equals_explicit_pair_path(per_head, causal):
    m = KVPosAttention(CFG, pos_per_head=per_head).eval()
    _randomise(m, seed=1)
    x = torch.randn(2, 8, 16)
    out = m(x, _ctx(8, causal))
    ref = _explicit_pair_forward(m, x, causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for backend in ("sdpa", "reference"):
        m.backend = backend
        torch.testing.assert_close(m(x, _ctx(8, causal)), ref, atol=1e-5, rtol=1e-5)


def test_bias_is_n_by_n_not_n_by_n_by_c():
    m = KVPosAttention(CFG, pos_per_head=True)
    pos = torch.arange(8)
    assert m.pair_bias(pos, pos).shape == (CFG.n_heads, 8, 8)
    assert KVPosAttention(CFG).pair_bias(pos, pos).shape == (1, 8, 8)
    # the stored factors are O(n c), not O(n^2 c)
    assert m.pos_row.numel() + m.pos_col.numel() == CFG.max_seq_len * m.pos_channels


def test_positional_scores_are_asymmetric():
    m = KVPosAttention(CFG).eval()
    _randomise(m, seed=2)
    x = torch.randn(1, 8, 16)
    cap: dict = {}
    m(x, _ctx(8, causal=False, capture=cap))
    q, k, bias = cap["layer0.attn.q"], cap["layer0.attn.k"], cap["layer0.attn.pair_bias"]
    s = q @ k.transpose(-1, -2) / math.sqrt(CFG.head_dim) + bias
    assert (s - s.transpose(-1, -2)).abs().max() > 1e-3


def test_positional_variant_reduces_to_kv():
    """P zeroed, w = e_1, b = 0: S' = S, so KV-pos equals symmetric KV with the same K, V, O."""
    pos = KVPosAttention(CFG).eval()
    _randomise(pos, seed=3)
    kv = KVAttention(CFG).eval()
    kv.load_state_dict({k: v for k, v in pos.state_dict().items() if not k.startswith("pos_")})
    with torch.no_grad():
        pos.pos_row.zero_()
        pos.pos_col.zero_()
        pos.pos_weight.zero_()
        pos.pos_weight[0] = 1.0
        pos.pos_bias.zero_()
    x = torch.randn(2, 9, 16)
    for causal in (False, True):
        torch.testing.assert_close(pos(x, _ctx(9, causal)), kv(x, _ctx(9, causal)),
                                   atol=1e-5, rtol=1e-5)


def test_query_row_term_cancels_in_softmax():
    """A fact of the paper's encoding: w_row . phi(i) + b is constant along each row of S', so
    changing the row weights or b leaves the output unchanged; changing the column weights does not."""
    m = KVPosAttention(CFG).eval()
    _randomise(m, seed=4)
    x = torch.randn(2, 9, 16)
    base = m(x, _ctx(9, True))
    n_row = m.pos_row.shape[1]
    w0 = m.pos_weight.detach().clone()
    with torch.no_grad():
        # change the row weights but keep the temperature sum(w) by compensating on channel 0
        delta = torch.randn(n_row - 1)
        m.pos_weight[1:n_row] += delta
        m.pos_weight[0] -= delta.sum()
        m.pos_bias += 3.0
    torch.testing.assert_close(m(x, _ctx(9, True)), base, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        m.pos_weight.copy_(w0)
        m.pos_weight[n_row] += 1.0
        m.pos_weight[0] -= 1.0
    assert (m(x, _ctx(9, True)) - base).abs().max() > 1e-4


# ------------------------------------------------------------------------ 4. parameter counts
def _model(attention: str, **opts) -> torch.nn.Module:
    return build_model(CFG.replace(layers=[LayerSpec(attention=attention, attention_options=opts)]))


def test_parameter_counts():
    d, layers, c = CFG.d_model, CFG.n_layers, 10
    qkv = count_params(_model("softmax"))
    kv = count_params(_model("kv"))
    assert qkv - kv == layers * (d * d + d)  # W_Q and its bias
    assert count_params(_model("kv-pos")) - kv == layers * (c + 1)
    assert count_params(_model("kv-pos", pos_per_head=True)) - kv == layers * CFG.n_heads * (c + 1)
    assert count_params(_model("kv-pos", pos_channels=4)) - kv == layers * 5


# -------------------------------------------------------------------- decoding and errors
@pytest.mark.parametrize("attention,opts", [("kv", {}), ("kv-pos", {"pos_per_head": True})])
@pytest.mark.parametrize("position", ["rope", "alibi"])
@torch.no_grad()
def test_cached_decoding_equals_full(attention, opts, position):
    torch.manual_seed(0)
    cfg = CFG.replace(position=position, init_std=0.1,
                      layers=[LayerSpec(attention=attention, attention_options=opts)])
    m = build_model(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 11))
    full = m(x)
    cache = m.new_cache()
    inc = torch.cat([m(x[:, :4], cache=cache)] + [m(x[:, i:i + 1], cache=cache) for i in range(4, 11)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_gqa_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="n_kv_heads"):
        KVAttention(CFG.replace(n_kv_heads=1))
    with pytest.raises(ValueError, match="pos_channels"):
        KVPosAttention(CFG, pos_channels=0)
    with pytest.raises(ValueError, match="does not take"):
        _model("kv", bogus=1)


def test_presets():
    from formers.nn.presets import apply_preset

    c = apply_preset("kv-attention", CFG.replace(n_kv_heads=1))
    assert c.attention == "kv" and c.n_kv_heads is None
    c = apply_preset("kv-attention-pos", CFG.replace(layers=[LayerSpec(ffn="swiglu")]))
    assert c.layer_spec(0).attention == "kv-pos" and c.layer_spec(0).ffn == "swiglu"


# ------------------------------------------------------------ composes with value residual
@pytest.mark.parametrize("attention", ["kv", "kv-pos"])
@torch.no_grad()
def test_value_residual_composes(attention):
    """Mix (0, 1) equals plain KV attention; SVFormer 'shared' drops W_V and decodes with a cache."""
    cfg = CFG.replace(init_std=0.1, layers=[LayerSpec(attention=attention)])
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    torch.manual_seed(0)
    mixed = build_model(cfg.replace(value_residual="mix", value_lambda_first=0.0,
                                    value_lambda_self=1.0)).eval()
    mixed.load_state_dict(plain.state_dict())
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    torch.testing.assert_close(mixed(x), plain(x), atol=1e-6, rtol=0)
    shared = build_model(cfg.replace(value_residual="shared")).eval()
    assert shared.stack.blocks[1].mixer.v is None
    full = shared(x)
    cache = shared.new_cache()
    inc = torch.cat([shared(x[:, :4], cache=cache)] + [shared(x[:, i:i + 1], cache=cache)
                                                         for i in range(4, 9)], 1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
