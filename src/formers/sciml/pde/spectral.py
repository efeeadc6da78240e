"""Pseudo-spectral building blocks shared by the PDE generators (periodic boxes, real FFTs).

* :func:`wavenumbers`: angular wavenumbers of an ``rfftn`` spectrum, one broadcastable tensor per
  axis (the last axis is the half axis).
* :func:`dealias_mask`: the 2/3 rule. ``"circular"`` keeps |k|^2 <= (N/3)^2 in integer
  wavenumbers (as the FactFormer/PINO Kolmogorov solver); ``"square"`` keeps |k_i| <= N/3 per axis.
  Either way every mode with some |k_i| > N/3 (the top third) is zero.
* :func:`gaussian_random_field`: samples of the Gaussian random field N(0, sigma^2 (-Delta + tau^2)^-alpha)
  used for initial conditions (FNO, arXiv 2010.08895 §5; FactFormer's data use alpha 2.5, tau 7).
* :class:`CrankNicolsonHeun`: one step of du/dt = -L u + N(u) with Crank-Nicolson on the diagonal
  linear part L and Heun (explicit trapezoid) on N, the scheme of the FactFormer/PINO solvers.
* :func:`parseval_weights`: multiplicities of the half-spectrum modes, for energies.

All functions work on any device and in float32 or float64.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

REAL_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def real_dtype(name: str, owner: str = "dtype") -> torch.dtype:
    """``"float32"``/``"float64"`` to the torch dtype; ValueError naming ``owner`` otherwise."""
    if name not in REAL_DTYPES:
        raise ValueError(f"{owner} = {name!r} is not one of {sorted(REAL_DTYPES)}")
    return REAL_DTYPES[name]


def integer_wavenumbers(shape: Sequence[int], device=None, dtype=torch.float64) -> list[torch.Tensor]:
    """Integer wavenumbers of an ``rfftn`` of a field of spatial ``shape``: one tensor per axis,
    shaped to broadcast against the spectrum (shape[:-1] + (shape[-1]//2 + 1,))."""
    d = len(shape)
    out = []
    for i, n in enumerate(shape):
        f = torch.fft.rfftfreq(n, 1.0 / n) if i == d - 1 else torch.fft.fftfreq(n, 1.0 / n)
        view = [1] * d
        view[i] = f.numel()
        out.append(f.to(device=device, dtype=dtype).reshape(view))
    return out


def wavenumbers(shape: Sequence[int], length: float = 2 * math.pi, device=None,
                dtype=torch.float64) -> list[torch.Tensor]:
    """Angular wavenumbers k_i = 2 pi m_i / length of a periodic box of side ``length``."""
    return [k * (2 * math.pi / length) for k in integer_wavenumbers(shape, device, dtype)]


def derivative_wavenumbers(shape: Sequence[int], length: float = 2 * math.pi, device=None,
                           dtype=torch.float64) -> list[torch.Tensor]:
    """:func:`wavenumbers` with the Nyquist mode of each even axis set to 0: the derivative of a
    real field has no well-defined Nyquist component (the usual rule for odd derivatives)."""
    ks = wavenumbers(shape, length, device, dtype)
    out = []
    for k, n in zip(ks, shape):
        m = k * (length / (2 * math.pi))
        out.append(torch.where(m.abs() == n / 2, torch.zeros_like(k), k) if n % 2 == 0 else k)
    return out


def dealias_mask(shape: Sequence[int], rule: str = "circular", device=None,
                 dtype=torch.float64) -> torch.Tensor:
    """1 on the modes kept by the 2/3 rule, 0 elsewhere; broadcastable to the ``rfftn`` spectrum.

    ``circular``: m_1^2 + ... + m_d^2 <= (min(shape)/3)^2.  ``square``: |m_i| <= shape_i/3.
    The mean mode is kept (the solvers conserve it exactly; tests check that).
    """
    ms = integer_wavenumbers(shape, device, dtype)
    if rule == "circular":
        r2 = sum(m * m for m in ms)
        return (r2 <= (min(shape) / 3.0) ** 2).to(dtype)
    if rule == "square":
        keep = None
        for m, n in zip(ms, shape):
            k = m.abs() <= n / 3.0
            keep = k if keep is None else keep & k
        return keep.to(dtype)
    raise ValueError(f"dealias rule = {rule!r} is not one of ['circular', 'square']")


def parseval_weights(shape: Sequence[int], device=None, dtype=torch.float64) -> torch.Tensor:
    """Weight of each half-spectrum column in a full-spectrum sum: 2, except 1 for the zero and
    (even size) Nyquist columns of the last axis. sum(w |u_hat|^2) / N^2 = mean(u^2) (``norm="backward"``)."""
    n = shape[-1]
    w = torch.full((n // 2 + 1,), 2.0, device=device, dtype=dtype)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


def gaussian_random_field(n_samples: int, shape: Sequence[int], *, alpha: float, tau: float,
                          sigma: float | None = None, length: float = 2 * math.pi,
                          generators: Sequence[torch.Generator] | None = None,
                          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Samples of a periodic Gaussian random field with covariance sigma^2 (-Delta + tau^2)^-alpha.

    Returns ``(n_samples, *shape)`` on the CPU (so a seed gives the same field on every device).
    ``sigma`` defaults to tau^(alpha - d/2), as the FNO/FactFormer generators. The mean mode is
    zero. Each sample draws its coefficients from its own generator in ``generators`` (default: the
    global RNG), so a sample does not depend on how samples are batched.

    The spectral amplitudes are sqrt(2) sigma ((2 pi/length)^2 |m|^2 + tau^2)^(-alpha/2) times a
    standard complex normal (real and imaginary parts of variance 1/2), placed on the half spectrum,
    as the reference generators (FNO/PINO/FactFormer ``GaussianRF``). Note that the field's
    covariance is then twice the nominal sigma^2 (-Delta + tau^2)^-alpha (except for the real
    Nyquist modes): we keep the reference's amplitude, since it sets the data's scale.
    """
    d = len(shape)
    if sigma is None:
        sigma = tau ** (0.5 * (2 * alpha - d))
    k2 = sum(k * k for k in wavenumbers(shape, length, dtype=dtype))
    amp = math.sqrt(2.0) * sigma * (k2 + tau**2) ** (-alpha / 2.0) * math.prod(shape)
    amp.reshape(-1)[0] = 0.0
    half = tuple(shape[:-1]) + (shape[-1] // 2 + 1,)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    if generators is None:
        coef = torch.randn((n_samples, *half), dtype=cdtype)
    else:
        if len(generators) != n_samples:
            raise ValueError(f"generators: need one per sample ({n_samples}), got {len(generators)}")
        coef = torch.stack([torch.randn(half, dtype=cdtype, generator=g) for g in generators])
    return torch.fft.irfftn(coef * amp, s=tuple(shape), dim=tuple(range(1, d + 1)), norm="backward")


def sample_generators(seed: int, first_index: int, n_samples: int) -> list[torch.Generator]:
    """One CPU generator per sample index ``first_index + i``, seeded from (seed, index), so sample
    ``j`` of a data set is the same whatever the batch or shard it is generated in."""
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2^31), got {seed}")
    if first_index < 0:
        raise ValueError(f"first_index must be >= 0, got {first_index}")
    return [torch.Generator().manual_seed((seed << 32) + first_index + i) for i in range(n_samples)]


class CrankNicolsonHeun:
    """du_hat/dt = -L u_hat + N(u_hat), L diagonal in Fourier space (viscosity, drag).

    One step (as the FactFormer/PINO Kolmogorov solver, notes §2(b)):
    g = (1 - dt/2 L) u;  u~ = (g + dt N(u)) / (1 + dt/2 L);
    u' = (g + dt (N(u) + N(u~))/2) / (1 + dt/2 L);  then u' *= mask (dealiasing).
    With N = 0 this is Crank-Nicolson: each mode is multiplied by (1 - a dt/2)/(1 + a dt/2), which
    matches exp(-a dt) to O((a dt)^3).
    """

    def __init__(self, linear: torch.Tensor, dt: float, mask: torch.Tensor | None = None) -> None:
        self.dt = dt
        self.explicit_factor = 1.0 - 0.5 * dt * linear
        self.implicit_factor = 1.0 / (1.0 + 0.5 * dt * linear)
        self.mask = mask

    def step(self, u_hat: torch.Tensor, nonlinear: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        g = self.explicit_factor * u_hat
        h1 = nonlinear(u_hat)
        u_tilde = (g + self.dt * h1) * self.implicit_factor
        h2 = 0.5 * (nonlinear(u_tilde) + h1)
        out = (g + self.dt * h2) * self.implicit_factor
        return out * self.mask if self.mask is not None else out
