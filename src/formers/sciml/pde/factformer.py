"""FactFormer: a factorised-attention encoder with latent time-marching, a PDE surrogate.

Li, Shu, Barati Farimani, "Scalable Transformer for PDE Surrogate Modeling", NeurIPS 2023,
arXiv 2305.17560, §3 (model) and §4 (Kolmogorov flow KM2D, 3-D smoke). Reference code read for
understanding: BaratiLab/FactFormer (MIT), ``examples/turb_ns2d_fact_lm.py`` (``FactFormer2D``).

x: (batch, t_in, *grid, channels) -> (batch, steps, *grid, channels), steps <= t_out:

    u_0   = Linear(t_in * channels -> d_model)(x)                             per grid point
    u_l   = u_{l-1} + P_l + FABlock_l(u_{l-1} + P_l),  l = 1..n_layers           (encoder)
            P_l = Linear(GaussianFourierFeatures(x, y[, z]; scale 8)) re-added at every layer
    z_0   = W_e u_L                                   (d_model -> latent = latent_multiplier * d_model)
    z_s   = z_{s-1} + e_s + MLP(LN(z_{s-1} + e_s)),  s = 1..steps               (latent marching,
            e_s a learned time embedding, MLP latent -> d_model -> latent with GELU)
    y_s   = Dec(z_s)   GroupNorm(8 * latent_multiplier groups) -> 1x1 conv (8 groups) -> GELU ->
                       1x1 conv -> GELU -> 1x1 conv to the channels

FABlock is :class:`~formers.sciml.pde.factorized.FactorizedAttention` (chained axial kernels with
rotary position on the physical coordinates, no softmax, domain-wise GroupNorm).

Training (see :mod:`formers.sciml.pde.kolmogorov`): relative L2 loss per sample, a curriculum of
latent steps 1 -> t_out and pushforward steps (unroll twice without gradient, then train on the
third window), as the reference's KM2D recipe.

Deviations: the Gaussian Fourier matrix B is a buffer (saved, never trained), where the reference
keeps it as a parameter with requires_grad=False; the count of trainable parameters is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from formers.registry import Paper, register
from formers.sciml.pde.factorized import FactorizedAttention
from formers.sciml.pde.fourier_features import GaussianFourierFeatures, grid_points
from formers.sciml.pde.surrogate import SurrogateConfig, check_fields, check_grid_size, grid_coords

PAPER = Paper("Scalable Transformer for PDE Surrogate Modeling (FactFormer)", "2305.17560",
              "§3 factorised kernel integral, axial kernels with rotary position; §4 KM2D")


@dataclass
class FactFormerConfig(SurrogateConfig):
    """FactFormer. Defaults are the reference KM2D config (``configs/ns2d_fact_lm.yml``): 10 input
    frames, up to 4 latent steps, d_model 128, 4 layers, 8 heads of width 64, kernel_multiplier 2,
    latent_multiplier 2, Fourier-feature scale 8, rotary position on.

    Raises ValueError naming the field for a bad value (sizes <= 0, d_model odd, latent width not
    a multiple of 8 * latent_multiplier groups or of 8, ...)."""

    model: str = "factformer"
    t_in: int = 10
    t_out: int = 4
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    head_dim: int = 64
    kernel_multiplier: int = 2
    latent_multiplier: float = 2.0
    fourier_scale: float = 8.0
    rope: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        for name in ("d_model", "n_layers", "n_heads", "head_dim", "kernel_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        if self.d_model % 16:
            raise ValueError(f"{o}.d_model must be a multiple of 16 (8 decoder groups, even Fourier "
                             f"features), got {self.d_model}")
        if not self.latent_multiplier > 0 or not float(8 * self.latent_multiplier).is_integer():
            raise ValueError(f"{o}.latent_multiplier must be > 0 with 8 * latent_multiplier an "
                             f"integer (the decoder's GroupNorm groups), got {self.latent_multiplier}")
        if self.latent_dim % int(8 * self.latent_multiplier) or self.latent_dim % 8:
            raise ValueError(f"{o}: latent width d_model * latent_multiplier = {self.latent_dim} must "
                             f"be divisible by 8 and by 8 * latent_multiplier")
        if self.fourier_scale <= 0:
            raise ValueError(f"{o}.fourier_scale must be > 0, got {self.fourier_scale}")

    @property
    def latent_dim(self) -> int:
        return int(self.d_model * self.latent_multiplier)


class FactorizedEncoder(nn.Module):
    """``n_layers`` x [add Fourier-feature position P_l; then ``implicit_steps`` times
    u <- u + Block_l(u) / implicit_steps with one shared Block_l].

    implicit_steps = 1 is FactFormer's residual layer u <- u + Block(u); IFactFormer (arXiv
    2412.18840, §2) iterates one shared block n times. u: (batch, *grid, d_model), coords: per-axis
    (n_a,) tensors -> same shape as u."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, head_dim: int, n_dims: int,
                 kernel_multiplier: int, fourier_scale: float, rope: bool = True,
                 combine: Literal["chained", "parallel"] = "chained", implicit_steps: int = 1) -> None:
        super().__init__()
        self.implicit_steps = implicit_steps
        self.positions = nn.ModuleList(GaussianFourierFeatures(n_dims, d_model, fourier_scale)
                                       for _ in range(n_layers))
        self.blocks = nn.ModuleList(
            FactorizedAttention(d_model, n_heads, head_dim, n_dims, kernel_multiplier=kernel_multiplier,
                                rope=rope, combine=combine) for _ in range(n_layers))

    def forward(self, u: torch.Tensor, coords: list[torch.Tensor]) -> torch.Tensor:
        points = grid_points(coords)
        for pos, block in zip(self.positions, self.blocks):
            u = u + pos(points)
            for _ in range(self.implicit_steps):
                u = u + block(u, coords) / self.implicit_steps
        return u


