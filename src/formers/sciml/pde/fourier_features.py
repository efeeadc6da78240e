"""Gaussian random Fourier features of grid coordinates, the positional encoding FactFormer and
IFactFormer add at every encoder layer.

Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional
Domains", arXiv 2006.10739, eq. (5) with Gaussian B; used by FactFormer (arXiv 2305.17560) as
``GaussianFourierFeatureTransform(n_dims, dim // 2, scale=8)`` followed by a Linear.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def grid_points(coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """The (n_1, ..., n_D, D) tensor of point coordinates from D per-axis (n_a,) coordinate lists."""
    return torch.stack(torch.meshgrid(*coords, indexing="ij"), dim=-1)


class GaussianFourierFeatures(nn.Module):
    """gamma(p) = [sin(2 pi p B), cos(2 pi p B)], B ~ N(0, scale^2) of shape (n_dims, width // 2),
    fixed (a buffer saved with the model, not trained: the reference's B has requires_grad=False),
    then a trainable Linear(width, width).

    points: (..., n_dims) -> (..., width). The phases 2 pi p B are computed in fp32 (also under
    autocast: in bf16 they would lose whole radians). Raises ValueError for an odd width."""

    def __init__(self, n_dims: int, width: int, scale: float = 8.0) -> None:
        super().__init__()
        if width % 2:
            raise ValueError(f"GaussianFourierFeatures: width must be even, got {width}")
        self.register_buffer("B", torch.randn(n_dims, width // 2) * scale)
        self.linear = nn.Linear(width, width)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        # the phases reach hundreds of radians: computed in fp32 even under bf16 autocast
        dtype = torch.promote_types(self.B.dtype, torch.float32)
        with torch.autocast(points.device.type, enabled=False):
            x = 2 * math.pi * points.to(dtype) @ self.B.to(dtype)
            features = torch.cat((x.sin(), x.cos()), dim=-1).to(self.B.dtype)
        return self.linear(features)
