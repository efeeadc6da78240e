"""FactFormer / IFactFormer faithfulness tests (notes §2(d), §3(d); arXiv 2305.17560, 2412.18840)."""

from __future__ import annotations

import math

import pytest
import torch

from formers.sciml.pde.factformer import FactFormer, FactFormerConfig, FactorizedEncoder
from formers.sciml.pde.factorized import (AxialKernel, FactorizedAttention, domain_group_norm,
                                          instance_norm, rotary_angles, rotate)
from formers.sciml.pde.fourier_features import grid_points
from formers.sciml.pde.ifactformer import IFactFormer, IFactFormerConfig, IFactFormerOConfig
from formers.sciml.pde.surrogate import build_surrogate, load_surrogate, surrogate_config

torch.set_num_threads(1)


def _block(n_dims=2, combine="chained", seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(dim=16, n_heads=2, head_dim=4, n_dims=n_dims, kernel_multiplier=2, combine=combine)
    args.update(kw)
    return FactorizedAttention(**args).double()


def _coords(grid):
    return [torch.linspace(0, 2 * math.pi, n, dtype=torch.float64) for n in grid]


@pytest.mark.parametrize("grid", [(8, 6), (4, 3, 5)])
def test_kronecker_identity(grid):
    """The axial integral equals the dense kernel K_1 ⊗ ... ⊗ K_D applied to flattened v."""
    blk = _block(len(grid))
    u = torch.randn(2, *grid, 16, dtype=torch.float64)
    kernels = blk.axis_kernels(blk.to_in(blk.in_norm(u)), _coords(grid))
    v = torch.randn(2, *grid, blk.n_heads * blk.head_dim, dtype=torch.float64)
    z = blk.integrate(kernels, v)
    N = math.prod(grid)
    vh = v.reshape(2, N, blk.n_heads, blk.head_dim)
    zh = z.reshape(2, N, blk.n_heads, blk.head_dim)
    for b in range(2):
        for h in range(blk.n_heads):
            dense = kernels[0][b, h]
            for K in kernels[1:]:
                dense = torch.kron(dense, K[b, h])
            assert dense.shape == (N, N)
            torch.testing.assert_close(zh[b, :, h], dense @ vh[b, :, h], atol=1e-10, rtol=1e-10)
    assert kernels[0].abs().max() > 0  # not a trivial zero kernel


def test_no_softmax_kernel_is_quadratic_in_the_subfunction():
    torch.manual_seed(1)
    k = AxialKernel(latent_dim=8, n_heads=2, d_k=6, rope=False).double()
    phi = torch.randn(3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(k(3.0 * phi, None), 9.0 * k(phi, None))
    # with rotary position on, the kernel stays bilinear (no normalisation across keys)
    c = torch.linspace(0, 2 * math.pi, 7, dtype=torch.float64)
    k.rope = True
    torch.testing.assert_close(k(-2.0 * phi, c), 4.0 * k(phi, c))


def test_rotary_kernel_is_toeplitz_for_constant_subfunctions():
    """With u_a(i) = c for all i, K[i, j] depends only on x_i - x_j."""
    torch.manual_seed(2)
    k = AxialKernel(latent_dim=8, n_heads=3, d_k=16, rope=True).double()
    with torch.no_grad():  # larger q/k weights than the 0.02 init so the values are far from 0
        k.to_q.weight.normal_()
        k.to_k.weight.normal_()
    n = 12
    phi = torch.randn(1, 1, 8, dtype=torch.float64).expand(2, n, 8)
    x = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    K = k(phi, x)
    for d in range(-n + 1, n):
        diag = torch.diagonal(K, offset=d, dim1=-2, dim2=-1)
        torch.testing.assert_close(diag, diag[..., :1].expand_as(diag), atol=1e-9, rtol=1e-9)
    # translation invariance on a non-uniform grid: shifting every coordinate changes nothing
    xs = torch.sort(torch.rand(n, dtype=torch.float64) * 5).values
    torch.testing.assert_close(k(phi, xs), k(phi, xs + 0.37), atol=1e-9, rtol=1e-9)
    # and it is not constant: distance matters
    assert (K[0, 0, 0, 0] - K[0, 0, 0, 5]).abs() > 1e-3


def test_rotation_matches_hand_values():
    ang = rotary_angles(torch.tensor([0.0, 1 / 64]), 4)  # t = x * 64 -> 0 and 1
    assert torch.allclose(ang[1], torch.tensor([1.0, 0.01, 1.0, 0.01]))
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    r = rotate(t, ang[1:])
    c, s = math.cos(1.0), math.sin(1.0)
    c2, s2 = math.cos(0.01), math.sin(0.01)
    want = torch.tensor([[1 * c - 3 * s, 2 * c2 - 4 * s2, 3 * c + 1 * s, 4 * c2 + 2 * s2]])
    torch.testing.assert_close(r, want)


def _reference_km2d_trainable_params(dim=128, heads=8, dim_head=64, km=2, depth=4, in_tw=10,
                                     out_dim=1, latent_mult=2.0, max_latent=4) -> int:
    """Trainable parameters of the reference FactFormer2D (turb_ns2d_fact_lm.py + libs/), counted
    module by module from the reference code's structure."""
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    ln = lambda d: 2 * d  # noqa: E731
    reducer = lin(dim, dim, False) + ln(dim) + lin(dim, 2 * dim) + lin(dim, dim)  # PoolingReducer
    kernel = 2 * lin(dim, dim_head * km * heads, False)                            # LowRankKernel q, k
    block = (ln(dim) + lin(dim, heads * dim_head, False) + lin(dim, dim, False) + 2 * reducer
             + 2 * kernel + lin(heads * dim_head, dim, False) + lin(dim, dim, False))
    layer = lin(dim, dim) + block                     # pos-enc Linear (Fourier B is not trainable)
    L = int(dim * latent_mult)
    head = lin(in_tw, dim) + lin(dim, L, False) + max_latent * L + ln(L) + lin(L, dim) + lin(dim, L)
    decoder = 2 * L + (L // 8) * dim + dim * (dim // 2) + lin(dim // 2, out_dim)
    return depth * layer + head + decoder


def test_km2d_reference_parameter_count():
    m = FactFormer(FactFormerConfig())
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert n == _reference_km2d_trainable_params() == 3_463_489


def test_parallel_equals_single_axis_chained_integrals():
    """-m = concat over axes of the chained integral with the other kernels set to identity, and
    with all kernels the identity -m gives D copies of v where -o gives v once."""
    grid = (5, 4, 3)
    m, o = _block(3, "parallel"), _block(3, "chained")
    u = torch.randn(2, *grid, 16, dtype=torch.float64)
    ks = m.axis_kernels(m.to_in(m.in_norm(u)), _coords(grid))
    v = torch.randn(2, *grid, 8, dtype=torch.float64)
    zm = m.integrate(ks, v).reshape(2, *grid, 2, 3, 4)  # heads, axes, head_dim
    for a in range(3):
        eye = [torch.eye(n, dtype=torch.float64).expand(2, 2, n, n) for n in grid]
        single = eye[:a] + [ks[a]] + eye[a + 1:]
        za = o.integrate(single, v).reshape(2, *grid, 2, 4)
        torch.testing.assert_close(zm[..., a, :], za)
    eye = [torch.eye(n, dtype=torch.float64).expand(2, 2, n, n) for n in grid]
    torch.testing.assert_close(o.integrate(eye, v), v)
    torch.testing.assert_close(m.integrate(eye, v).reshape(2, *grid, 2, 3, 4),
                               v.reshape(2, *grid, 2, 1, 4).expand(2, *grid, 2, 3, 4))


def test_norms():
    z = torch.randn(2, 6, 5, 8, dtype=torch.float64) * 3 + 1
    g = domain_group_norm(z, 2).reshape(2, 30, 2, 4)
    assert torch.allclose(g.mean(dim=(1, 3)), torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(g.var(dim=(1, 3)), torch.ones(2, 2, dtype=torch.float64), atol=1e-6)
    ref = torch.nn.functional.instance_norm(z.movedim(-1, 1), eps=1e-5).movedim(1, -1)
    torch.testing.assert_close(instance_norm(z), ref)


def test_implicit_depth_one_iteration_is_one_residual_layer_and_shares_weights():
    torch.manual_seed(3)
    enc = FactorizedEncoder(16, 1, 2, 4, 2, 2, 8.0, combine="parallel", implicit_steps=1).double()
    u = torch.randn(2, 6, 5, 16, dtype=torch.float64)
    c = _coords((6, 5))
    p = enc.positions[0](grid_points(c))
    torch.testing.assert_close(enc(u, c), u + p + enc.blocks[0](u + p, c))
    enc.implicit_steps = 3  # u <- u + B(u)/3 three times with the same block
    want = u + p
    for _ in range(3):
        want = want + enc.blocks[0](want, c) / 3
    torch.testing.assert_close(enc(u, c), want)
    counts = {n: sum(q.numel() for q in IFactFormer(IFactFormerConfig(n_iter=n, d_model=24, n_heads=2,
                                                                     head_dim=8)).parameters())
              for n in (1, 10)}
    assert counts[1] == counts[10]


def test_ifactformer_o_differs_from_m_only_in_combine():
    for name, combine in (("ifactformer-m", "parallel"), ("ifactformer-o", "chained")):
        cfg = surrogate_config(name, d_model=24, n_heads=2, head_dim=8, n_iter=2)
        assert cfg.combine == combine
        m = build_surrogate(cfg)
        y = m(torch.randn(2, 1, 6, 5, 4, 3))
        assert y.shape == (2, 1, 6, 5, 4, 3) and torch.isfinite(y).all()
    assert isinstance(IFactFormerOConfig(), IFactFormerConfig)


def test_shapes_steps_and_bad_input(tmp_path):
    cfg = FactFormerConfig(t_in=3, t_out=2, d_model=32, n_layers=1, n_heads=2, head_dim=8, channels=1)
    m = FactFormer(cfg)
    x = torch.randn(2, 3, 8, 6, 1)
    assert m(x).shape == (2, 2, 8, 6, 1) and m(x, steps=1).shape == (2, 1, 8, 6, 1)
    torch.testing.assert_close(m(x, steps=1), m(x)[:, :1])  # latent marching is causal in steps
    with pytest.raises(ValueError, match="steps"):
        m(x, steps=3)
    with pytest.raises(ValueError, match="grid"):
        m(torch.randn(2, 3, 8, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(2, 4, 8, 6, 1))
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)
    with pytest.raises(ValueError, match="d_model"):
        FactFormerConfig(d_model=24)
    with pytest.raises(ValueError, match="n_dims"):
        FactFormerConfig(n_dims=4)
    with pytest.raises(ValueError, match="combine"):
        IFactFormerConfig(combine="both")
    # 3-D FactFormer and save / load
    m3 = FactFormer(FactFormerConfig(n_dims=3, t_in=2, t_out=1, d_model=32, n_layers=1, n_heads=2,
                                     head_dim=8, channels=4))
    x3 = torch.randn(1, 2, 4, 5, 3, 4)
    from formers.nn.io import atomic_write, write_json
    from safetensors.torch import save_model
    atomic_write(tmp_path / "model.safetensors", lambda t: save_model(m3, t))
    write_json(tmp_path / "config.json", m3.cfg.to_dict())
    torch.testing.assert_close(load_surrogate(tmp_path)(x3), m3(x3))


def test_grid_softmax_baseline_mixes_every_point_through_the_project_attention(monkeypatch):
    """The full-attention baseline: one layer already couples every pair of grid points, and its
    attention goes through formers.nn's attend core."""
    import formers.nn.attention.softmax as sm

    calls = []
    real = sm.attend
    monkeypatch.setattr(sm, "attend", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    torch.manual_seed(0)
    m = build_surrogate(surrogate_config("softmax", t_in=2, t_out=1, d_model=16, n_layers=1, n_heads=2))
    x = torch.randn(1, 2, 6, 5, 1, requires_grad=True)
    m(x)[0, 0, 0, 0, 0].backward()
    assert calls == [(1, 2, 30, 8)]                     # (batch, heads, N = 6 * 5 points, head_dim)
    assert (x.grad[0, :, :, :, 0].abs().sum(0) > 0).all()  # the corner output sees every point
    with pytest.raises(ValueError, match="max_points"):
        build_surrogate(surrogate_config("softmax", max_points=20))(torch.randn(1, 1, 6, 5, 1))


def test_fourier_features_stay_fp32_under_bf16_autocast():
    from formers.sciml.pde.fourier_features import GaussianFourierFeatures

    torch.manual_seed(0)
    ff = GaussianFourierFeatures(2, 16, scale=8.0)
    pts = grid_points(_coords((9, 7))).float()
    ref = ff(pts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ff(pts)
    # only the Linear after the features runs in bf16: errors of bf16 rounding, not of lost phases
    assert (low.float() - ref).abs().max() < 0.05
