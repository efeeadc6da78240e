"""Full softmax attention over all grid points: the quadratic baseline FactFormer is measured against.

Every grid point is a token; a standard pre-norm encoder (``formers.nn`` blocks: multi-head
softmax attention through the one ``attend`` core, so SDPA on the fast path, and a GELU MLP)
mixes all N = n_x n_y (n_z) tokens at O(N^2) cost per layer. Vaswani et al., "Attention Is All You
Need", arXiv 1706.03762, §3.2; used as the full-attention baseline in FactFormer (arXiv 2305.17560,
§4, efficiency comparison).

x: (batch, t_in, *grid, channels) -> (batch, t_out, *grid, channels):
    u = Linear(t_in * channels -> d_model)(x) + Linear(GaussianFourierFeatures(points))
    u = Encoder(u)  (n_layers pre-norm blocks, no positions inside: they come with u)
    y = Linear(d_model -> t_out * channels)(u)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.transformer import Stack
from formers.registry import Paper, register
from formers.sciml.pde.fourier_features import GaussianFourierFeatures, grid_points
from formers.sciml.pde.surrogate import SurrogateConfig, check_fields, check_grid_size, grid_coords

PAPER = Paper("Attention Is All You Need (full attention over every grid point, the baseline of "
              "FactFormer arXiv 2305.17560 §4)", "1706.03762", "§3.2")


@dataclass
class GridSoftmaxConfig(SurrogateConfig):
    """Full-attention surrogate: ``d_model``, ``n_layers``, ``n_heads`` (d_model divisible by it),
    ``fourier_scale`` of the input position features, ``max_points`` the largest grid (N) accepted
    (the attention is N x N per head). Raises ValueError naming a bad field."""

    model: str = "softmax"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    fourier_scale: float = 8.0
    max_points: int = 65536

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        for name in ("d_model", "n_layers", "n_heads", "max_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        if self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(f"{o}.d_model = {self.d_model} must be even and divisible by n_heads = {self.n_heads}")
        if self.fourier_scale <= 0:
            raise ValueError(f"{o}.fourier_scale must be > 0, got {self.fourier_scale}")

    def encoder_config(self) -> ModelConfig:
        return ModelConfig(arch="encoder", d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, max_seq_len=self.max_points, position="none")


@register("surrogate", "softmax", config=GridSoftmaxConfig, paper=PAPER,
          summary="baseline: full softmax attention over all grid points (O(N^2))")
class GridSoftmax(nn.Module):
    """Full-attention surrogate. x: (batch, t_in, *grid, channels) -> (batch, t_out, *grid, channels).

    Raises ValueError for a wrong input shape, non-finite input, or a grid of more than
    ``cfg.max_points`` points."""

    def __init__(self, cfg: GridSoftmaxConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.to_in = nn.Linear(cfg.t_in * cfg.channels, cfg.d_model)
        self.position = GaussianFourierFeatures(cfg.n_dims, cfg.d_model, cfg.fourier_scale)
        self.encoder = Stack(cfg.encoder_config(), cfg.n_layers, causal=False)
        self.to_out = nn.Linear(cfg.d_model, cfg.t_out * cfg.channels)

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """ValueError for a grid of more than ``cfg.max_points`` points (or of the wrong rank)."""
        check_grid_size(self, grid)
        n = math.prod(grid)
        if n > self.cfg.max_points:
            raise ValueError(f"GridSoftmax: grid {tuple(grid)} has {n} points, more than max_points = "
                             f"{self.cfg.max_points} (full attention is N x N per head; --set max_points=N)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        check_fields(self, x)
        b, grid = x.shape[0], tuple(x.shape[2:-1])
        self.check_grid(grid)
        n = math.prod(grid)
        u = self.to_in(x.movedim(1, -2).reshape(b, *grid, -1))
        u = u + self.position(grid_points(grid_coords(cfg, grid, x.device)))
        u = self.encoder(u.reshape(b, n, cfg.d_model),
                         Context(positions=torch.arange(n, device=x.device), causal=False))
        y = self.to_out(u).reshape(b, *grid, cfg.t_out, cfg.channels)
        return y.movedim(-2, 1)
