"""3-D incompressible Navier-Stokes in a periodic box, velocity form, pseudo-spectral, batched:
forced isotropic turbulence for the IFactFormer-m comparison (notes §3(c): "a pseudo-spectral 3-D
Navier-Stokes ... at 32^3 generated on the GPU", a synthetic stand-in for the channel-flow DNS).

    du/dt = P[u x omega] + nu Laplace(u) (+ forcing),   omega = curl u,   div u = 0,

on [0, 2 pi)^3, where P(k) = I - k k^T / |k|^2 projects onto divergence-free fields (the pressure
and the gradient part of (u . grad) u = omega x u + grad(|u|^2 / 2) drop out). Time stepping is the
same Crank-Nicolson (viscosity) + Heun (nonlinear term) scheme as the 2-D solver, with the circular
2/3 dealiasing after every step. The forcing keeps the kinetic energy constant by rescaling the
modes with 0 < |k| <= ``forcing_k`` after every step (Lamorgese, Caughey, Pope, "Direct numerical
simulation of homogeneous turbulence with hyperviscosity", Phys. Fluids 17, 015106 (2005), as
FactFormer's isotropic-turbulence generator ``dataset/Isotropic.py`` with |k| <= 3). Initial
fields: random phases with energy spectrum E(k) ~ (k/k_f)^2 for k <= k_f and (k/k_f)^(-5/3) above
(as that generator), projected to zero divergence, dealiased and scaled to the target energy.

Layout: velocity ``(..., N, N, N, 3)``, channels last (u_x, u_y, u_z along axes x, y, z = the three
grid axes in order), as the surrogate interface (``formers.sciml.pde.surrogate``).

Deviations from FactFormer's generator (spectralDNS, 60^3, RK4, nu = kd^(-4/3)): our own CN + Heun
scheme (as the 2-D solver), a grid of 32^3 by default with nu = 0.03 (the energy spectrum falls by about three decades
from its peak to the dealiasing cut-off at this grid), and no MPI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from formers.config import Config
from formers.sciml.pde.run import check_grid, check_nonneg, check_pos, check_run, run
from formers.sciml.pde.spectral import (CrankNicolsonHeun, dealias_mask, derivative_wavenumbers,
                                        parseval_weights, real_dtype, sample_generators, wavenumbers)

FORCINGS = ("energy", "none")


@dataclass
class NS3DConfig(Config):
    """Physics and numerics of a 3-D periodic (isotropic-turbulence) data set.

    grid: N (even, >= 8), fields are N^3.  nu: viscosity (>= 0).  forcing: "energy" (keep the
    kinetic energy at ``energy`` by rescaling the band 0 < |k| <= forcing_k) or "none" (decaying).
    forcing_k: forcing band and peak of the initial spectrum (> 0, <= N/3).  energy: kinetic
    energy 1/2 <|u|^2> of the initial field and the forcing target (> 0).  dt, record_dt, n_steps,
    burn_in, dtype: as :class:`~formers.sciml.pde.navier_stokes.NS2DConfig`.
    """

    grid: int = 32
    nu: float = 0.03
    forcing: str = "energy"
    forcing_k: float = 3.0
    energy: float = 0.5
    dt: float = 0.01
    record_dt: float = 0.1
    n_steps: int = 100
    burn_in: float = 2.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        o = type(self).__name__
        check_grid(o, self.grid)
        check_nonneg(o, nu=self.nu, burn_in=self.burn_in)
        check_pos(o, dt=self.dt, record_dt=self.record_dt, forcing_k=self.forcing_k, energy=self.energy)
        if self.forcing not in FORCINGS:
            raise ValueError(f"{o}.forcing = {self.forcing!r} is not one of {list(FORCINGS)}")
        if self.forcing_k > self.grid / 3:
            raise ValueError(f"{o}.forcing_k must be <= grid/3 = {self.grid / 3:.4g} (inside the "
                             f"dealiased band), got {self.forcing_k!r}")
        check_run(o, self)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product of vector fields stacked on dim 1: (batch, 3, ...)."""
    return torch.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1],
                        a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                        a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], dim=1)