@register("surrogate", "factformer", config=FactFormerConfig, paper=PAPER,
          summary="FactFormer: factorised axial attention encoder + latent time-marching (2-D/3-D)")
class FactFormer(nn.Module):
    """FactFormer surrogate. x: (batch, t_in, *grid, channels) -> (batch, steps, *grid, channels)
    for ``steps`` latent steps (default ``cfg.t_out``, at most ``cfg.t_out``); see the module
    docstring for the equations.

    Raises ValueError for an input of the wrong shape, a grid axis shorter than 2, non-finite
    input, or steps outside [1, t_out]."""

    takes_steps = True  # forward(x, steps=k) computes only k latent steps

    def __init__(self, cfg: FactFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, L = cfg.d_model, cfg.latent_dim
        self.to_in = nn.Linear(cfg.t_in * cfg.channels, d)
        self.encoder = FactorizedEncoder(d, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.n_dims,
                                         cfg.kernel_multiplier, cfg.fourier_scale, cfg.rope)
        self.expand_latent = nn.Linear(d, L, bias=False)
        self.time_embedding = nn.Parameter(torch.randn(cfg.t_out, L) * 0.02)
        self.propagator = nn.Sequential(nn.LayerNorm(L), nn.Linear(L, d), nn.GELU(), nn.Linear(d, L))
        self.decoder = nn.Sequential(
            nn.GroupNorm(int(8 * cfg.latent_multiplier), L),
            nn.Conv1d(L, d, 1, groups=8, bias=False), nn.GELU(),
            nn.Conv1d(d, d // 2, 1, bias=False), nn.GELU(),
            nn.Conv1d(d // 2, cfg.channels, 1))

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """ValueError unless every axis has >= 2 points (any size otherwise: no FFT, no patches)."""
        check_grid_size(self, grid, min_size=2)

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        cfg = self.cfg
        check_fields(self, x, min_size=2)
        steps = cfg.t_out if steps is None else steps
        if not 1 <= steps <= cfg.t_out:
            raise ValueError(f"FactFormer: steps must be in [1, t_out = {cfg.t_out}], got {steps}")
        b, grid = x.shape[0], tuple(x.shape[2:-1])
        u = self.to_in(x.movedim(1, -2).reshape(b, *grid, -1))
        u = self.encoder(u, grid_coords(cfg, grid, x.device))
        z = self.expand_latent(u)
        outs = []
        for s in range(steps):
            z = z + self.time_embedding[s]
            z = z + self.propagator(z)
            y = self.decoder(z.reshape(b, -1, z.shape[-1]).transpose(1, 2))  # (b, channels, N)
            outs.append(y.transpose(1, 2).reshape(b, *grid, cfg.channels))
        return torch.stack(outs, dim=1)
