"""Performer / FAVOR+ (Choromanski et al., arXiv 2009.14794).

1. the positive random-feature estimate of the softmax kernel converges to exp(q.k) (relative
   MSE ~ 1/m) and FAVOR+ attention to exact softmax attention (error ~ 1/sqrt(m)), fixed seeds;
   orthogonal features beat iid ones at equal m (Theorem 2);
2. the mixer with many features matches softmax attention with the same weights (causal and
   bidirectional), with an error that shrinks as n_features grows;
3. features are positive; the stabilised features give exactly the unbiased estimate's output;
4. orthogonal blocks are orthogonal, rows are marginally N(0, I);
5. redraw changes the features deterministically (seed, redraw count), also through
   ``redraw_interval`` in training mode only, and survives a state_dict round trip;
6. causal fast path == explicit O(n^2) form == per-position computation; decoding one token at a
   time through the recurrent state == full forward; no dependence on the chunk size.
"""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import ModelConfig
from formers.nn.attention.performer import (
    PerformerAttention, random_projection, softmax_kernel_features,
)
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.cache import RecurrentCache
from formers.nn.context import Context
from formers.nn.position import build_position

CFG = ModelConfig(d_model=16, n_heads=2, max_seq_len=64, d_ff=32, n_layers=2, vocab_size=23)


def _ctx(t: int, causal: bool, position: str = "none", offset: int = 0,
         key_mask: torch.Tensor | None = None) -> Context:
    pos = build_position(CFG.replace(position=position)).double()
    return Context(positions=torch.arange(offset, offset + t), causal=causal, position=pos,
                   key_mask=key_mask)


