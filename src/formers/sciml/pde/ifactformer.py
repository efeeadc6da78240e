"""IFactFormer: an implicit (weight-shared, iterated) factorised transformer, in its parallel (-m)
and chained (-o) forms.

Yang, Wang, Wang, "Implicit factorized transformer approach to fast prediction of turbulent
channel flows", arXiv 2412.18840, §2 (parallel factorised attention, implicit iteration). Reference
code read for understanding: huiyu-2002/IFactFormer-m (no licence file; mirror
EntropyXi/IFactFormer-m) ``libs/model.py``, ``libs/factorization_module.py``.

x: (batch, t_in, *grid, channels) -> (batch, t_out, *grid, channels):

    u_0 = Conv_t(GELU(Conv_c(x)))     per point: a 1x1 convolution grouped by input channel
                                      (channels -> d_model/2), GELU, then a convolution over the
                                      t_in input frames (-> d_model, no bias)
    per depth layer l: u <- u + P_l (Gaussian Fourier features, scale 8), then n_iter times
                        u <- u + Block_l(u) / n_iter          (one Block_l, shared weights)
    y  = Linear(d_model/2 -> t_out * channels)(GELU(Linear(d_model -> d_model/2, no bias)(u)))

Block_l is :class:`~formers.sciml.pde.factorized.FactorizedAttention` with ``combine="parallel"``
(IFactFormer-m: each axis kernel applied to v separately, results concatenated, InstanceNorm) or
``combine="chained"`` (IFactFormer-o: K_z K_y K_x v as FactFormer, domain-wise GroupNorm).

Reference-code note: ``libs/model.py`` of the published code imports ``FABlock3D_m`` twice and
never ``FABlock3D_o``, so ``model: IFactFormer_o`` raises NameError there; both forms are built
here from one block class, so the -o model exists and differs from -m only in ``combine``.

Deviations: ``t_out`` > 1 widens the output layer to t_out * channels (the paper predicts one
step); the reference's channel-flow wall-normal coordinates are uniform linspace, as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import Paper, register
from formers.sciml.pde.factformer import FactorizedEncoder
from formers.sciml.pde.surrogate import SurrogateConfig, check_fields, check_grid_size, grid_coords

PAPER = Paper("Implicit factorized transformer approach to fast prediction of turbulent channel "
              "flows (IFactFormer)", "2412.18840", "§2, parallel factorised attention and implicit iteration")


@dataclass
class IFactFormerConfig(SurrogateConfig):
    """IFactFormer. Defaults are the reference ``configs/IFactFormer.yml``: 3-D, 3 velocity
    channels, 1 input and 1 output frame, d_model 96, 5 heads of width 96, depth 1,
    n_iter 10 shared-weight iterations, kernel_multiplier 3, Fourier scale 8.
    ``combine``: ``parallel`` (-m) or ``chained`` (-o).

    Raises ValueError naming the field (sizes <= 0, d_model/2 not a multiple of channels, ...)."""

    model: str = "ifactformer-m"
    n_dims: int = 3
    channels: int = 3
    d_model: int = 96
    n_heads: int = 5
    head_dim: int = 96
    depth: int = 1
    n_iter: int = 10
    kernel_multiplier: int = 3
    fourier_scale: float = 8.0
    rope: bool = True
    combine: Literal["parallel", "chained"] = "parallel"

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        for name in ("d_model", "n_heads", "head_dim", "depth", "n_iter", "kernel_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        if self.d_model % 2 or (self.d_model // 2) % self.channels:
            raise ValueError(f"{o}.d_model must be even with d_model/2 a multiple of channels = "
                             f"{self.channels} (the grouped input convolution), got {self.d_model}")
        if self.combine not in ("parallel", "chained"):
            raise ValueError(f"{o}.combine must be 'parallel' (-m) or 'chained' (-o), got {self.combine!r}")
        if self.fourier_scale <= 0:
            raise ValueError(f"{o}.fourier_scale must be > 0, got {self.fourier_scale}")


@dataclass
class IFactFormerOConfig(IFactFormerConfig):
    """IFactFormer-o: the chained original (``combine="chained"``); otherwise as IFactFormer-m."""

    model: str = "ifactformer-o"
    combine: Literal["parallel", "chained"] = "chained"


class IFactFormer(nn.Module):
    """IFactFormer surrogate. x: (batch, t_in, *grid, channels) -> (batch, t_out, *grid, channels).

    Raises ValueError for an input of the wrong shape, a grid axis shorter than 2 or non-finite
    input."""

    def __init__(self, cfg: IFactFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, c = cfg.d_model, cfg.channels
        self.in_channel = nn.Conv2d(c, d // 2, 1, groups=c)
        self.in_time = nn.Conv2d(d // 2, d, (cfg.t_in, 1), bias=False)
        self.encoder = FactorizedEncoder(d, cfg.depth, cfg.n_heads, cfg.head_dim, cfg.n_dims,
                                         cfg.kernel_multiplier, cfg.fourier_scale, cfg.rope,
                                         combine=cfg.combine, implicit_steps=cfg.n_iter)
        self.out1 = nn.Linear(d, d // 2, bias=False)
        self.out2 = nn.Linear(d // 2, cfg.t_out * c)

    def check_grid(self, grid: tuple[int, ...]) -> None:
        """ValueError unless every axis has >= 2 points (any size otherwise: no FFT, no patches)."""
        check_grid_size(self, grid, min_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        check_fields(self, x, min_size=2)
        b, grid = x.shape[0], tuple(x.shape[2:-1])
        h = x.reshape(b, cfg.t_in, -1, cfg.channels).permute(0, 3, 1, 2)  # (b, C, t_in, N)
        h = self.in_time(F.gelu(self.in_channel(h)))                    # (b, d, 1, N)
        u = h[:, :, 0].transpose(1, 2).reshape(b, *grid, cfg.d_model)
        u = self.encoder(u, grid_coords(cfg, grid, x.device))
        y = self.out2(F.gelu(self.out1(u)))                             # (b, *grid, t_out * C)
        return y.reshape(b, *grid, cfg.t_out, cfg.channels).movedim(-2, 1)


register("surrogate", "ifactformer-m", config=IFactFormerConfig, paper=PAPER,
         summary="IFactFormer-m: parallel factorised attention, one shared block iterated n_iter times")(IFactFormer)
register("surrogate", "ifactformer-o", config=IFactFormerOConfig, paper=PAPER,
         summary="IFactFormer-o: the chained original (K_z K_y K_x v), one shared block iterated n_iter times")(IFactFormer)
