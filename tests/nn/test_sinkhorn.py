"""Sparse Sinkhorn attention (arXiv 2002.11296): Sinkhorn balancing, reductions to exact and to
block-local attention, a hand-computed case, the plain reference, SortCut, options."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.core import attend
from formers.nn.attention.sinkhorn import (
    SinkhornAttention, sinkhorn, sinkhorn_attention, sinkhorn_reference,
)
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.context import Context

torch.set_num_threads(1)
CFG = ModelConfig(arch="encoder", vocab_size=11, d_model=16, n_layers=1, n_heads=4, d_ff=32,
                  max_seq_len=24)


def _ctx(t: int, key_mask=None) -> Context:
    return Context(positions=torch.arange(t), causal=False, key_mask=key_mask)


def test_sinkhorn_becomes_doubly_stochastic():
    g = torch.Generator().manual_seed(0)
    log_alpha = 3 * torch.randn(5, 7, 7, generator=g, dtype=torch.float64)
    s = sinkhorn(log_alpha, 200)
    assert (s >= 0).all()
    torch.testing.assert_close(s.sum(-1), torch.ones(5, 7, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.sum(-2), torch.ones(5, 7, dtype=torch.float64), atol=1e-4, rtol=0)
    # one iteration balances the columns only: the rows of a skewed matrix are still off
    s1 = sinkhorn(log_alpha, 1)
    torch.testing.assert_close(s1.sum(-2), torch.ones(5, 7, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (s1.sum(-1) - 1).abs().max() > 1e-2


def test_sinkhorn_one_iteration_by_hand():
    """exp(R) = [[1, 2], [3, 4]]: rows -> [[1/3, 2/3], [3/7, 4/7]]; columns -> [[7/16, 7/13], [9/16, 6/13]]."""
    r = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).log()
    want = torch.tensor([[7 / 16, 7 / 13], [9 / 16, 6 / 13]], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(r, 1), want, atol=1e-12, rtol=0)


def test_low_temperature_gives_the_permutation():
    perm = torch.tensor([2, 0, 3, 1])
    r = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))
    r[torch.arange(4), perm] += 1.0
    s = sinkhorn(r / 0.01, 20)
    torch.testing.assert_close(s, torch.eye(4)[perm], atol=1e-4, rtol=0)


def test_hand_computed_two_blocks_of_one():
    """d_h = 1, blocks of one token, S = [[1/2, 1/2], [1/2, 1/2]]: block 0's query q0 = 1 sees keys
    [k0, (k0 + k1)/2] = [0, 1] and values [v0, (v0 + v1)/2] = [1, 2]: o0 = (1 + 2e) / (1 + e).
    Block 1: q1 = 2, keys [k1, 1] = [2, 1], values [3, 2]: o1 = (3 e^4 + 2 e^2) / (e^4 + e^2)."""
    q = torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1)
    k = torch.tensor([0.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1)
    v = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 1, 2, 1)
    s = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    e = math.e
    want = torch.tensor([(1 + 2 * e) / (1 + e), (3 * e**4 + 2 * e**2) / (e**4 + e**2)],
                        dtype=torch.float64).view(1, 1, 2, 1)
    for backend in ("sdpa", "reference"):
        out, _ = sinkhorn_attention(q, k, v, s, 1, backend=backend)
        torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(sinkhorn_reference(q, k, v, s, 1), want, atol=1e-12, rtol=0)


def _pair(**opts):
    torch.manual_seed(0)
    m = SinkhornAttention(CFG, **opts).double()
    soft = SoftmaxAttention(CFG).double()
    soft.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("sortnet.")})
    return m, soft


@pytest.mark.parametrize("t", [1, 7, 16])
def test_one_block_is_exact_softmax_attention(t):
    m, soft = _pair(block=16)
    x = torch.randn(2, t, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x, _ctx(t)), soft(x, _ctx(t)), atol=1e-12, rtol=0)
    if t > 3:  # with padding too (key_mask): real positions equal masked softmax attention
        mask = torch.ones(2, t, dtype=torch.bool)
        mask[1, t - 3:] = False
        got, want = m(x, _ctx(t, mask)), soft(x, _ctx(t, mask))
        torch.testing.assert_close(got[mask], want[mask], atol=1e-12, rtol=0)


def test_identity_sort_is_block_local_attention_and_sortcut_all_is_exact(monkeypatch):
    t, bs = 12, 4
    x = torch.randn(2, t, 16, dtype=torch.float64)
    m, soft = _pair(block=bs)
    monkeypatch.setattr(m, "sort_matrix", lambda x, valid: torch.eye(t // bs, dtype=x.dtype).expand(2, -1, -1))
    pos = torch.arange(t)
    q = m._heads(m.q(x), 4)
    k = m._heads(m.k(x), 4)
    v = m._heads(m.v(x), 4)
    local, _ = attend(q, k, v, pattern=lambda i, j: i // bs == j // bs, q_pos=pos, k_pos=pos, backend="reference")
    want = m.o(local.transpose(1, 2).reshape(2, t, 16))
    torch.testing.assert_close(m(x, _ctx(t)), want, atol=1e-12, rtol=0)
    m.sortcut = t // bs  # SortCut over every (identity-sorted) block: exact attention
    torch.testing.assert_close(m(x, _ctx(t)), soft(x, _ctx(t)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("sortcut", [None, 2])
def test_module_equals_plain_reference(sortcut):
    torch.manual_seed(3)
    cfg = CFG.replace(n_kv_heads=2)
    m = SinkhornAttention(cfg, block=4, n_iters=5, temperature=0.5, sortcut=sortcut).double()
    with torch.no_grad():  # a sort far from uniform
        for p in m.sortnet.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    got = m(x, _ctx(16))
    q = m.q(x).view(2, 16, 4, 4).transpose(1, 2)
    k = m.k(x).view(2, 16, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    v = m.v(x).view(2, 16, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    s = m.sort_matrix(x, torch.ones(2, 16, dtype=torch.bool))
    assert (s - s.mean()).abs().max() > 0.05   # the sort is not trivial
    want = m.o(sinkhorn_reference(q, k, v, s, 4, sortcut).transpose(1, 2).reshape(2, 16, 16))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_gumbel_noise_only_in_training():
    m = SinkhornAttention(CFG, block=4, gumbel=True).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    m.eval()
    torch.testing.assert_close(m(x, _ctx(12)), m(x, _ctx(12)), atol=0, rtol=0)
    m.train()
    with torch.no_grad():
        for p in m.sortnet.parameters():
            p.normal_(0, 0.5)
    assert not torch.allclose(m(x, _ctx(12)), m(x, _ctx(12)))


def test_options_and_refusals():
    for bad in (dict(block=0), dict(n_iters=0), dict(temperature=0.0), dict(gumbel=1), dict(sortcut=0)):
        with pytest.raises(ValueError, match="sinkhorn: " + next(iter(bad))):
            SinkhornAttention(CFG, **bad)
    with pytest.raises(ValueError, match="cross"):
        SinkhornAttention(CFG, cross=True)
    m = SinkhornAttention(CFG, block=4)
    with pytest.raises(ValueError, match="not causal"):
        m(torch.randn(1, 5, 16), Context(positions=torch.arange(5), causal=True))
    with pytest.raises(ValueError, match="cannot run causally"):
        build_model(CFG.replace(arch="decoder", layers=[LayerSpec(attention="sinkhorn")]))
