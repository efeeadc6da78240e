"""The 2-D Kolmogorov-flow solver (FactFormer notes §2(b), §2(d) test 5): invariants, an analytic
viscous decay, the exact laminar Kolmogorov state, the stream function, dealiasing, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from formers.sciml.pde.navier_stokes import Kolmogorov2D, NS2DConfig, navier_stokes_2d
from formers.sciml.pde.run import BlowUpError
from formers.sciml.pde.spectral import integer_wavenumbers

torch.set_num_threads(1)


def grid_xy(n: int):
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.meshgrid(x, x, indexing="ij")  # axis -2 = x, axis -1 = y


def test_mean_vorticity_conserved_with_forcing_and_advection():
    cfg = NS2DConfig(grid=32, nu=1e-3, drag=0.0, dt=1 / 256, dtype="float64")
    s = Kolmogorov2D(cfg)
    w0 = s.initial(2, seed=3) + 0.3  # a non-zero mean, to be kept exactly
    w = s.to_physical(s.step(s.to_spectral(w0), 128))
    assert w.std() > 1.0  # the flow moved
    assert (w - w0).abs().max() > 0.1
    assert torch.allclose(w.mean(dim=(-2, -1)), torch.full((2,), 0.3, dtype=torch.float64), atol=1e-12)


def test_zero_mean_stays_zero_with_drag():
    s = Kolmogorov2D(NS2DConfig(grid=32, dt=1 / 256, dtype="float64"))
    w0 = s.initial(1, seed=0)
    assert abs(w0.mean()) < 1e-12
    w = s.to_physical(s.step(s.to_spectral(w0), 64))
    assert abs(w.mean()) < 1e-12


@pytest.mark.parametrize("drag", [0.0, 0.1])
def test_single_mode_follows_analytic_viscous_decay(drag):
    """Forcing off; one Fourier mode makes the advection term vanish: w(t) = exp(-(nu |k|^2 + drag) t) w0."""
    nu, t_end = 0.02, 1.0
    cfg = NS2DConfig(grid=32, nu=nu, drag=drag, forcing_wavenumber=0, dt=1 / 1024, dtype="float64")
    s = Kolmogorov2D(cfg)
    x, y = grid_xy(32)
    w0 = torch.cos(3 * x + 4 * y)[None]  # |k|^2 = 25
    w_hat = s.to_spectral(w0)
    assert s.nonlinear(w_hat).abs().max() < 1e-9 * w_hat.abs().max()  # advection of one mode is zero
    w = s.to_physical(s.step(w_hat, 1024))
    exact = math.exp(-(nu * 25 + drag) * t_end) * w0
    assert (w - exact).abs().max() < 1e-6
    assert (w - w0).abs().max() > 0.3  # it did decay


def test_laminar_kolmogorov_state_is_steady():
    """w = -A cos(n y) / (nu n^2 + drag) balances forcing, viscosity and drag, and is a single mode,
    so it is an exact steady solution of the full equation (checks the forcing's sign and axis)."""
    cfg = NS2DConfig(grid=32, nu=0.05, drag=0.1, forcing_wavenumber=4, dt=1 / 256, dtype="float64")
    s = Kolmogorov2D(cfg)
    _, y = grid_xy(32)
    w_s = (-4 * torch.cos(4 * y) / (0.05 * 16 + 0.1))[None]
    w = s.to_physical(s.step(s.to_spectral(w_s), 256))
    assert (w - w_s).abs().max() < 1e-10
    w_wrong = s.to_physical(s.step(s.to_spectral(-w_s), 16))  # opposite sign: not steady
    assert (w_wrong + w_s).abs().max() > 0.1


def test_advection_term_hand_case():
    """w = cos x + cos 2y: psi = cos x + cos(2y)/4, u = psi_y = -sin(2y)/2, v = -psi_x = sin x, so
    -(u w_x + v w_y) = -(sin(2y) sin(x)/2 - 2 sin x sin 2y) = 1.5 sin x sin 2y (forcing off)."""
    s = Kolmogorov2D(NS2DConfig(grid=16, forcing_wavenumber=0, dtype="float64"))
    x, y = grid_xy(16)
    w = (torch.cos(x) + torch.cos(2 * y))[None]
    got = s.to_physical(s.nonlinear(s.to_spectral(w)))
    assert torch.allclose(got[0], 1.5 * torch.sin(x) * torch.sin(2 * y), atol=1e-12)
    forced = Kolmogorov2D(NS2DConfig(grid=16, forcing_wavenumber=4, forcing_amplitude=3.0, dtype="float64"))
    got = forced.to_physical(forced.nonlinear(forced.to_spectral(w)))
    assert torch.allclose(got[0], 1.5 * torch.sin(x) * torch.sin(2 * y) - 3 * torch.cos(4 * y), atol=1e-12)


def test_velocity_from_stream_function_is_divergence_free_and_has_curl_w():
    s = Kolmogorov2D(NS2DConfig(grid=32, dtype="float64"))
    w_hat = s.to_spectral(s.initial(2, seed=1)) * s.mask  # band-limited
    u, v = s.velocity(w_hat)
    u_hat, v_hat = torch.fft.rfft2(u), torch.fft.rfft2(v)
    div = 1j * s.kx * u_hat + 1j * s.ky * v_hat
    curl = 1j * s.kx * v_hat - 1j * s.ky * u_hat
    scale = w_hat.abs().max()
    assert div.abs().max() < 1e-12 * scale
    assert (curl - w_hat).abs().max() < 1e-12 * scale
    # hand case: w = cos(2y) -> psi = cos(2y)/4, u = psi_y = -sin(2y)/2, v = -psi_x = 0
    x, y = grid_xy(32)
    u, v = s.velocity(s.to_spectral(torch.cos(2 * y)[None]))
    assert torch.allclose(u[0], -torch.sin(2 * y) / 2, atol=1e-13) and v.abs().max() < 1e-13


def test_dealiasing_zeroes_the_top_third():
    n = 48
    s = Kolmogorov2D(NS2DConfig(grid=n, dtype="float64"))
    w0 = torch.randn(1, n, n, dtype=torch.float64)  # energy in every mode
    w_hat = s.step(s.to_spectral(w0))
    mx, my = integer_wavenumbers((n, n))
    top = (mx.abs() > n / 3) | (my.abs() > n / 3)
    outside_circle = mx**2 + my**2 > (n / 3) ** 2
    assert top.any() and outside_circle.any()
    assert w_hat[0][top.expand(n, n // 2 + 1)].abs().max() == 0
    assert w_hat[0][outside_circle.expand(n, n // 2 + 1)].abs().max() == 0
    assert w_hat[0][~outside_circle.expand(n, n // 2 + 1)].abs().min() > 0  # the rest is kept


def test_generator_shape_params_and_per_sample_reproducibility():
    kw = dict(grid=16, forcing_wavenumber=4, n_steps=3, burn_in=0.0, record_dt=1 / 32, dt=1 / 256, seed=5)
    w, p = navier_stokes_2d(3, **kw)
    assert w.shape == (3, 3, 16, 16) and w.dtype == torch.float32 and torch.isfinite(w).all()
    assert p["equation"] == "ns2d" and p["seed"] == 5 and p["grid"] == 16 and p["nu"] == 1e-3
    frames, burn = [], []
    w1, p1 = navier_stokes_2d(1, first_index=2, progress=frames.append, burn_progress=burn.append,
                              **{**kw, "burn_in": 0.0})  # sample 2 alone = sample 2 of the batch
    assert frames == [1, 1, 1] and burn == []
    assert p1["first_index"] == 2
    assert torch.allclose(w1[0], w[2], atol=1e-5)
    assert not torch.allclose(w[0], w[1])
    burn = []
    navier_stokes_2d(1, burn_progress=burn.append, **{**kw, "burn_in": 5 / 64})  # 2.5 frames
    assert burn == [1, 1, 1]


@pytest.mark.parametrize("field,value,match", [
    ("grid", 33, "grid must be an even int"), ("nu", -0.1, "nu must be a finite number >= 0"),
    ("dt", 0.0, "dt must be"), ("record_dt", 0.01, "whole multiple of dt"),
    ("forcing_wavenumber", 20, "forcing_wavenumber"), ("dtype", "float16", "dtype"),
])
def test_bad_input_names_the_value(field, value, match):
    with pytest.raises(ValueError, match=match) as e:
        navier_stokes_2d(1, **{"grid": 32, "dt": 1 / 1024, field: value})
    assert str(value) in str(e.value)


def test_blow_up_is_a_clear_error():
    with pytest.raises(BlowUpError, match="dt = 0.5"):
        navier_stokes_2d(1, grid=32, nu=0.0, drag=0.0, dt=0.5, record_dt=0.5, burn_in=0.0, n_steps=400)
