"""Norms (LayerNorm, RMSNorm) and feed-forwards (GELU MLP, SwiGLU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from formers.nn import ModelConfig
from formers.nn.ffn.mlp import MLP, SwiGLU, swiglu_hidden
from formers.nn.norm import LayerNorm, RMSNorm, build_norm


def test_layernorm_equals_functional():
    ln = LayerNorm(8, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (8,), ln.weight, ln.bias, 1e-5))
    ref = torch.nn.LayerNorm(8, eps=1e-5)
    ref.load_state_dict({"weight": ln.weight.detach(), "bias": ln.bias.detach()})
    torch.testing.assert_close(ln(x), ref(x))


def test_layernorm_hand_case_and_no_bias():
    ln = LayerNorm(4, eps=1e-5, bias=False)
    assert ln.bias is None
    y = ln(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5, variance 1.25
    expect = [(v - 2.5) / math.sqrt(1.25 + 1e-5) for v in (1, 2, 3, 4)]
    torch.testing.assert_close(y, torch.tensor(expect))


def test_rmsnorm_hand_case():
    rms = RMSNorm(4, eps=1e-5)
    with torch.no_grad():
        rms.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    y = rms(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # mean of squares (1 + 4 + 9 + 16) / 4 = 7.5
    r = math.sqrt(7.5 + 1e-5)
    expect = [1 / r * 1.0, 2 / r * 2.0, 3 / r * 0.5, 4 / r * -1.0]
    torch.testing.assert_close(y, torch.tensor([expect]))


def test_rmsnorm_keeps_dtype_and_has_no_bias():
    rms = RMSNorm(6)
    assert [n for n, _ in rms.named_parameters()] == ["weight"]
    x = torch.randn(2, 6, dtype=torch.bfloat16)
    assert rms(x).dtype == torch.bfloat16
    # unit weights -> root mean square of the output is ~1
    y = RMSNorm(64)(torch.randn(5, 64) * 7)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(5), atol=1e-4, rtol=0)


def test_build_norm():
    assert isinstance(build_norm("layernorm", 8, 1e-5, True), LayerNorm)
    assert isinstance(build_norm("rmsnorm", 8, 1e-6, True), RMSNorm)
    with pytest.raises(ValueError, match="batchnorm"):
        build_norm("batchnorm", 8, 1e-5, True)


# ------------------------------------------------------------------------------------- FFNs
@pytest.mark.parametrize("d,expect", [(16, 48), (24, 64), (128, 344), (768, 2048), (4096, 10928)])
def test_swiglu_hidden(d, expect):
    # floor(8 d / 3) rounded up to a multiple of 8: 16 -> 42 -> 48, 128 -> 341 -> 344, 768 -> 2048
    assert swiglu_hidden(d) == expect
    assert swiglu_hidden(d) % 8 == 0 and swiglu_hidden(d) >= 8 * d // 3


def test_mlp_shapes_and_value():
    cfg = ModelConfig(d_model=16, n_heads=2)
    m = MLP(cfg)
    assert m.up.weight.shape == (64, 16) and m.down.weight.shape == (16, 64)
    assert MLP(cfg, d_ff=10).up.out_features == 10
    assert MLP(cfg.replace(d_ff=24)).up.out_features == 24
    x = torch.randn(2, 5, 16)
    y = m(x)
    assert y.shape == x.shape
    expect = m.down(F.gelu(m.up(x), approximate="tanh"))
    torch.testing.assert_close(y, expect)


def test_swiglu_shapes_and_value():
    cfg = ModelConfig(d_model=16, n_heads=2, bias=False)
    s = SwiGLU(cfg)
    assert s.gate.weight.shape == (48, 16) and s.up.weight.shape == (48, 16)
    assert s.down.weight.shape == (16, 48) and s.gate.bias is None
    assert SwiGLU(cfg.replace(d_ff=20)).gate.out_features == 20
    assert SwiGLU(cfg, d_ff=12).up.out_features == 12
    x = torch.randn(3, 4, 16)
    a, b = x @ s.gate.weight.T, x @ s.up.weight.T
    expect = (a * torch.sigmoid(a) * b) @ s.down.weight.T
    torch.testing.assert_close(s(x), expect)


def test_ffn_rejects_zero_width():
    cfg = ModelConfig(d_model=16, n_heads=2)
    with pytest.raises(ValueError, match="-3"):
        MLP(cfg, d_ff=-3)
    with pytest.raises(ValueError, match="-3"):
        SwiGLU(cfg, d_ff=-3)
