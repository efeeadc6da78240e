"""1-D viscous Burgers equation on a periodic interval, pseudo-spectral, batched: a small, fast data
set for tests and quick runs.

    du/dt + d(u^2/2)/dx = nu d^2u/dx^2   on [0, length),  periodic,

with Gaussian-random-field initial conditions u0 ~ N(0, sigma^2 (-Delta + tau^2)^-alpha). The
defaults are the Burgers benchmark of the Fourier neural operator paper (Li et al., "Fourier Neural
Operator for Parametric Partial Differential Equations", arXiv 2010.08895, §5.1: [0, 1), nu = 0.1,
u0 ~ N(0, 625 (-Delta + 25 I)^-2), so sigma = 25, tau = 5, alpha = 2, up to t = 1). Time stepping
and dealiasing are those of the 2-D solver (Crank-Nicolson for the viscosity, Heun for the flux,
2/3 rule). Deviation: the FNO data were solved on 8192 points with a split-step method and
subsampled; here the solver runs on the output grid directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from formers.config import Config
from formers.sciml.pde.run import check_grid, check_nonneg, check_pos, check_run, run
from formers.sciml.pde.spectral import (CrankNicolsonHeun, dealias_mask, derivative_wavenumbers,
                                        gaussian_random_field, real_dtype, sample_generators,
                                        wavenumbers)


@dataclass
class BurgersConfig(Config):
    """grid: N points (even, >= 8).  length: the period.  nu: viscosity (>= 0).  dt, record_dt,
    n_steps, burn_in, dtype: as :class:`~formers.sciml.pde.navier_stokes.NS2DConfig` (frame 0 is the
    initial condition when ``burn_in`` = 0).  alpha, tau, sigma: the initial field's GRF."""

    grid: int = 256
    length: float = 1.0
    nu: float = 0.1
    dt: float = 1.0 / 2048
    record_dt: float = 1.0 / 64
    n_steps: int = 65
    burn_in: float = 0.0
    alpha: float = 2.0
    tau: float = 5.0
    sigma: float = 25.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        o = type(self).__name__
        check_grid(o, self.grid)
        check_nonneg(o, nu=self.nu, burn_in=self.burn_in)
        check_pos(o, length=self.length, dt=self.dt, record_dt=self.record_dt, alpha=self.alpha,
                  tau=self.tau, sigma=self.sigma)
        check_run(o, self)


class Burgers1D:
    """The solver: spectral state ``u_hat`` (batch, N//2 + 1); physical fields (batch, N)."""

    def __init__(self, cfg: BurgersConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = real_dtype(cfg.dtype)
        (k,) = wavenumbers((cfg.grid,), cfg.length, self.device, self.dtype)
        (self.kd,) = derivative_wavenumbers((cfg.grid,), cfg.length, self.device, self.dtype)
        mask = dealias_mask((cfg.grid,), "circular", self.device, self.dtype)
        self.scheme = CrankNicolsonHeun(cfg.nu * k * k, cfg.dt, mask)

    def to_spectral(self, u: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(u.to(device=self.device, dtype=self.dtype))

    def to_physical(self, u_hat: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft(u_hat, n=self.cfg.grid)

    def nonlinear(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Fourier transform of -d(u^2/2)/dx."""
        u = self.to_physical(u_hat)
        return -0.5j * self.kd * torch.fft.rfft(u * u)

    def step(self, u_hat: torch.Tensor, n: int = 1) -> torch.Tensor:
        for _ in range(n):
            u_hat = self.scheme.step(u_hat, self.nonlinear)
        return u_hat

    def initial(self, n_samples: int, seed: int, first_index: int = 0) -> torch.Tensor:
        c = self.cfg
        u0 = gaussian_random_field(n_samples, (c.grid,), alpha=c.alpha, tau=c.tau, sigma=c.sigma,
                                   length=c.length, generators=sample_generators(seed, first_index, n_samples))
        return u0.to(device=self.device, dtype=self.dtype)

    def hint(self) -> str:
        c = self.cfg
        return f"grid = {c.grid}, nu = {c.nu}, dt = {c.dt}: use a smaller dt (or a larger nu)"


def burgers_1d(n_samples: int, *, grid: int = 256, length: float = 1.0, nu: float = 0.1,
               dt: float = 1.0 / 2048, record_dt: float = 1.0 / 64, n_steps: int = 65,
               burn_in: float = 0.0, alpha: float = 2.0, tau: float = 5.0, sigma: float = 25.0,
               seed: int = 0, first_index: int = 0, device: str | torch.device = "cpu",
               dtype: str = "float32",
               progress: Callable[[int], None] | None = None,
               burn_progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Burgers trajectories from GRF initial conditions (module docstring; FNO arXiv 2010.08895 §5.1).

    Returns ``(u, params)``: ``u`` float32 on the CPU of shape ``(n_samples, n_steps, grid)``
    (frame t at time burn_in + t * record_dt; with the defaults frames 0 and 64 are t = 0 and t = 1,
    FNO's input and target) and the parameters dict. Raises ValueError for bad parameters (naming
    the field) and BlowUpError (a ValueError) for a run that produced NaN/inf.
    """
    cfg = BurgersConfig(grid=grid, length=length, nu=nu, dt=dt, record_dt=record_dt, n_steps=n_steps,
                        burn_in=burn_in, alpha=alpha, tau=tau, sigma=sigma, dtype=dtype)
    u = run(Burgers1D(cfg, device), n_samples, seed, first_index, "burgers u",
            progress, burn_progress)
    params = {"equation": "burgers", **cfg.to_dict(), "seed": seed, "first_index": first_index,
              "n_samples": n_samples, "domain": f"[0, {length:g}) periodic", "field": "u (sample, frame, x)",
              "source": "Fourier Neural Operator (arXiv 2010.08895) §5.1 Burgers data"}
    return u, params
