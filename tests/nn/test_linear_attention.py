"""Linear transformer (Katharopoulos et al., arXiv 2006.16236) and the shared causal machinery.

1. the chunked prefix-sum scan equals the explicit masked O(n^2) form (float64, any chunk size,
   with a carried state), and so does the prefix normaliser;
2. the mixer's causal fast path equals its explicit reference backend, and an independent
   per-position computation of eq. 7-10 (with and without RoPE, with padding);
3. decoding one token at a time through the recurrent state equals the full forward, and the
   state has a fixed size (no keys are kept);
4. the bidirectional path equals the explicit dense form; padded keys contribute nothing;
5. results do not depend on the chunk size;
6. RoPE (numerator-only, on the features) makes outputs depend on relative positions only;
7. options are validated.
"""

from __future__ import annotations

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.linear import (
    LinearAttention, causal_scan, explicit_kernel_attention, prefix_normaliser,
)
from formers.nn.cache import RecurrentCache
from formers.nn.context import Context
from formers.nn.position import build_position

CFG = ModelConfig(d_model=16, n_heads=2, max_seq_len=64, d_ff=32, n_layers=2, vocab_size=23)


def _ctx(t: int, causal: bool, position: str = "none", offset: int = 0,
         key_mask: torch.Tensor | None = None) -> Context:
    pos = build_position(CFG.replace(position=position)).double()
    return Context(positions=torch.arange(offset, offset + t), causal=causal, position=pos,
                   key_mask=key_mask)


def _mixer(seed: int = 0, **opts) -> LinearAttention:
    torch.manual_seed(seed)
    m = LinearAttention(CFG, **opts).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.4)
    return m


def _x(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, CFG.d_model, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _phi(x: torch.Tensor) -> torch.Tensor:  # elu(x) + 1 written out
    return torch.where(x > 0, x + 1.0, torch.exp(x))


def _rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # half-split RoPE written out
    d = x.shape[-1]
    inv = CFG.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)


