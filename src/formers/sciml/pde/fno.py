"""Fourier neural operator (FNO), the baseline of the PDE-surrogate comparisons, 2-D and 3-D.

Paper: Li, Kovachki, Azizzadenesheli, Liu, Bhattacharya, Stuart, Anandkumar, "Fourier Neural
Operator for Parametric Partial Differential Equations", ICLR 2021, arXiv 2010.08895.

* Lifting P (§4, eq. 2): the input window and the grid coordinates at each point, a Linear to
  ``width`` channels.
* Fourier layers (eq. 2, 4, 5): v <- sigma(K v + W v), where K v = IFFT(R . FFT(v)) keeps only the
  lowest ``modes`` frequencies per axis (both signs on all axes but the last, which is the half
  axis of the real FFT: 2^(d-1) corner blocks of weights) and R is a complex (width x width)
  matrix per kept frequency; W is a pointwise Linear. No activation after the last layer.
* Projection Q: Linear(width -> projection) -> GELU -> Linear(-> t_out * channels).

Defaults follow the paper's Navier-Stokes FNO-2D (§5.3 and the reference ``fourier_2d.py``):
4 layers, width 20, 12 modes, GELU, projection width 128, the R weights initialised as
``1/(width^2) * U[0, 1)`` for both the real and imaginary part.

Interface: a registry ``surrogate`` (``formers.sciml.pde.surrogate``): forward(x: (batch, t_in,
*grid, channels)) -> (batch, t_out, *grid, channels); the t_in frames and channels are stacked
as input channels, as the paper's 2-D model takes the last 10 vorticity frames.

Deviations: the coordinates appended to the input are the periodic grid points i / n (the
reference uses ``linspace(0, 1, n)``, which includes the end point and so differs between
resolutions); no domain padding (the data here are periodic, as the paper's NS data); R is stored
as a real tensor with a trailing (real, imaginary) axis, since safetensors files hold real tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import Paper, register
from formers.sciml.pde.surrogate import SurrogateConfig, check_fields, check_grid_size

PAPER = Paper("Fourier Neural Operator for Parametric Partial Differential Equations", "2010.08895",
              "§4 Fourier layer (eq. 2, 4, 5); §5.3 NS: 4 layers, width 20, 12 modes")


def corner_slices(modes: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The kept blocks of an ``rfftn`` spectrum: [:m] or [-m:] on each full axis, [:m] on the last."""
    *full, last = modes
    return [tuple(slice(0, m) if s == 0 else slice(-m, None) for s, m in zip(signs, full))
            + (slice(0, last),) for signs in itertools.product((0, 1), repeat=len(full))]


class SpectralConv(nn.Module):
    """K v = IFFT(R . FFT(v)) on the lowest ``modes`` frequencies (FNO eq. 4-5).

    x: (batch, in_channels, *grid) real -> (batch, out_channels, *grid). ``modes[i]`` must be
    <= grid[i] // 2 for the full axes and <= grid[-1] // 2 + 1 for the last (half) axis; a grid
    that is too small raises ValueError. ``weight[c]`` holds corner c's R as (in, out, *modes, 2).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: tuple[int, ...]) -> None:
        super().__init__()
        self.modes = tuple(modes)
        scale = 1.0 / (in_channels * out_channels)
        self.weight = nn.ParameterList(
            nn.Parameter(scale * torch.rand(in_channels, out_channels, *self.modes, 2))
            for _ in corner_slices(self.modes))

    def check_grid(self, grid: tuple[int, ...]) -> None:
        limits = [n // 2 for n in grid[:-1]] + [grid[-1] // 2 + 1]
        if len(grid) != len(self.modes) or any(m > lim for m, lim in zip(self.modes, limits)):
            raise ValueError(f"SpectralConv with modes {self.modes} cannot take grid {tuple(grid)}: "
                             f"every full axis needs n >= 2 * modes and the last n >= 2 * (modes - 1)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.modes)
        grid = tuple(x.shape[-d:])
        self.check_grid(grid)
        dims = tuple(range(-d, 0))
        x_ft = torch.fft.rfftn(x, dim=dims)
        out = x_ft.new_zeros((x.shape[0], self.weight[0].shape[1], *x_ft.shape[-d:]))
        for w, sl in zip(self.weight, corner_slices(self.modes)):
            block = (slice(None), slice(None), *sl)
            out[block] = torch.einsum("bi...,io...->bo...", x_ft[block],
                                      torch.view_as_complex(w.to(x_ft.real.dtype)))
        return torch.fft.irfftn(out, s=grid, dim=dims)


@dataclass
class FNOConfig(SurrogateConfig):
    """FNO: ``width`` channels, ``modes`` kept frequencies per axis, ``n_layers`` Fourier layers,
    ``projection`` hidden width of Q, ``coords`` appends the grid coordinates to the input."""

    model: str = "fno"
    width: int = 20
    modes: int = 12
    n_layers: int = 4
    projection: int = 128
    coords: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        for name in ("width", "modes", "n_layers", "projection"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")


@register("surrogate", "fno", config=FNOConfig, paper=PAPER,
          summary="Fourier neural operator: truncated spectral convolutions + pointwise linear, 2-D/3-D")
class FNO(nn.Module):
    """Fourier neural operator (arXiv 2010.08895). x: (batch, t_in, *grid, channels) ->
    (batch, t_out, *grid, channels); grid = (nx, ny) or (nx, ny, nz), each axis >= 2 * modes
    (the last >= 2 * (modes - 1)). Raises ValueError for a wrong shape, a grid too small for
    ``modes`` or NaN/inf input."""

    def __init__(self, cfg: FNOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.n_dims
        self.lift = nn.Linear(cfg.t_in * cfg.channels + (d if cfg.coords else 0), cfg.width)
        self.spectral = nn.ModuleList(SpectralConv(cfg.width, cfg.width, (cfg.modes,) * d)
                                      for _ in range(cfg.n_layers))
        self.pointwise = nn.ModuleList(nn.Linear(cfg.width, cfg.width) for _ in range(cfg.n_layers))
        self.proj1 = nn.Linear(cfg.width, cfg.projection)
        self.proj2 = nn.Linear(cfg.projection, cfg.t_out * cfg.channels)

    def coordinates(self, grid: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Periodic coordinates i / n of every point: (*grid, n_dims)."""
        axes = [torch.arange(n, device=like.device, dtype=like.dtype) / n for n in grid]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        check_fields(self, x)
        grid = tuple(x.shape[2:-1])
        limits = [n // 2 for n in grid[:-1]] + [grid[-1] // 2 + 1]
        if any(c.modes > lim for lim in limits):
            check_grid_size(self, grid, min_size=2 * c.modes)  # names the grid and the minimum
        b = x.shape[0]
        h = x.movedim(1, -2).reshape(b, *grid, c.t_in * c.channels)
        if c.coords:
            h = torch.cat([h, self.coordinates(grid, h).expand(b, *grid, c.n_dims)], dim=-1)
        h = self.lift(h).movedim(-1, 1)  # (b, width, *grid)
        for i, (k, w) in enumerate(zip(self.spectral, self.pointwise)):
            h = k(h) + w(h.movedim(1, -1)).movedim(-1, 1)
            if i < c.n_layers - 1:
                h = F.gelu(h)
        y = self.proj2(F.gelu(self.proj1(h.movedim(1, -1))))  # (b, *grid, t_out * channels)
        return y.reshape(b, *grid, c.t_out, c.channels).movedim(-2, 1)
