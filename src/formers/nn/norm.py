"""Normalisation layers, registered by name: ``layernorm`` and ``rmsnorm``.

Both take (..., d_model) and return the same shape.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import Paper, register


@register("norm", "layernorm", paper=Paper("Layer Normalization", "1607.06450"))
class LayerNorm(nn.Module):
    """LayerNorm with optional bias: (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@register(
    "norm",
    "rmsnorm",
    paper=Paper("Root Mean Square Layer Normalization", "1910.07467", "eq. 4"),
)
class RMSNorm(nn.Module):
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight (no centring, no bias)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def build_norm(name: str, d_model: int, eps: float, bias: bool) -> nn.Module:
    from formers.registry import get

    return get("norm", name).obj(d_model, eps=eps, bias=bias)
