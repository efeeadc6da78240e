"""The 1-D Burgers generator: the exact Cole-Hopf solution, conservation of the mean, GRF statistics."""

from __future__ import annotations

import math

import pytest
import torch

from formers.sciml.pde.burgers import Burgers1D, BurgersConfig, burgers_1d

torch.set_num_threads(1)


def cole_hopf(x: torch.Tensor, t: float, nu: float, a: float) -> torch.Tensor:
    """u = -2 nu phi_x / phi with phi = 1 + a cos(2 pi x) exp(-4 pi^2 nu t) (heat equation), an
    exact periodic solution of u_t + u u_x = nu u_xx on [0, 1)."""
    e = a * math.exp(-4 * math.pi**2 * nu * t)
    return 4 * math.pi * nu * e * torch.sin(2 * math.pi * x) / (1 + e * torch.cos(2 * math.pi * x))


def test_matches_the_cole_hopf_solution():
    nu, a, dt, n = 0.05, 0.6, 1 / 4096, 1024
    s = Burgers1D(BurgersConfig(grid=64, nu=nu, dt=dt, record_dt=dt, dtype="float64"))
    x = torch.arange(64, dtype=torch.float64) / 64
    u0 = cole_hopf(x, 0.0, nu, a)[None]
    u = s.to_physical(s.step(s.to_spectral(u0), n))
    exact = cole_hopf(x, dt * n, nu, a)
    assert (u[0] - exact).abs().max() < 1e-6 * exact.abs().max()
    assert (exact - u0[0]).abs().max() > 0.1 * exact.abs().max()  # the solution moved


def test_mean_is_conserved_and_output_shape():
    u, p = burgers_1d(3, grid=64, n_steps=5, record_dt=1 / 64, dt=1 / 1024, seed=2)
    assert u.shape == (3, 5, 64) and u.dtype == torch.float32 and torch.isfinite(u).all()
    assert u[:, 0].std() > 0.1 and (u[:, -1] - u[:, 0]).abs().max() > 0.01
    assert torch.allclose(u.mean(-1), u[:, :1].mean(-1).expand(3, 5), atol=1e-5)
    assert p["equation"] == "burgers" and p["nu"] == 0.1 and p["sigma"] == 25.0


def test_initial_field_has_the_reference_grf_variance():
    """The reference GaussianRF (kept for the data's scale) gives Var u0(x) = sum over 0 < m < N/2 of
    4 sigma^2 / ((2 pi m)^2 + tau^2)^alpha, plus sigma^2 / (...)^alpha for the real Nyquist mode:
    twice the nominal covariance sigma^2 (-Delta + tau^2)^-alpha."""
    c = BurgersConfig(grid=64, dtype="float64")
    u0 = Burgers1D(c).initial(4000, seed=0)
    lam = lambda m: ((2 * math.pi * m) ** 2 + c.tau**2) ** (-c.alpha)  # noqa: E731
    m = torch.arange(1, 32, dtype=torch.float64)
    var = (4 * c.sigma**2 * lam(m)).sum() + c.sigma**2 * lam(32.0)
    assert abs(u0.var() / var - 1) < 0.05
    assert abs(u0.mean()) < 0.05 * var.sqrt()


def test_bad_input():
    with pytest.raises(ValueError, match="BurgersConfig.nu must be a finite number >= 0, got -0.1"):
        burgers_1d(1, nu=-0.1)
    with pytest.raises(ValueError, match="grid must be an even int >= 8, got 7"):
        burgers_1d(1, grid=7)
