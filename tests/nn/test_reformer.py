"""Reformer LSH attention (arXiv 2001.04451): reduction to full shared-QK attention, chunked fast
path == dense reference, angular LSH, self-mask rule, strict causality, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import LayerSpec, ModelConfig, build_model
from formers.nn.attention.reformer import (
    ReformerAttention, bucket_chunks, lsh_attention, lsh_hash, lsh_reference,
)
from formers.nn.context import Context

CFG = ModelConfig(arch="decoder", vocab_size=11, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                  max_seq_len=64)


def shared_qk_attention(qk, v, causal):
    """Full attention with keys = normalised queries and the self score -1e5."""
    k = qk / qk.norm(dim=-1, keepdim=True)
    s = qk @ k.transpose(-1, -2) / math.sqrt(qk.shape[-1])
    t = qk.shape[-2]
    s = s.masked_fill(torch.eye(t, dtype=torch.bool), -1e5)
    if causal:
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def rand(t, seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 2, t, d, generator=g, dtype=torch.float64),
            torch.randn(2, 2, t, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_and_one_chunk_is_full_shared_qk_attention(causal):
    qk, v = rand(13)
    want = shared_qk_attention(qk, v, causal)
    for n_hashes in (1, 3):
        bk = torch.zeros(2, 2, n_hashes, 13, dtype=torch.long)
        pos = torch.arange(13)
        torch.testing.assert_close(lsh_attention(qk, v, pos, bk, 13, causal), want, atol=1e-12, rtol=0)
        torch.testing.assert_close(lsh_reference(qk, v, pos, bk, 13, causal), want, atol=1e-12, rtol=0)
    # and the module with n_buckets=1, chunk >= T
    torch.manual_seed(0)
    m = ReformerAttention(CFG, n_buckets=1, n_hashes=2, chunk=16).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    qk = m.qk(x).view(2, 13, 2, 8).transpose(1, 2)
    v = m.v(x).view(2, 13, 2, 8).transpose(1, 2)
    want = m.o(shared_qk_attention(qk, v, causal).transpose(1, 2).reshape(2, 13, 16))
    got = m(x, Context(positions=torch.arange(13), causal=causal))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_chunked_fast_path_equals_dense_reference(causal, chunk):
    """chunk = 64 exceeds every bucket: the fast path shrinks its chunk to the largest bucket."""
    torch.manual_seed(chunk)
    m = ReformerAttention(CFG, n_buckets=4, n_hashes=3, chunk=chunk, seed=chunk)
    qk, v = rand(23, seed=chunk)
    mask = torch.ones(2, 23, dtype=torch.bool)
    mask[1, 17:] = False
    bk = m.buckets(qk, mask)
    assert bk.shape == (2, 2, 3, 23) and int(bk[1, :, :, 17:].min()) == 4   # padding: own bucket
    pos = torch.arange(23)
    qk.requires_grad_(True)
    got = lsh_attention(qk, v, pos, bk, chunk, causal)
    want = lsh_reference(qk, v, pos, bk, chunk, causal, mask)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    w = torch.randn(got.shape, dtype=got.dtype) * mask[:, None, :, None]
    g_fast, = torch.autograd.grad((got * w).sum(), qk)
    g_ref, = torch.autograd.grad((want * w).sum(), qk)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-10, rtol=0)


def test_bucket_chunks_by_hand():
    bk = torch.tensor([0, 1, 0, 0, 1, 0, 0])
    assert bucket_chunks(bk, 2).tolist() == [0, 0, 0, 1, 0, 1, 2]


def test_hashing_is_angular_lsh():
    """P[h(x) = h(y)] falls as the angle between x and y grows (and is 1 at angle 0); h is
    invariant to the scale of x."""
    d, n_rot = 16, 4000
    g = torch.Generator().manual_seed(0)
    rot = torch.randn(1, d, n_rot, 4, generator=g)                  # 8 buckets, 4000 hash functions
    x = torch.randn(d, generator=g)
    x = x / x.norm()
    u = torch.randn(d, generator=g)
    u = u - (u @ x) * x
    u = u / u.norm()
    probs = []
    for angle in (0.0, 0.3, 0.7, 1.2, 1.8, 2.6):
        y = math.cos(angle) * x + math.sin(angle) * u
        hx = lsh_hash(x.view(1, 1, 1, d), rot)
        hy = lsh_hash((3.0 * y).view(1, 1, 1, d), rot)
        probs.append((hx == hy).double().mean().item())
    assert probs[0] == 1.0
    assert all(a > b for a, b in zip(probs, probs[1:])), probs
    assert probs[-1] < 0.05, probs


def test_self_only_when_nothing_else_is_available():
    qk, v = rand(6, seed=2)
    pos = torch.arange(6)
    bk = torch.zeros(2, 2, 1, 6, dtype=torch.long)
    out = lsh_attention(qk, v, pos, bk, 8, causal=True)
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], atol=1e-12, rtol=0)   # first token: itself
    # later tokens: weight on self is exp(-1e5 - ...) = 0: replacing v_i by anything leaves o_i
    v2 = v.clone()
    v2[:, :, 3] += 100.0
    out2 = lsh_attention(qk, v2, pos, bk, 8, causal=True)
    torch.testing.assert_close(out2[:, :, 3], out[:, :, 3], atol=1e-12, rtol=0)


def test_strictly_causal_with_many_buckets_and_small_chunks():
    """Changing token t (and so its bucket) leaves every earlier output unchanged; with the
    paper's global sort-and-chunk this would move chunk boundaries of earlier tokens."""
    torch.manual_seed(0)
    m = ReformerAttention(CFG, n_buckets=4, n_hashes=2, chunk=2).double()
    x = torch.randn(1, 20, 16, dtype=torch.float64)
    ctx = Context(positions=torch.arange(20), causal=True)
    base = m(x, ctx)
    for t in (3, 10, 19):
        y = x.clone()
        y[0, t] = torch.randn(16, dtype=torch.float64) * 5
        out = m(y, ctx)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=1e-12, rtol=0)


def test_deterministic_given_seed_and_cached_decoding():
    a, b, c = (ReformerAttention(CFG, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.rotations, b.rotations) and not torch.equal(a.rotations, c.rotations)
    assert "rotations" in a.state_dict()
    torch.manual_seed(0)
    model = build_model(CFG.replace(layers=[LayerSpec(attention="reformer",
                                                      attention_options={"chunk": 2, "n_buckets": 4})])).eval()
    ids = torch.randint(0, 11, (2, 15))
    full = model(ids)
    cache = model.new_cache()
    inc = torch.cat([model(ids[:, :6], cache=cache)] + [model(ids[:, i:i + 1], cache=cache)
                                                       for i in range(6, 15)], 1)
    torch.testing.assert_close(inc, full, atol=1e-6, rtol=0)


def test_option_errors():
    for bad in ({"n_buckets": 3}, {"n_buckets": 0}, {"n_hashes": 0}, {"chunk": 0}, {"seed": 1.5},
                {"cross": True}, {"backend": "flash"}):
        with pytest.raises(ValueError, match="reformer"):
            ReformerAttention(CFG, **bad)
