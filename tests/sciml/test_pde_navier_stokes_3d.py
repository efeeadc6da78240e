"""The 3-D periodic Navier-Stokes generator (IFactFormer notes §3(c)): zero divergence to round-off,
the analytic viscous energy decay of one Fourier mode, the constant-energy forcing, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from formers.sciml.pde.navier_stokes_3d import NS3DConfig, Turbulence3D, navier_stokes_3d

torch.set_num_threads(1)


def solver(**kw) -> Turbulence3D:
    return Turbulence3D(NS3DConfig(**{"grid": 16, "dtype": "float64", "forcing_k": 2.0, **kw}))


def test_velocity_stays_divergence_free_to_round_off():
    s = solver(nu=0.03, dt=0.02)
    u_hat = s.to_spectral(s.initial(2, seed=0))
    scale = (s.k.abs() * u_hat.abs()).amax()
    assert s.divergence(u_hat).abs().max() < 1e-12 * scale
    u_hat2 = s.step(u_hat, 20)
    assert (u_hat2 - u_hat).abs().max() > 1e-2 * u_hat.abs().max()  # it evolved
    assert s.divergence(u_hat2).abs().max() < 1e-12 * scale


def test_single_mode_energy_follows_analytic_viscous_decay():
    """u = (0, 0, sin(x + 2y)): divergence-free, its u x omega is a gradient (projected away), so
    with forcing off u(t) = exp(-nu |k|^2 t) u0 and E(t) = E0 exp(-2 nu |k|^2 t), |k|^2 = 5."""
    nu, dt, n_steps = 0.02, 1 / 256, 256
    s = solver(nu=nu, dt=dt, record_dt=dt, burn_in=0.0, forcing="none")
    x = torch.arange(16, dtype=torch.float64) * (2 * math.pi / 16)
    X, Y, _ = torch.meshgrid(x, x, x, indexing="ij")
    u0 = torch.zeros(1, 16, 16, 16, 3, dtype=torch.float64)
    u0[..., 2] = torch.sin(X + 2 * Y)
    u_hat = s.to_spectral(u0)
    assert s.nonlinear(u_hat).abs().max() < 1e-10 * u_hat.abs().max()
    e0 = s.energy(u_hat)
    assert torch.allclose(e0, torch.tensor([0.25], dtype=torch.float64))  # 1/2 <sin^2> = 1/4
    u_hat = s.step(u_hat, n_steps)
    t = dt * n_steps
    assert abs(s.energy(u_hat) / e0 - math.exp(-2 * nu * 5 * t)) < 1e-6
    assert (s.to_physical(u_hat) - math.exp(-nu * 5 * t) * u0).abs().max() < 1e-6


def test_nonlinear_term_hand_case():
    """u = (sin 2y, sin x, 0): (u . grad) u = (2 sin x cos 2y, cos x sin 2y, 0), not a gradient; its
    projection onto divergence-free fields (modes (1, +-2): P a = a - k (k . a) / 5) is
    (6/5 sin x cos 2y, -3/5 cos x sin 2y, 0), and the solver's term is minus that."""
    s = solver()
    x = torch.arange(16, dtype=torch.float64) * (2 * math.pi / 16)
    X, Y, _ = torch.meshgrid(x, x, x, indexing="ij")
    u = torch.stack([torch.sin(2 * Y), torch.sin(X), torch.zeros_like(X)], dim=-1)[None]
    got = s.to_physical(s.nonlinear(s.to_spectral(u)))[0]
    want = torch.stack([-1.2 * torch.sin(X) * torch.cos(2 * Y), 0.6 * torch.cos(X) * torch.sin(2 * Y),
                        torch.zeros_like(X)], dim=-1)
    assert torch.allclose(got, want, atol=1e-12)


def test_forcing_keeps_the_energy_constant_while_the_flow_evolves():
    s = solver(nu=0.05, dt=0.02, energy=0.7)
    u_hat = s.to_spectral(s.initial(2, seed=1))
    assert torch.allclose(s.energy(u_hat), torch.full((2,), 0.7, dtype=torch.float64), atol=1e-12)
    u_hat2 = s.step(u_hat, 25)
    assert torch.allclose(s.energy(u_hat2), torch.full((2,), 0.7, dtype=torch.float64), atol=1e-10)
    assert (u_hat2 - u_hat).abs().max() > 1e-2 * u_hat.abs().max()
    free = solver(nu=0.05, dt=0.02, energy=0.7, forcing="none")
    assert (free.energy(free.step(u_hat, 25)) < 0.69).all()  # without forcing it decays


def test_generator_shape_params_and_bad_input():
    u, p = navier_stokes_3d(2, grid=8, forcing_k=2.0, n_steps=2, burn_in=0.0, record_dt=0.02, dt=0.01)
    assert u.shape == (2, 2, 8, 8, 8, 3) and u.dtype == torch.float32 and torch.isfinite(u).all()
    assert p["equation"] == "ns3d" and p["grid"] == 8 and p["forcing"] == "energy"
    with pytest.raises(ValueError, match="grid must be an even int"):
        navier_stokes_3d(1, grid=15)
    with pytest.raises(ValueError, match="forcing_k must be <= grid/3"):
        navier_stokes_3d(1, grid=8, forcing_k=3.0)
    with pytest.raises(ValueError, match="'spectral' is not one of"):
        navier_stokes_3d(1, forcing="spectral")
    with pytest.raises(ValueError, match="nu must be a finite number >= 0, got -1"):
        navier_stokes_3d(1, nu=-1)
