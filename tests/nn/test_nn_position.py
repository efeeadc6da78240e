"""Position schemes: RoPE properties, ALiBi slopes (the paper's rule), sinusoidal table values."""

from __future__ import annotations

import math

import pytest
import torch

from formers.nn import ModelConfig
from formers.nn.position import (
    ALiBiPosition, LearnedPosition, Position, RotaryPosition, SinusoidalPosition, alibi_slopes,
    build_position, sinusoid_table,
)


def rope(head_dim=8, n_heads=2, max_seq_len=64, base=10000.0) -> RotaryPosition:
    return RotaryPosition(ModelConfig(d_model=head_dim * n_heads, n_heads=n_heads,
                                      max_seq_len=max_seq_len, position="rope", rope_base=base))


# ------------------------------------------------------------------------------------- RoPE
def test_rope_position_zero_is_identity():
    x = torch.randn(2, 2, 1, 8)
    torch.testing.assert_close(rope().rotate(x, torch.tensor([0])), x, atol=0, rtol=0)


def test_rope_preserves_norm():
    x = torch.randn(2, 2, 20, 8)
    y = rope().rotate(x, torch.arange(20))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_relative_position():
    """<R(m) q, R(n) k> depends only on m - n."""
    r = rope(max_seq_len=128)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def dot(m, n):
        return float((r.rotate(q, torch.tensor([m])) * r.rotate(k, torch.tensor([n]))).sum())

    for delta in (0, 1, 5, 17):
        vals = [dot(n + delta, n) for n in (0, 3, 40, 100)]
        assert max(vals) - min(vals) < 1e-4, (delta, vals)
    assert abs(dot(5, 0) - dot(0, 5)) > 1e-3  # direction matters (not symmetric in general)


def test_rope_hand_values():
    """head_dim 2: one pair rotated by angle p (inv freq base^0 = 1)."""
    r = rope(head_dim=2, n_heads=1)
    x = torch.tensor([[[[1.0, 0.0]]]])
    for p in (1, 2, 7):
        y = r.rotate(x, torch.tensor([p]))
        torch.testing.assert_close(y[0, 0, 0], torch.tensor([math.cos(p), math.sin(p)]), atol=1e-6, rtol=0)
    # head_dim 4, base 100: pairs (x0, x2) at angle p, (x1, x3) at angle p / 10
    r = rope(head_dim=4, n_heads=1, base=100.0)
    y = r.rotate(torch.tensor([[[[0.0, 1.0, 0.0, 0.0]]]]), torch.tensor([3]))
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, math.cos(0.3), 0.0, math.sin(0.3)]),
                               atol=1e-6, rtol=0)


def test_rope_has_no_embed_or_bias():
    r = rope()
    assert r.embed(torch.arange(3)) is None and r.bias(torch.arange(3), torch.arange(3)) is None


# ------------------------------------------------------------------------------------ ALiBi
def test_alibi_slopes_8_heads():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))


def test_alibi_slopes_power_of_two_rule():
    # n heads: geometric sequence starting at 2^(-8/n) with that ratio
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-0.5 * i) for i in range(1, 17)]))
    torch.testing.assert_close(alibi_slopes(1), torch.tensor([2.0 ** -8]))


def test_alibi_slopes_12_heads():
    # not a power of two: the 8 slopes of 8 heads, then every other slope of 16 heads
    # (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5) for the remaining 4 heads
    expect = [2.0 ** -i for i in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expect))


def test_alibi_bias_values():
    a = ALiBiPosition(ModelConfig(d_model=16, n_heads=2, position="alibi"))
    b = a.bias(torch.tensor([3]), torch.arange(4))  # one query at 3, keys 0..3
    assert b.shape == (2, 1, 4)
    # slopes for 2 heads: 2^-4, 2^-8
    torch.testing.assert_close(b[0, 0], -torch.tensor([3.0, 2.0, 1.0, 0.0]) / 16)
    torch.testing.assert_close(b[1, 0], -torch.tensor([3.0, 2.0, 1.0, 0.0]) / 256)
    assert a.embed(torch.arange(3)) is None
    x = torch.randn(1, 2, 3, 8)
    assert a.rotate(x, torch.arange(3)) is x


# ------------------------------------------------------------------------------- sinusoidal
def test_sinusoid_table_hand_values():
    pe = sinusoid_table(60, 4)  # inverse frequencies 1 and 1/100
    expect = {
        0: [0.0, 1.0, 0.0, 1.0],
        1: [0.8414709848078965, 0.5403023058681398, 0.009999833334166664, 0.9999500004166653],
        2: [0.9092974268256817, -0.4161468365471424, 0.01999866669333308, 0.9998000066665778],
        50: [-0.26237485370392877, 0.9649660284921133, 0.479425538604203, 0.8775825618903728],
    }
    for p, row in expect.items():
        torch.testing.assert_close(pe[p], torch.tensor(row), atol=1e-6, rtol=0)


def test_sinusoid_table_general_formula():
    n, d = 10, 16
    pe = sinusoid_table(n, d)
    for p in (0, 3, 9):
        for i in range(d // 2):
            ang = p / 10000 ** (2 * i / d)
            assert abs(pe[p, 2 * i] - math.sin(ang)) < 1e-6
            assert abs(pe[p, 2 * i + 1] - math.cos(ang)) < 1e-6


def test_sinusoidal_module_uses_table():
    s = SinusoidalPosition(ModelConfig(d_model=4, n_heads=1, max_seq_len=60, position="sinusoidal"))
    torch.testing.assert_close(s.embed(torch.tensor([2, 50])), sinusoid_table(60, 4)[[2, 50]])


def test_build_position_by_name():
    for name, cls in [("none", Position), ("learned", LearnedPosition), ("rope", RotaryPosition),
                      ("sinusoidal", SinusoidalPosition), ("alibi", ALiBiPosition)]:
        p = build_position(ModelConfig(d_model=16, n_heads=2, position=name))
        assert type(p) is cls
    assert Position(ModelConfig()).embed(torch.arange(2)) is None


def test_learned_position_shape():
    p = LearnedPosition(ModelConfig(d_model=16, n_heads=2, max_seq_len=12))
    assert p.embed(torch.arange(5)).shape == (5, 16)
    with pytest.raises(IndexError):
        p.embed(torch.tensor([12]))
