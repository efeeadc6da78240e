"""Nystromformer (arXiv 2102.03902): exactness at m = T, the iterative pseudo-inverse, error that
shrinks as landmarks grow, fast path == written-out kernels, padding."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import ModelConfig
from formers.nn.attention.nystrom import (
    NystromAttention, iterative_pinv, nystrom_reference, segments,
)
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.context import Context

CFG = ModelConfig(arch="encoder", vocab_size=11, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                  max_seq_len=256)


def exact(q, k, v, key_mask=None):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v


def qkv(t: int, seed: int = 0, smooth: bool = False, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return [torch.randn(2, 2, t, 8, generator=g, dtype=torch.float64) * scale for _ in range(3)]
    # structured: a few low-frequency components along the sequence (the paper's setting of
    # attention matrices with fast-decaying spectra)
    pos = torch.linspace(0, 1, t, dtype=torch.float64)
    basis = torch.stack([torch.cos(math.pi * f * pos) for f in range(4)], -1)     # (t, 4)
    return [basis @ torch.randn(2, 2, 4, 8, generator=g, dtype=torch.float64) * scale for _ in range(3)]


def test_segments_layout():
    s = segments(10, 4)
    assert s.sum(1).tolist() == [2, 2, 3, 3] and s.sum(0).tolist() == [1] * 10
    assert (s.argmax(0).diff() >= 0).all()  # contiguous, in order


def test_iterative_pinv_converges_to_the_pseudo_inverse():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(3, 8, 8, generator=g, dtype=torch.float64) * 2, -1)
    ref = torch.linalg.pinv(a)
    errs = [(iterative_pinv(a, i) - ref).abs().max().item() for i in (2, 6, 12, 30)]
    assert errs[-1] < 1e-9 and errs[0] > errs[1] > errs[2]
    # and the Moore-Penrose identity A Z A = A
    z = iterative_pinv(a, 30)
    torch.testing.assert_close(a @ z @ a, a, atol=1e-10, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_landmarks_equal_tokens_is_exact_attention(masked):
    m = NystromAttention(CFG, landmarks=12, pinv="exact", conv_kernel=None)
    q, k, v = qkv(12, scale=1.5)
    mask = None
    if masked:
        mask = torch.ones(2, 12, dtype=torch.bool)
        mask[1, 8:] = False
    want = exact(q, k, v, mask)
    got = m.approximate(q, k, v, mask)
    sel = slice(None) if mask is None else mask[:, None, :].expand(2, 2, 12)
    torch.testing.assert_close(got[sel], want[sel], atol=1e-10, rtol=0)
    m_it = NystromAttention(CFG, landmarks=12, pinv="iterative", iterations=40, conv_kernel=None)
    torch.testing.assert_close(m_it.approximate(q, k, v, mask)[sel], want[sel], atol=1e-8, rtol=0)


def test_error_shrinks_as_landmarks_grow_on_structured_inputs():
    """Smooth Q, K, V (4 cosine components along the sequence), T = 128, paper's iterative
    inverse with enough iterations (20; at 6 the iteration error floors the curve near 1e-2)."""
    q, k, v = qkv(128, seed=3, smooth=True)
    want = exact(q, k, v)
    errs = []
    for m in (2, 4, 8, 16, 32, 64, 128):
        mod = NystromAttention(CFG, landmarks=m, iterations=20, conv_kernel=None)
        errs.append(((mod.approximate(q, k, v, None) - want).norm() / want.norm()).item())
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[0] > 0.1 and errs[3] < 1e-3 and errs[-1] < 1e-5, errs


@pytest.mark.parametrize("pinv", ["exact", "iterative"])
def test_sdpa_path_equals_written_out_kernels(pinv):
    q, k, v = qkv(40, seed=5)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 23:] = False                      # segment layout leaves some landmarks fully padded
    mod = NystromAttention(CFG, landmarks=8, pinv=pinv, conv_kernel=None)
    got = mod.approximate(q, k, v, mask, backend="sdpa")
    want = nystrom_reference(q, k, v, 8, pinv, 6, mask)
    sel = mask[:, None, :].expand(2, 2, 40)
    torch.testing.assert_close(got[sel], want[sel], atol=1e-9, rtol=0)
    # the padded tokens do not matter at real positions
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[0, :, 23:] = torch.randn(2, 17, 8, dtype=torch.float64)
    torch.testing.assert_close(mod.approximate(q2, k2, v2, mask)[sel], got[sel], atol=1e-10, rtol=0)


def test_module_forward_short_inputs_are_exact_and_conv_skip_adds_depthwise_conv():
    torch.manual_seed(0)
    m = NystromAttention(CFG, landmarks=64, conv_kernel=None).double()
    soft = SoftmaxAttention(CFG).double()
    soft.load_state_dict(m.state_dict())
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    ctx = Context(positions=torch.arange(20), causal=False)
    torch.testing.assert_close(m(x, ctx), soft(x, ctx), atol=1e-12, rtol=0)
    mc = NystromAttention(CFG, landmarks=4, conv_kernel=3).double()
    with torch.no_grad():
        mc.conv.weight.zero_()
        mc.conv.weight[:, 0, 1, 0] = 1.0   # centre tap: the skip adds V itself
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    ctx = Context(positions=torch.arange(9), causal=False)
    q = mc._heads(mc.q(x), 2)
    k = mc._heads(mc.k(x), 2)
    v = mc._heads(mc.v(x), 2)
    want = mc.o((mc.approximate(q, k, v, None) + v).transpose(1, 2).reshape(1, 9, 16))
    torch.testing.assert_close(mc(x, ctx), want, atol=1e-12, rtol=0)


def test_option_errors():
    for bad in ({"landmarks": 0}, {"iterations": 0}, {"pinv": "svd"}, {"conv_kernel": 4},
                {"cross": True}):
        with pytest.raises(ValueError, match="nystromformer"):
            NystromAttention(CFG, **bad)
    with pytest.raises(ValueError, match="not causal"):
        NystromAttention(CFG)(torch.randn(1, 3, 16), Context(positions=torch.arange(3), causal=True))


def test_bf16_autocast_keeps_the_landmark_kernel_in_fp32():
    """Under bf16 autocast (the CUDA training default) the landmark kernel and its iterative
    pseudo-inverse stay in fp32: before, the fp32 mask fill overflowed bf16 (an error on the H200
    LRA run) and the inverse's matmuls ran in bf16."""
    torch.manual_seed(0)
    m = NystromAttention(CFG, landmarks=8)
    x = torch.randn(2, 64, 16)
    ctx = Context(positions=torch.arange(64), causal=False)
    ref = m(x, ctx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x, ctx)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0)
