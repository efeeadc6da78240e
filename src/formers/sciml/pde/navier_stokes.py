"""2-D incompressible Navier-Stokes (Kolmogorov flow) in vorticity form, pseudo-spectral, batched.

The data generator of FactFormer (Li, Shu, Barati Farimani, "Scalable Transformer for PDE
Surrogate Modeling", NeurIPS 2023, arXiv 2305.17560, §4 Kolmogorov flow; reference
``dataset/kolmogorov.py``, itself from PINO's solver), re-implemented here:

    dw/dt + u . grad w = nu Laplace(w) - drag w + f,   w = curl u,   -Laplace(psi) = w,
    u = (d psi/dy, -d psi/dx),   f(x, y) = -A cos(n y),

on the periodic box [0, 2 pi)^2. Crank-Nicolson for nu |k|^2 + drag, Heun for the advection and the
forcing (:class:`~formers.sciml.pde.spectral.CrankNicolsonHeun`), 2/3 dealiasing with the circular
mask |k| <= N/3 after every step, Gaussian-random-field initial vorticity (alpha 2.5, tau 7).
Defaults are the paper data's physics: Re = 1000 (nu = 1e-3), drag 0.1, forcing wavenumber 8 with
amplitude 8, burn-in 2 s, frames every 1/32 s.

Layout: a field is ``(..., N, N)`` with axis -2 = x and axis -1 = y (as the reference's arrays);
grid point (i, j) is at (2 pi i / N, 2 pi j / N). The forcing varies along the last axis.

Deviations from the reference (also in ``docs/papers.md``):
* it runs directly on the training grid (64^2 or 128^2) with dt = 1/1024 (32 steps per frame),
  not on 2048^2 with dt = 1e-4 subsampled to 256^2 (hours of GPU time); small scales are therefore
  less resolved: at Re 1000 the enstrophy spectrum is flat from |k| ~ 12 to the cut-off (21) at
  64^2, and falls about 60x from its peak to the cut-off (42) at 128^2, with a slight rise in the
  last shells; at 64^2, nu = 4e-3 gives a comparable fall-off;
* real FFTs (``rfft2``) instead of complex FFTs of a real field (same arithmetic, half the work);
* the mean mode is not masked to zero: the scheme conserves it exactly (a test checks);
* each sample draws its initial field from its own seeded generator (reproducible per sample,
  independent of the batch size, the device and the shard layout);
* the recording interval must be a whole number of steps (no shortened last step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from formers.config import Config
from formers.sciml.pde.run import check_grid, check_nonneg, check_pos, check_run, run
from formers.sciml.pde.spectral import (CrankNicolsonHeun, dealias_mask, derivative_wavenumbers,
                                        gaussian_random_field, real_dtype, sample_generators,
                                        wavenumbers)

PAPER_CITE = ("FactFormer: Scalable Transformer for PDE Surrogate Modeling (arXiv 2305.17560), "
              "§4 Kolmogorov flow data (dataset/kolmogorov.py)")


@dataclass
class NS2DConfig(Config):
    """Physics and numerics of a 2-D Kolmogorov-flow data set.

    grid: N (even, >= 8), the field is N x N.  nu: kinematic viscosity (1/Re), >= 0.
    drag: linear drag coefficient, >= 0.  forcing_wavenumber: n of f = -A cos(n y) (0 = no forcing;
    must lie inside the dealiased band, n <= N/3).  forcing_amplitude: A (None = n, as the reference).
    dt: time step.  record_dt: time between saved frames (a whole number of steps).
    n_steps: saved frames per trajectory; frame 0 is the state after ``burn_in`` seconds.
    alpha, tau: Gaussian-random-field parameters of the initial vorticity.
    dtype: "float32" or "float64" arithmetic.
    """

    grid: int = 64
    nu: float = 1e-3
    drag: float = 0.1
    forcing_wavenumber: int = 8
    forcing_amplitude: Optional[float] = None
    dt: float = 1.0 / 1024
    record_dt: float = 1.0 / 32
    n_steps: int = 320
    burn_in: float = 2.0
    alpha: float = 2.5
    tau: float = 7.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        o = type(self).__name__
        check_grid(o, self.grid)
        check_nonneg(o, nu=self.nu, drag=self.drag, burn_in=self.burn_in)
        check_pos(o, dt=self.dt, record_dt=self.record_dt, alpha=self.alpha, tau=self.tau)
        n = self.forcing_wavenumber
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > self.grid / 3:
            raise ValueError(f"{o}.forcing_wavenumber must be an int in [0, grid/3 = {self.grid / 3:.4g}]"
                             f" (inside the dealiased band), got {n!r}")
        if self.forcing_amplitude is not None:
            check_nonneg(o, forcing_amplitude=self.forcing_amplitude)
        check_run(o, self)

    @property
    def amplitude(self) -> float:
        return float(self.forcing_wavenumber if self.forcing_amplitude is None else self.forcing_amplitude)


class Kolmogorov2D:
    """The solver for one :class:`NS2DConfig` on one device: spectral state ``w_hat`` of shape
    ``(batch, N, N//2 + 1)`` (complex), advanced by :meth:`step`.

    Units: the box is [0, 2 pi)^2, time in the units of ``nu`` and ``dt`` (seconds in the paper).
    """

    def __init__(self, cfg: NS2DConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = real_dtype(cfg.dtype)
        n = cfg.grid
        kx, ky = wavenumbers((n, n), device=self.device, dtype=self.dtype)
        self.kx, self.ky = derivative_wavenumbers((n, n), device=self.device, dtype=self.dtype)
        k2 = kx * kx + ky * ky
        self.inv_lap = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
        self.mask = dealias_mask((n, n), "circular", self.device, self.dtype)
        self.scheme = CrankNicolsonHeun(cfg.nu * k2 + cfg.drag, cfg.dt, self.mask)
        y = torch.arange(n, device=self.device, dtype=self.dtype) * (2 * math.pi / n)
        f = (-cfg.amplitude * torch.cos(cfg.forcing_wavenumber * y)).expand(n, n)
        self.forcing_hat = torch.fft.rfft2(f) if cfg.forcing_wavenumber > 0 else None
        # spectral operators, precomputed (fewer kernels per step on the GPU)
        self.u_from_w = 1j * self.ky * self.inv_lap    # u_hat = i ky psi_hat
        self.v_from_w = -1j * self.kx * self.inv_lap   # v_hat = -i kx psi_hat
        self.minus_ikx, self.minus_iky = -1j * self.kx, -1j * self.ky

    # --- transforms
    def to_spectral(self, w: torch.Tensor) -> torch.Tensor:
        """(batch, N, N) real -> (batch, N, N//2+1) complex (``norm="backward"``)."""
        return torch.fft.rfft2(w.to(device=self.device, dtype=self.dtype))

    def to_physical(self, w_hat: torch.Tensor) -> torch.Tensor:
        n = self.cfg.grid
        return torch.fft.irfft2(w_hat, s=(n, n))

    def stream_function(self, w_hat: torch.Tensor) -> torch.Tensor:
        """psi_hat = w_hat / |k|^2 (mean zero): the solution of -Laplace(psi) = w."""
        return w_hat * self.inv_lap

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical velocity (u, v) = (d psi/dy, -d psi/dx), each (batch, N, N)."""
        return self.to_physical(self.u_from_w * w_hat), self.to_physical(self.v_from_w * w_hat)

    def nonlinear(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Fourier transform of -(u . grad w) + f, with u . grad w = d(uw)/dx + d(vw)/dy."""
        u, v = self.velocity(w_hat)
        w = self.to_physical(w_hat)
        out = self.minus_ikx * torch.fft.rfft2(u * w) + self.minus_iky * torch.fft.rfft2(v * w)
        return out + self.forcing_hat if self.forcing_hat is not None else out

    def step(self, w_hat: torch.Tensor, n: int = 1) -> torch.Tensor:
        for _ in range(n):
            w_hat = self.scheme.step(w_hat, self.nonlinear)
        return w_hat

    def initial(self, n_samples: int, seed: int, first_index: int = 0) -> torch.Tensor:
        """Gaussian-random-field vorticity of samples ``first_index ...``: (n_samples, N, N)."""
        n = self.cfg.grid
        gens = sample_generators(seed, first_index, n_samples)
        w0 = gaussian_random_field(n_samples, (n, n), alpha=self.cfg.alpha, tau=self.cfg.tau,
                                   generators=gens, dtype=torch.float64)
        return w0.to(device=self.device, dtype=self.dtype)

    def hint(self) -> str:
        c = self.cfg
        return (f"grid = {c.grid}, nu = {c.nu}, dt = {c.dt}: use a smaller dt (or a larger nu / "
                f"grid)")


def navier_stokes_2d(n_samples: int, *, grid: int = 64, nu: float = 1e-3, drag: float = 0.1,
                     forcing_wavenumber: int = 8, forcing_amplitude: Optional[float] = None,
                     dt: float = 1.0 / 1024, record_dt: float = 1.0 / 32, n_steps: int = 320,
                     burn_in: float = 2.0, alpha: float = 2.5, tau: float = 7.0, seed: int = 0,
                     first_index: int = 0, device: str | torch.device = "cpu", dtype: str = "float32",
                     progress: Callable[[int], None] | None = None,
                     burn_progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Kolmogorov-flow vorticity trajectories from Gaussian-random-field initial conditions.

    Solves the 2-D vorticity equation of the module docstring (FactFormer, arXiv 2305.17560, §4;
    defaults: Re 1000, drag 0.1, forcing -8 cos(8y), frames every 1/32 s after a 2 s burn-in) for
    ``n_samples`` samples in one batch on ``device``.

    Args:
        n_samples: trajectories (one batch; memory ~ 20 * n_samples * grid^2 numbers on ``device``).
        grid, nu, drag, forcing_wavenumber, forcing_amplitude, dt, record_dt, n_steps, burn_in,
            alpha, tau, dtype: see :class:`NS2DConfig` (validated there; bad values raise ValueError
            naming the field).
        seed, first_index: sample ``first_index + i`` starts from the field of generator
            (seed, first_index + i), so data sets can be generated in pieces.
        device: where to simulate ("cpu", "cuda", ...).
        progress: called with 1 after each saved frame (for progress bars).
        burn_progress: called with 1 after each ``record_dt`` of burn-in (ceil(burn_in/record_dt)
            calls; :func:`~formers.sciml.pde.run.burn_chunks`).

    Returns:
        ``(w, params)``: ``w`` float32 on the CPU of shape ``(n_samples, n_steps, grid, grid)``
        (axis -2 = x, axis -1 = y; frame t at time burn_in + t * record_dt), and ``params``, the
        config dict plus ``equation``, ``seed``, ``first_index``, ``n_samples``, ``domain`` and
        ``field`` (everything needed to regenerate the data).

    Raises:
        ValueError: bad parameters, or :class:`~formers.sciml.pde.run.BlowUpError` when the
        run produced NaN/inf (the message names the frame, dt, nu and grid).
    """
    cfg = NS2DConfig(grid=grid, nu=nu, drag=drag, forcing_wavenumber=forcing_wavenumber,
                     forcing_amplitude=forcing_amplitude, dt=dt, record_dt=record_dt,
                     n_steps=n_steps, burn_in=burn_in, alpha=alpha, tau=tau, dtype=dtype)
    w = run(Kolmogorov2D(cfg, device), n_samples, seed, first_index, "ns2d vorticity",
            progress, burn_progress)
    return w, ns2d_params(cfg, seed, first_index, n_samples)


def ns2d_params(cfg: NS2DConfig, seed: int, first_index: int, n_samples: int) -> dict[str, Any]:
    return {"equation": "ns2d", **cfg.to_dict(), "forcing": f"-{cfg.amplitude:g} cos({cfg.forcing_wavenumber} y)",
            "seed": seed, "first_index": first_index, "n_samples": n_samples,
            "domain": "[0, 2pi)^2 periodic", "field": "vorticity (sample, frame, x, y)",
            "source": PAPER_CITE}
