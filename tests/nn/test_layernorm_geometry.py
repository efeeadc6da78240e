"""LayerNorm as projection + scaling (Brody, Alon, Yahav, arXiv 2305.02582) and the unselectable-key LP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from formers.nn.config import ModelConfig
from formers.nn.layernorm_geometry import (
    is_selectable, project_out_ones, query_angle_to_ones, scale_to_sphere, unselectable_keys,
)
from formers.nn.models import build_model
from formers.nn.norm import FactorizedLayerNorm, LayerNormProjectionOnly, LayerNormScaleOnly
from formers.nn.presets import apply_preset
from formers.registry import get

pytest.importorskip("scipy")


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1.5


def test_both_components_equal_layer_norm():
    x = _x(4, 7, 16)
    for eps in (0.0, 1e-5):
        ln = FactorizedLayerNorm(16, eps=eps, affine=False).double()
        assert torch.allclose(ln(x), F.layer_norm(x, (16,), eps=eps), atol=1e-12, rtol=0)
    # with the affine: equal to the library's LayerNorm with the same weight/bias
    ln = FactorizedLayerNorm(16, eps=1e-5)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2), ln.bias.normal_()
    xf = x.float()
    ref = F.layer_norm(xf, (16,), ln.weight, ln.bias, 1e-5)
    assert torch.allclose(ln(xf), ref, atol=1e-5)
    assert torch.allclose(scale_to_sphere(project_out_ones(x)), F.layer_norm(x, (16,), eps=0), atol=1e-12)


def test_projection_orthogonal_to_ones_and_scale_has_norm_sqrt_d():
    d = 12
    x = _x(5, 3, d)
    p = FactorizedLayerNorm(d, eps=0.0, projection=True, scale=False, affine=False).double()(x)
    assert torch.allclose(p @ torch.ones(d, dtype=x.dtype), torch.zeros(5, 3, dtype=x.dtype), atol=1e-12)
    assert torch.allclose(p, x - x.mean(-1, keepdim=True))  # and it is exactly the centring
    s = FactorizedLayerNorm(d, eps=0.0, projection=False, scale=True, affine=False).double()(x)
    assert torch.allclose(s.norm(dim=-1), torch.full((5, 3), math.sqrt(d), dtype=x.dtype), atol=1e-12)
    assert torch.allclose(s / s.norm(dim=-1, keepdim=True), x / x.norm(dim=-1, keepdim=True))  # direction kept


def test_projected_keys_give_uniform_attention_for_query_along_ones():
    k = project_out_ones(_x(9, 8))
    q = 3.7 * torch.ones(8, dtype=k.dtype)
    w = torch.softmax(k @ q, dim=0)
    assert torch.allclose(w, torch.full((9,), 1 / 9, dtype=k.dtype), atol=1e-12)


def test_registered_norms_and_presets():
    assert get("norm", "layernorm-projection-only").obj is LayerNormProjectionOnly
    assert get("norm", "layernorm-scale-only").obj is LayerNormScaleOnly
    x = _x(2, 5, 8).float()
    assert torch.allclose(LayerNormScaleOnly(8, eps=1e-6, bias=False)(x),
                          x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), atol=1e-6)
    assert LayerNormScaleOnly(8, bias=False).bias is None and LayerNormProjectionOnly(8).bias is not None
    base = ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
    assert apply_preset("ln-no-projection", base).norm == "layernorm-scale-only"
    assert apply_preset("ln-no-scale", base).norm == "layernorm-projection-only"
    m = build_model(apply_preset("ln-no-projection", base))
    assert isinstance(m.stack.blocks[0].norm1, LayerNormScaleOnly)
    with pytest.raises(ValueError, match="d_model"):
        FactorizedLayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        FactorizedLayerNorm(4, eps=-1.0)


def test_unselectable_hand_cases():
    # a square and its centre: the centre is strictly inside the hull of the others
    k = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.3, -0.2]])
    r = unselectable_keys(k)
    assert r.count == 2 and r.mask.tolist() == [False] * 4 + [True, True]
    # on the edge between two others: not strictly selectable either (in the hull)
    assert not is_selectable(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), 2)
    # points on a circle / sphere: all selectable (every point is extreme)
    ang = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    assert unselectable_keys(np.stack([np.cos(ang), np.sin(ang)], 1)).count == 0
    sph = np.random.default_rng(0).normal(size=(100, 5))
    assert unselectable_keys(sph / np.linalg.norm(sph, axis=1, keepdims=True)).count == 0
    # duplicates cannot be strictly top; a single key is selectable; tensors accepted
    assert unselectable_keys(torch.tensor([[1.0, 2.0], [1.0, 2.0]])).count == 2
    assert unselectable_keys(np.array([[0.0, 0.0, 0.0]])).count == 0
    with pytest.raises(ValueError, match="shape"):
        unselectable_keys(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        unselectable_keys(np.array([[np.nan, 0.0]]))


def test_unselectable_before_and_after_layernorm_scaling():
    """The paper's Table 1/2 effect on random keys of varied norm (d = 8, n = 200): many
    unselectable before LN and with the projection only; none after LN or after scaling only."""
    rng = np.random.default_rng(0)
    k = torch.tensor(rng.normal(size=(200, 8)) * rng.uniform(0.2, 3.0, size=(200, 1)))
    raw = unselectable_keys(k).count
    proj = unselectable_keys(project_out_ones(k)).count
    assert raw > 50 and proj > 50
    assert unselectable_keys(F.layer_norm(k, (8,), eps=0.0)).count == 0
    assert unselectable_keys(scale_to_sphere(k)).count == 0


def test_query_angle():
    d = 4
    eye = torch.eye(d)
    q = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0, 0, 0], [-2.0, -2.0, -2.0, -2.0]])
    a = query_angle_to_ones(q, eye, eye)
    assert torch.allclose(a, torch.tensor([0.0, 60.0, 0.0]), atol=1e-3)  # acos(1/2) = 60 deg