class Turbulence3D:
    """The solver for one :class:`NS3DConfig` on one device. Spectral state ``u_hat`` of shape
    ``(batch, 3, N, N, N//2 + 1)``; physical fields for :meth:`to_spectral`/:meth:`to_physical`
    are channels-last ``(batch, N, N, N, 3)``."""

    def __init__(self, cfg: NS3DConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.dtype = real_dtype(cfg.dtype)
        n = cfg.grid
        shape = (n, n, n)
        k = wavenumbers(shape, device=self.device, dtype=self.dtype)
        self.k = torch.stack([ki.expand(n, n, n // 2 + 1) for ki in k])  # (3, N, N, N//2+1)
        self.kd = torch.stack([ki.expand(n, n, n // 2 + 1) for ki in
                               derivative_wavenumbers(shape, device=self.device, dtype=self.dtype)])
        self.k2 = (self.k**2).sum(0)
        self.k_over_k2 = self.k / torch.where(self.k2 > 0, self.k2, 1.0)
        self.mask = dealias_mask(shape, "circular", self.device, self.dtype)
        self.scheme = CrankNicolsonHeun(cfg.nu * self.k2, cfg.dt, self.mask)
        self.weights = parseval_weights(shape, self.device, self.dtype)
        kmag = self.k2.sqrt()
        self.band = ((kmag > 0) & (kmag <= cfg.forcing_k)).to(self.dtype)
        self.n_points = n**3

    def to_spectral(self, u: torch.Tensor) -> torch.Tensor:
        """(batch, N, N, N, 3) real -> (batch, 3, N, N, N//2+1) complex."""
        return torch.fft.rfftn(u.to(device=self.device, dtype=self.dtype).movedim(-1, 1), dim=(-3, -2, -1))

    def to_physical(self, u_hat: torch.Tensor) -> torch.Tensor:
        n = self.cfg.grid
        return torch.fft.irfftn(u_hat, s=(n, n, n), dim=(-3, -2, -1)).movedim(1, -1)

    def project(self, v_hat: torch.Tensor) -> torch.Tensor:
        """P(k) v = v - k (k . v) / |k|^2 (the mean mode is left as it is)."""
        return v_hat - self.k_over_k2 * (self.k * v_hat).sum(1, keepdim=True)

    def divergence(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Spectral divergence i k . u_hat: (batch, N, N, N//2+1)."""
        return 1j * (self.kd * u_hat).sum(1)

    def energy(self, u_hat: torch.Tensor, band: torch.Tensor | None = None) -> torch.Tensor:
        """Kinetic energy 1/2 <|u|^2> per sample (of the modes in ``band`` if given): (batch,)."""
        p = (u_hat.real**2 + u_hat.imag**2).sum(1) * self.weights
        if band is not None:
            p = p * band
        return 0.5 * p.sum(dim=(-3, -2, -1)) / self.n_points**2

    def nonlinear(self, u_hat: torch.Tensor) -> torch.Tensor:
        """P[u x omega] in Fourier space (dealiased inputs; the product is dealiased by the scheme)."""
        n = self.cfg.grid
        omega_hat = 1j * torch.stack([self.kd[1] * u_hat[:, 2] - self.kd[2] * u_hat[:, 1],
                                      self.kd[2] * u_hat[:, 0] - self.kd[0] * u_hat[:, 2],
                                      self.kd[0] * u_hat[:, 1] - self.kd[1] * u_hat[:, 0]], dim=1)
        u = torch.fft.irfftn(u_hat, s=(n, n, n), dim=(-3, -2, -1))
        omega = torch.fft.irfftn(omega_hat, s=(n, n, n), dim=(-3, -2, -1))
        return self.project(torch.fft.rfftn(cross(u, omega), dim=(-3, -2, -1)))

    def force(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Rescale the forcing band so that the total energy equals ``cfg.energy`` (per sample)."""
        total, low = self.energy(u_hat), self.energy(u_hat, self.band)
        scale2 = ((self.cfg.energy - (total - low)) / low.clamp_min(1e-30)).clamp_min(0.0)
        factor = 1 + (scale2.sqrt() - 1)[:, None, None, None, None] * self.band
        return u_hat * factor

    def step(self, u_hat: torch.Tensor, n: int = 1) -> torch.Tensor:
        for _ in range(n):
            u_hat = self.scheme.step(u_hat, self.nonlinear)
            if self.cfg.forcing == "energy":
                u_hat = self.force(u_hat)
        return u_hat

    def initial(self, n_samples: int, seed: int, first_index: int = 0) -> torch.Tensor:
        """Random divergence-free velocity of energy ``cfg.energy``: (n_samples, N, N, N, 3)."""
        c = self.cfg
        n = c.grid
        half = (3, n, n, n // 2 + 1)
        gens = sample_generators(seed, first_index, n_samples)
        z = torch.stack([torch.randn(half, dtype=torch.complex128, generator=g) for g in gens])
        k = self.k.cpu().double()
        kmag = (k**2).sum(0).sqrt()
        ratio = kmag / c.forcing_k
        spectrum = torch.where(ratio <= 1, ratio**2, ratio.clamp_min(1e-30) ** (-5.0 / 3.0))
        amp = torch.where(kmag > 0, (spectrum / (4 * math.pi * kmag.clamp_min(1e-30) ** 2)).sqrt(), 0.0)
        cdtype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        u_hat = (z * amp).to(device=self.device, dtype=cdtype)
        u_hat = self.to_spectral(self.to_physical(self.project(u_hat) * self.mask))  # Hermitian
        u_hat = u_hat * (c.energy / self.energy(u_hat)).sqrt()[:, None, None, None, None]
        return self.to_physical(u_hat)

    def hint(self) -> str:
        c = self.cfg
        return f"grid = {c.grid}, nu = {c.nu}, dt = {c.dt}: use a smaller dt (or a larger nu)"


def navier_stokes_3d(n_samples: int, *, grid: int = 32, nu: float = 0.03, forcing: str = "energy",
                     forcing_k: float = 3.0, energy: float = 0.5, dt: float = 0.01,
                     record_dt: float = 0.1, n_steps: int = 100, burn_in: float = 2.0, seed: int = 0,
                     first_index: int = 0, device: str | torch.device = "cpu", dtype: str = "float32",
                     progress: Callable[[int], None] | None = None,
                     burn_progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forced isotropic-turbulence velocity trajectories (module docstring) for ``n_samples``
    samples in one batch on ``device``.

    Args: see :class:`NS3DConfig` (validated; bad values raise ValueError naming the field);
        ``seed``/``first_index``/``device``/``progress`` as
        :func:`~formers.sciml.pde.navier_stokes.navier_stokes_2d`.

    Returns:
        ``(u, params)``: ``u`` float32 on the CPU of shape ``(n_samples, n_steps, N, N, N, 3)``
        (frame t at time burn_in + t * record_dt), and the parameters dict.

    Raises:
        ValueError: bad parameters; BlowUpError (a ValueError) when the run produced NaN/inf.
    """
    cfg = NS3DConfig(grid=grid, nu=nu, forcing=forcing, forcing_k=forcing_k, energy=energy, dt=dt,
                     record_dt=record_dt, n_steps=n_steps, burn_in=burn_in, dtype=dtype)
    u = run(Turbulence3D(cfg, device), n_samples, seed, first_index, "ns3d velocity",
            progress, burn_progress)
    params = {"equation": "ns3d", **cfg.to_dict(), "seed": seed, "first_index": first_index,
              "n_samples": n_samples, "domain": "[0, 2pi)^3 periodic",
              "field": "velocity (sample, frame, x, y, z, component)",
              "source": "3-D periodic NS for the IFactFormer-m comparison (arXiv 2412.18840, notes §3(c))"}
    return u, params