def _mixer(wseed: int = 0, scale: float = 0.3, **opts) -> PerformerAttention:
    """A float64 mixer with weights drawn from ``wseed``; ``seed`` (the features') defaults to 123."""
    opts.setdefault("seed", 123)
    m = PerformerAttention(CFG, **opts).double()
    g = torch.Generator().manual_seed(wseed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return m


def _x(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, CFG.d_model, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _phi(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # Lemma 1 written out
    return torch.exp(x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(w.shape[0])


# -------------------------------------------------------------------- 1. kernel convergence
def _qkv(n: int = 16, d: int = 8):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5 * d ** -0.25 for _ in range(2))
    return q, k, torch.randn(n, d, generator=g, dtype=torch.float64)


def _errors(m: int, orthogonal: bool, seeds: range) -> tuple[float, float]:
    """Mean over seeds of the kernel's relative MSE and the attention output's RMS error."""
    q, k, v = _qkv()
    kern = torch.exp(q @ k.T)
    exact = torch.softmax(q @ k.T, -1) @ v
    kerr = aerr = 0.0
    for s in seeds:
        w = random_projection(m, q.shape[1], 1000 + s, orthogonal)
        fq, fk = softmax_kernel_features(q, w), softmax_kernel_features(k, w)
        torch.testing.assert_close(fq, _phi(q, w))
        kerr += float(((fq @ fk.T) / kern - 1).pow(2).mean())
        est = (fq @ (fk.T @ v)) / (fq @ fk.sum(0))[:, None]
        aerr += float((est - exact).pow(2).mean().sqrt())
    return kerr / len(seeds), aerr / len(seeds)


def test_random_features_converge_to_softmax_kernel_and_attention():
    ms = (8, 64, 512, 4096)
    errs = [_errors(m, True, range(20)) for m in ms]
    kerr, aerr = [e[0] for e in errs], [e[1] for e in errs]
    assert all(a > b for a, b in zip(kerr, kerr[1:])), f"kernel MSE does not shrink: {kerr}"
    assert all(a > b for a, b in zip(aerr, aerr[1:])), f"attention error does not shrink: {aerr}"
    # unbiased estimator: relative MSE ~ c / m (512x more features: > 100x less MSE) ...
    assert kerr[-1] < kerr[0] / 100 and kerr[-1] < 2e-3, kerr
    # ... and the attention error ~ 1 / sqrt(m) (ideal ratio sqrt(512) = 22.6)
    assert aerr[-1] < aerr[0] / 8 and aerr[-1] < 1.5e-2, aerr


def test_orthogonal_features_beat_iid_at_equal_m():
    for m in (8, 64):
        orth, iid = _errors(m, True, range(100))[0], _errors(m, False, range(100))[0]
        assert orth < iid, f"m={m}: orthogonal MSE {orth:.4f} >= iid MSE {iid:.4f}"


# -------------------------------------------------------------------- 2. the mixer vs softmax
def _softmax_twin(p: PerformerAttention) -> SoftmaxAttention:
    s = SoftmaxAttention(CFG).double()
    s.load_state_dict({n: t for n, t in p.state_dict().items() if n.split(".")[0] in "qkvo"})
    return s


@pytest.mark.parametrize("causal", [True, False])
def test_mixer_approaches_softmax_attention_as_features_grow(causal):
    """Relative error of the layer output against softmax attention with the same weights, mean
    over 3 feature seeds: shrinks with n_features roughly as 1/sqrt(m) (ideal ratio 16)."""
    x = _x(2, 10)
    errs = []
    with torch.no_grad():
        exact = _softmax_twin(_mixer(scale=0.12))(x, _ctx(10, causal))
        for m in (16, 256, 4096):
            e = 0.0
            for seed in range(3):
                out = _mixer(scale=0.12, n_features=m, seed=seed)(x, _ctx(10, causal))
                e += float((out - exact).abs().mean() / exact.abs().mean())
            errs.append(e / 3)
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < errs[0] / 6 and errs[2] < 0.03, errs


def test_rope_before_features_estimates_rope_softmax():
    """With RoPE, FAVOR+ estimates softmax attention over the rotated q, k."""
    x = _x(1, 8)
    with torch.no_grad():
        exact = _softmax_twin(_mixer(scale=0.12))(x, _ctx(8, True, "rope"))
        approx = _mixer(scale=0.12, n_features=8192, seed=3)(x, _ctx(8, True, "rope"))
        no_rope = _mixer(scale=0.12, n_features=8192, seed=3)(x, _ctx(8, True, "none"))
    err = float((approx - exact).abs().mean() / exact.abs().mean())
    other = float((no_rope - exact).abs().mean() / exact.abs().mean())
    assert err < 0.03 and err < other / 3, (err, other)


# -------------------------------------------------------------------- 3. features
def test_features_positive_and_stabilised_equals_unbiased():
    m = _mixer(n_features=24)
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 2, 9, 8, generator=g, dtype=torch.float64)
    fq, fk, _, _ = m.features(q, k, torch.arange(9), _ctx(9, True))
    assert (fq > 0).all() and (fk > 0).all()
    assert (fk <= 1.0 / math.sqrt(24) * math.exp(0.25 * float((m.projection.double() ** 2).sum(-1).max())) + 1e-12).all()
    w, s = m.projection.double(), 8 ** -0.25
    uq, uk = _phi(q * s, w), _phi(k * s, w)
    assert (uq > 0).all() and (uk > 0).all()
    for causal in (True, False):
        mask = torch.ones(9, 9, dtype=torch.float64).tril() if causal else torch.ones(9, 9, dtype=torch.float64)
        a = (uq @ uk.transpose(-1, -2)) * mask
        want = (a @ v) / a.sum(-1, keepdim=True)
        b = (fq @ fk.transpose(-1, -2)) * mask
        torch.testing.assert_close((b @ v) / b.sum(-1, keepdim=True), want, atol=1e-12, rtol=0)
    # large inputs stay finite (no overflow in either exponent)
    with torch.no_grad():
        out = _mixer(scale=3.0)(_x(1, 9) * 10, _ctx(9, True))
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------- 4. orthogonal blocks
def test_orthogonal_blocks_are_orthogonal():
    d = 8
    w = random_projection(20, d, seed=7)
    assert w.shape == (20, d)
    for lo, hi in ((0, 8), (8, 16), (16, 20)):
        gram = w[lo:hi] @ w[lo:hi].T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-10, f"rows {lo}:{hi} not orthogonal"
    across = w[0:8] @ w[8:16].T
    assert across.abs().max() > 1e-3, "different blocks should be independent, not orthogonal"
    iid = random_projection(8, d, seed=7, orthogonal=False)
    assert (iid @ iid.T - torch.diag(torch.diagonal(iid @ iid.T))).abs().max() > 1e-2
    norms = w.norm(dim=1)
    assert norms.std() > 0.1, "rows should carry chi-distributed norms, not unit norms"
    big = random_projection(4000, d, seed=1)
    assert abs(float((big ** 2).sum(1).mean()) - d) < 0.3, "rows are not marginally N(0, I)"
    assert abs(float(big.mean())) < 0.05


# -------------------------------------------------------------------- 5. redraw
def test_redraw_is_deterministic_and_changes_features():
    a, b = _mixer(n_features=12), _mixer(n_features=12)
    p0 = a.projection.clone()
    torch.testing.assert_close(b.projection, p0, atol=0, rtol=0)
    a.redraw()
    assert (a.projection - p0).abs().max() > 0.1 and int(a.n_redraws) == 1
    b.redraw()
    torch.testing.assert_close(b.projection, a.projection, atol=0, rtol=0)
    a.redraw()
    p2 = a.projection.clone()
    assert (p2 - b.projection).abs().max() > 0.1
    c = _mixer(n_features=12, seed=999)
    assert (c.projection - p0).abs().max() > 0.1, "another seed must give other features"
    # a state_dict round trip restores seed, redraw count and features
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.projection, p2, atol=0, rtol=0)
    c.redraw()
    a.redraw()
    torch.testing.assert_close(c.projection, a.projection, atol=0, rtol=0)
    # seed=None: drawn from the global RNG, so torch.manual_seed fixes it
    torch.manual_seed(5)
    s1 = int(PerformerAttention(CFG).seed)
    torch.manual_seed(5)
    assert int(PerformerAttention(CFG).seed) == s1


def test_redraw_interval_in_training_only():
    m = _mixer(redraw_interval=2, n_features=12)
    ref = _mixer(n_features=12)
    x = _x(1, 5)
    m.eval()
    for _ in range(4):
        m(x, _ctx(5, True))
    torch.testing.assert_close(m.projection, ref.projection, atol=0, rtol=0)
    m.train()
    m(x, _ctx(5, True))
    torch.testing.assert_close(m.projection, ref.projection, atol=0, rtol=0)
    m(x, _ctx(5, True))
    ref.redraw()
    torch.testing.assert_close(m.projection, ref.projection, atol=0, rtol=0)
    assert int(m.n_redraws) == 1


# -------------------------------------------------------------------- 6. causal machinery
def _per_position(m: PerformerAttention, x: torch.Tensor, causal: bool,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    b, t, _ = x.shape
    h, hd = m.n_heads, m.head_dim
    w, s = m.projection.double(), hd ** -0.25
    q = m.q(x).view(b, t, h, hd) * s
    k = m.k(x).view(b, t, h, hd) * s
    v = m.v(x).view(b, t, h, hd)
    out = torch.zeros(b, t, h, hd, dtype=x.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(t):
                fq = _phi(q[bi, i, hi], w)
                num, den = torch.zeros(hd, dtype=x.dtype), torch.zeros((), dtype=x.dtype)
                for j in range(i + 1 if causal else t):
                    if keep is not None and not keep[bi, j]:
                        continue
                    kv = fq @ _phi(k[bi, j, hi], w)
                    num, den = num + kv * v[bi, j, hi], den + kv
                out[bi, i, hi] = num / den
    return m.o(out.reshape(b, t, h * hd))


@pytest.mark.parametrize("causal", [True, False])
def test_fast_equals_reference_and_per_position(causal):
    x = _x(2, 9)
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 3] = keep[1, 7] = False
    fast, ref = _mixer(n_features=10, chunk_size=4), _mixer(n_features=10, backend="reference")
    with torch.no_grad():
        for km in (None, keep):
            a = fast(x, _ctx(9, causal, key_mask=km))
            torch.testing.assert_close(a, ref(x, _ctx(9, causal, key_mask=km)), atol=1e-12, rtol=0)
            torch.testing.assert_close(a, _per_position(fast, x, causal, km), atol=1e-12, rtol=0)


@pytest.mark.parametrize("position", ["none", "rope"])
def test_decoding_one_token_at_a_time_equals_full(position):
    m = _mixer(n_features=10, chunk_size=3)
    x = _x(2, 10)
    with torch.no_grad():
        full = m(x, _ctx(10, True, position))
        cache, outs = RecurrentCache(), []
        for i in range(10):
            outs.append(m(x[:, i:i + 1], _ctx(1, True, position, offset=i), cache))
            assert {n: tuple(s.shape) for n, s in cache.state.items()} == {"S": (2, 2, 10, 8),
                                                                           "z": (2, 2, 10)}
    assert cache.k is None
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


def test_result_does_not_depend_on_chunk_size():
    x = _x(2, 29)
    with torch.no_grad():
        outs = [_mixer(chunk_size=c)(x, _ctx(29, True, "rope")) for c in (1, 5, 29, 64)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("opts,match", [
    ({"n_features": 0}, "n_features"), ({"redraw_interval": -1}, "redraw_interval"),
    ({"seed": -3}, "seed"), ({"orthogonal": 1}, "orthogonal"), ({"chunk_size": 0}, "chunk_size"),
    ({"backend": "sdpa"}, "backend"), ({"cross": True}, "cross"),
])
def test_bad_options_raise(opts, match):
    with pytest.raises(ValueError, match=match):
        PerformerAttention(CFG, **opts)


def test_default_feature_count():
    assert PerformerAttention(CFG, seed=0).n_features == round(8 * math.log(8))