def _per_position(m: LinearAttention, x: torch.Tensor, causal: bool, rope: bool = False,
                  keep: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """out_i = sum_j (R_i phi(q_i)).(R_j phi(k_j)) v_j / (sum_j phi(q_i).phi(k_j) + eps), each
    position on its own (eq. 7-10, RoFormer eq. 19 for RoPE)."""
    b, t, _ = x.shape
    h, hd = m.n_heads, m.head_dim
    q = m.q(x).view(b, t, h, hd)
    k = m.k(x).view(b, t, h, hd)
    v = m.v(x).view(b, t, h, hd)
    pos = torch.arange(offset, offset + t)
    out = torch.zeros(b, t, h, hd, dtype=x.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                num = torch.zeros(hd, dtype=x.dtype)
                den = torch.zeros((), dtype=x.dtype)
                fq = _phi(q[bi, i, hi])
                for j in range(t if not causal else i + 1):
                    if keep is not None and not keep[bi, j]:
                        continue
                    fk = _phi(k[bi, j, hi])
                    s = (_rope(fq, pos[i:i + 1])[0] @ _rope(fk, pos[j:j + 1])[0]) if rope else fq @ fk
                    num = num + s * v[bi, j, hi]
                    den = den + fq @ fk
                out[bi, i, hi] = num / (den + m.eps)
    return m.o(out.reshape(b, t, h * hd))


# ----------------------------------------------------------------------- 1. the shared scan
@pytest.mark.parametrize("chunk", [1, 3, 5, 13, 64])
def test_causal_scan_equals_explicit_masked_form(chunk):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(2, 3, 13, 5, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 13, 4, generator=g, dtype=torch.float64)
    s0 = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    z0 = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    num, s1 = causal_scan(a, b, v, s0, chunk)
    scores = (a @ b.transpose(-1, -2)) * torch.ones(13, 13, dtype=torch.float64).tril()
    torch.testing.assert_close(num, scores @ v + a @ s0, atol=1e-12, rtol=0)
    torch.testing.assert_close(num, explicit_kernel_attention(a, b, v, True, s0), atol=1e-12, rtol=0)
    torch.testing.assert_close(s1, s0 + b.transpose(-1, -2) @ v, atol=1e-12, rtol=0)
    den, z1 = prefix_normaliser(a, b, z0)
    torch.testing.assert_close(den, scores.sum(-1) + (a * z0[:, :, None]).sum(-1), atol=1e-12, rtol=0)
    torch.testing.assert_close(z1, z0 + b.sum(2), atol=1e-12, rtol=0)


def test_causal_scan_in_pieces_equals_one_pass():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(1, 2, 11, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, 11, 3, generator=g, dtype=torch.float64)
    whole, s_whole = causal_scan(a, b, v, None, 4)
    parts, s = [], None
    for lo, hi in [(0, 1), (1, 5), (5, 6), (6, 11)]:
        out, s = causal_scan(a[:, :, lo:hi], b[:, :, lo:hi], v[:, :, lo:hi], s, 2)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(s, s_whole, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------- 2. causal mixer
@pytest.mark.parametrize("position", ["none", "rope"])
def test_causal_fast_equals_reference_and_per_position(position):
    x = _x(2, 9)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 2] = keep[1, 6] = False
    fast, ref = _mixer(chunk_size=4), _mixer(backend="reference")
    with torch.no_grad():
        for km in (None, keep):
            a = fast(x, _ctx(9, True, position, key_mask=km))
            r = ref(x, _ctx(9, True, position, key_mask=km))
            torch.testing.assert_close(a, r, atol=1e-12, rtol=0)
            direct = _per_position(fast, x, causal=True, rope=position == "rope", keep=km)
            # the backbone's RoPE tables are stored in fp32: 1e-6 against angles made here
            torch.testing.assert_close(a, direct, atol=1e-6 if position == "rope" else 1e-12, rtol=0)


def test_hand_computed_single_head_case():
    """One head of width 1, identity projections: out_i = sum_j phi(x_i) phi(x_j) x_j / (...)."""
    cfg = ModelConfig(d_model=1, n_heads=1, max_seq_len=8, d_ff=4, n_layers=1, vocab_size=5, bias=False)
    m = LinearAttention(cfg, eps=0.0).double()
    with torch.no_grad():
        for lin in (m.q, m.k, m.v, m.o):
            lin.weight.fill_(1.0)
    x = torch.tensor([[[1.0], [-1.0], [2.0]]], dtype=torch.float64)
    e = torch.exp(torch.tensor(-1.0, dtype=torch.float64))
    phi = torch.tensor([2.0, float(e), 3.0], dtype=torch.float64)   # elu+1 of 1, -1, 2
    want = torch.tensor([
        1.0,                                                        # only itself: v_0
        (2 * 1 + e * -1) / (2 + e),                                 # phi(q_1) cancels
        (2 * 1 + e * -1 + 3 * 2) / (2 + e + 3),
    ], dtype=torch.float64)
    ctx = Context(positions=torch.arange(3), causal=True)
    with torch.no_grad():
        out = m(x, ctx)[0, :, 0]
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    assert phi.min() > 0


# ----------------------------------------------------------------------- 3. recurrent decoding
@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_decoding_one_token_at_a_time_equals_full(position, backend):
    m = _mixer(backend=backend, chunk_size=3)
    x = _x(2, 10)
    with torch.no_grad():
        full = m(x, _ctx(10, True, position))
        cache, outs, shapes = RecurrentCache(), [], set()
        for i in range(10):
            outs.append(m(x[:, i:i + 1], _ctx(1, True, position, offset=i), cache))
            shapes.add(tuple((n, tuple(s.shape)) for n, s in sorted(cache.state.items())))
        assert len(cache) == 0 and cache.k is None, "a recurrent cache must hold no keys"
        assert len(shapes) == 1, f"the state changed size while decoding: {shapes}"
        assert dict(next(iter(shapes))) == {"S": (2, 2, 8, 8), "z": (2, 2, 8)}
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


def test_model_decodes_with_recurrent_policy_and_constant_state():
    cfg = CFG.replace(layers=[LayerSpec(attention="linear")], position="rope")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        assert all(isinstance(c, RecurrentCache) for c in cache.layers)
        outs, sizes = [model(ids[:, :5], cache=cache)], []
        for i in range(5, 12):
            outs.append(model(ids[:, i:i + 1], cache=cache))
            sizes.append(cache.nbytes())
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)
    assert len(set(sizes)) == 1 and sizes[0] > 0


# ----------------------------------------------------------------------- 4. bidirectional
def test_bidirectional_equals_explicit_and_padding_is_dropped():
    x = _x(2, 7)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[0, 5:] = False
    keep[1, 1] = False
    m, r = _mixer(), _mixer(backend="reference")
    with torch.no_grad():
        for km in (None, keep):
            out = m(x, _ctx(7, False, key_mask=km))
            torch.testing.assert_close(out, r(x, _ctx(7, False, key_mask=km)), atol=1e-12, rtol=0)
            torch.testing.assert_close(out, _per_position(m, x, False, keep=km), atol=1e-12, rtol=0)
        # row 0 with its padded tail removed gives the same outputs at the kept positions
        short = m(x[:1, :5], _ctx(5, False))
        padded = m(x[:1], _ctx(7, False, key_mask=keep[:1]))
    torch.testing.assert_close(padded[:, :5], short, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------- 5. chunk size
@pytest.mark.parametrize("causal", [True, False])
def test_result_does_not_depend_on_chunk_size(causal):
    x = _x(2, 37)
    with torch.no_grad():
        outs = [_mixer(chunk_size=c)(x, _ctx(37, causal, "rope")) for c in (1, 4, 16, 37, 100)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------- 6. RoPE
def test_rope_on_features_is_relative():
    """Shifting every position by the same offset leaves the outputs unchanged (the numerator
    depends on i - j only); rotating q, k before elu+1 would not have this property."""
    m = _mixer()
    x = _x(1, 8)
    with torch.no_grad():
        a = m(x, _ctx(8, True, "rope"))
        b = m(x, _ctx(8, True, "rope", offset=17))
        c = m(x, _ctx(8, True, "none"))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # the RoPE tables are fp32
    assert (a - c).abs().max() > 1e-2, "RoPE had no effect"


# ----------------------------------------------------------------------- 7. options
@pytest.mark.parametrize("opts,match", [
    ({"chunk_size": 0}, "chunk_size"), ({"chunk_size": 2.0}, "chunk_size"),
    ({"eps": -1.0}, "eps"), ({"backend": "sdpa"}, "backend"), ({"cross": True}, "cross"),
    ({"own_values": False}, "own_values"),
])
def test_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        LinearAttention(CFG, **opts)


def test_alibi_is_refused_at_build():
    with pytest.raises(ValueError, match="ALiBi"):
        build_model(CFG.replace(layers=[LayerSpec(attention="linear")], position="alibi"))


def test_gqa_equals_mha_with_tiled_key_value_heads():
    """n_kv_heads=1: every query head uses the one key/value head (repeated)."""
    gqa = LinearAttention(CFG.replace(n_kv_heads=1)).double()
    mha = LinearAttention(CFG).double()
    with torch.no_grad():
        for lin in ("q", "o"):
            getattr(mha, lin).load_state_dict(getattr(gqa, lin).state_dict())
        for lin in ("k", "v"):
            src, dst = getattr(gqa, lin), getattr(mha, lin)
            dst.weight.copy_(src.weight.repeat(2, 1))
            dst.bias.copy_(src.bias.repeat(2))
        x = _x(2, 6)
        for causal in (True, False):
            torch.testing.assert_close(gqa(x, _ctx(6, causal)), mha(x, _ctx(6, causal)),
                                       atol=1e-12, rtol=0)
