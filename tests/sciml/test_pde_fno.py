"""The Fourier neural operator (arXiv 2010.08895): the spectral layer's identity and resolution
invariance on band-limited fields, mode truncation, shapes in 2-D and 3-D, errors, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from formers.atomic import atomic_write, write_json
from formers.sciml.pde.fno import FNO, FNOConfig, SpectralConv, corner_slices
from formers.sciml.pde.surrogate import load_surrogate

torch.set_num_threads(1)


def identity_weights(layer: SpectralConv) -> None:
    with torch.no_grad():
        for w in layer.weight:
            w.zero_()
            c = w.shape[0]
            idx = torch.arange(c)
            w[idx, idx, ..., 0] = 1.0  # R = I (real part 1, imaginary part 0) at every kept mode


def band_limited(shape: tuple[int, ...], kmax: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A random real field with modes |k_i| <= kmax only, sampled on ``shape``."""
    g = torch.Generator().manual_seed(seed)
    x = [torch.arange(n, dtype=torch.float64) * (2 * math.pi / n) for n in shape]
    mesh = torch.meshgrid(*x, indexing="ij")
    out = torch.zeros(1, channels, *shape, dtype=torch.float64)
    for _ in range(6):
        k = torch.randint(-kmax, kmax + 1, (len(shape),), generator=g)
        a, phase = torch.randn(channels, generator=g, dtype=torch.float64), torch.rand(1, generator=g).item()
        arg = sum(ki * m for ki, m in zip(k.tolist(), mesh)) + 2 * math.pi * phase
        out[0] += a.view(-1, *[1] * len(shape)) * torch.cos(arg)
    return out


@pytest.mark.parametrize("shape", [(16, 12), (8, 8, 6)])
def test_all_modes_and_identity_weights_is_the_identity(shape):
    modes = tuple(n // 2 for n in shape[:-1]) + (shape[-1] // 2 + 1,)
    assert len(corner_slices(modes)) == 2 ** (len(shape) - 1)
    layer = SpectralConv(3, 3, modes).double()
    identity_weights(layer)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    assert torch.allclose(layer(x), x, atol=1e-12)


def test_truncated_modes_keep_band_limited_fields_and_drop_the_rest():
    layer = SpectralConv(3, 3, (5, 5)).double()
    identity_weights(layer)
    low = band_limited((32, 32), kmax=4)
    assert torch.allclose(layer(low), low, atol=1e-12)
    x = torch.arange(32, dtype=torch.float64) * (2 * math.pi / 32)
    high = torch.cos(9 * x)[None, None, :, None].expand(1, 3, 32, 32)
    assert layer(high).abs().max() < 1e-12
    assert torch.allclose(layer(low + high), low, atol=1e-12)


@pytest.mark.parametrize("coarse,fine", [((16, 16), (48, 48)), ((8, 8, 8), (16, 16, 16))])
def test_spectral_layer_is_resolution_invariant_on_band_limited_fields(coarse, fine):
    """Same weights, the same band-limited field sampled at two resolutions: the outputs agree at
    the shared points (the layer acts on the function, not on the grid)."""
    torch.manual_seed(0)
    layer = SpectralConv(3, 2, (4,) * len(coarse)).double()
    u_c, u_f = band_limited(coarse, kmax=3), band_limited(fine, kmax=3)
    step = fine[0] // coarse[0]
    sub = (slice(None), slice(None)) + (slice(None, None, step),) * len(coarse)
    assert torch.allclose(u_f[sub], u_c, atol=1e-12)
    y_c, y_f = layer(u_c), layer(u_f)
    assert y_c.abs().max() > 1e-3
    assert torch.allclose(y_f[sub], y_c, atol=1e-10)


@pytest.mark.parametrize("n_dims,grid", [(2, (16, 12)), (3, (8, 8, 6))])
def test_fno_shapes_and_gradients(n_dims, grid):
    cfg = FNOConfig(n_dims=n_dims, t_in=3, t_out=2, channels=2, width=8, modes=3, n_layers=2, projection=16)
    model = FNO(cfg)
    x = torch.randn(2, 3, *grid, 2)
    y = model(x)
    assert y.shape == (2, 2, *grid, 2) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fno_bad_input_and_config():
    model = FNO(FNOConfig(width=4, modes=6, n_layers=1, projection=8))
    with pytest.raises(ValueError, match=r"grid \(8, 8\) cannot be taken.*>= 12"):
        model(torch.randn(1, 1, 8, 8, 1))
    with pytest.raises(ValueError, match="expected x of shape"):
        model(torch.randn(1, 2, 16, 16, 1))
    x = torch.randn(1, 1, 16, 16, 1)
    x[0, 0, 3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x)
    with pytest.raises(ValueError, match="FNOConfig.modes must be an int > 0, got 0"):
        FNOConfig(modes=0)


def test_save_load_round_trip(tmp_path):
    from safetensors.torch import save_model

    cfg = FNOConfig(n_dims=3, width=6, modes=2, n_layers=2, projection=8, channels=3)
    model = FNO(cfg).eval()
    write_json(tmp_path / "config.json", cfg.to_dict())
    atomic_write(tmp_path / "model.safetensors", lambda tmp: save_model(model, tmp))
    back = load_surrogate(tmp_path).eval()
    x = torch.randn(1, 1, 8, 8, 8, 3)
    assert torch.equal(model(x), back(x))


def test_fno_learns_one_step_kolmogorov_flow_better_than_persistence():
    """CPU smoke: 60 Adam steps on 40 one-step pairs of 16^2 Kolmogorov flow reduce the relative L2
    tenfold and beat copying the last frame (persistence) by a clear margin."""
    from formers.sciml.pde.navier_stokes import navier_stokes_2d
    from formers.sciml.pde.surrogate import relative_l2

    w, _ = navier_stokes_2d(8, grid=16, forcing_wavenumber=4, n_steps=6, burn_in=0.5, dt=1 / 256,
                            record_dt=1 / 16)
    x, y = w[:, :-1].reshape(-1, 1, 16, 16, 1), w[:, 1:].reshape(-1, 1, 16, 16, 1)
    persistence = relative_l2(x, y).mean().item()
    torch.manual_seed(0)
    model = FNO(FNOConfig(width=16, modes=4, n_layers=2, projection=32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = relative_l2(model(x), y).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = relative_l2(model(x), y).mean().item()
    assert final < 0.1 * first and final < 0.7 * persistence, (first, final, persistence)
