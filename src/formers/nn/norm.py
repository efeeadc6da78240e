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


# ------------------------------------------------------------------------------------------------
# LayerNorm as two geometric components (Brody, Alon, Yahav, "On the Expressivity Role of
# LayerNorm in Transformers' Attention", arXiv 2305.02582, §2-§3). Diagnostics (the unselectable-key
# LP) and model presets are in :mod:`formers.nn.layernorm_geometry`.

_LN_GEOMETRY = Paper("On the Expressivity Role of LayerNorm in Transformers' Attention", "2305.02582",
                     "§2 (LN = affine o scale o projection), §3 (projection), §4 (scaling)")


class FactorizedLayerNorm(nn.Module):
    """LayerNorm split into its two components, each switchable (arXiv 2305.02582, §2):

        projection  Pi(x) = x - (x . 1 / d) 1          (onto the hyperplane orthogonal to 1)
        scaling     S(y)  = y / sqrt(mean(y^2) + eps)  = sqrt(d) y / sqrt(||y||^2 + d eps)
        LN(x)       = weight * S(Pi(x)) + bias         (affine; bias only when ``bias``)

    With both components on this is exactly ``F.layer_norm`` (biased variance, eps inside the
    root); with ``eps = 0`` the scaled output has norm exactly sqrt(d). Scale-only is RMSNorm's
    normalisation; projection-only is plain centring (no normalisation at all).

    Shapes: x (..., d_model) -> (..., d_model). Half/bf16 inputs are computed in float32; the
    result has x's dtype.

    Args:
        d_model: d. eps: added to mean(y^2) inside the root (> 0 in model configs; 0 allowed here).
        bias: learn an additive bias (the affine's beta). projection / scale: the two switches.
        affine: learn the per-channel weight gamma (init 1) and, with ``bias``, beta (init 0).
            The reference ``FactorizedLayerNorm`` (tech-srl/layer_norm_expressivity_role) leaves
            its affine parameters uninitialised when enabled; here they start at the identity.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True, projection: bool = True,
                 scale: bool = True, affine: bool = True) -> None:
        super().__init__()
        if d_model <= 0:
            raise ValueError(f"FactorizedLayerNorm: d_model must be > 0, got {d_model}")
        if eps < 0:
            raise ValueError(f"FactorizedLayerNorm: eps must be >= 0, got {eps}")
        self.eps, self.projection, self.scale, self.d_model = float(eps), bool(projection), bool(scale), d_model
        self.weight = nn.Parameter(torch.ones(d_model)) if affine else None
        self.bias = nn.Parameter(torch.zeros(d_model)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if self.projection:
            y = y - y.mean(-1, keepdim=True)
        if self.scale:
            y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.d_model}, projection={self.projection}, scale={self.scale}, eps={self.eps}, "
                f"affine={self.weight is not None}, bias={self.bias is not None}")


@register("norm", "layernorm-projection-only", paper=_LN_GEOMETRY,
          summary="LayerNorm's projection only: x - mean(x) (orthogonal to 1), then affine; no scaling")
class LayerNormProjectionOnly(FactorizedLayerNorm):
    """LayerNorm without its scaling component (arXiv 2305.02582, §4 "without scaling"):
    weight * (x - mean(x)) + bias. x (..., d_model) -> (..., d_model); output (before the affine)
    is orthogonal to the all-ones vector."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(d_model, eps, bias, projection=True, scale=False)


@register("norm", "layernorm-scale-only", paper=_LN_GEOMETRY,
          summary="LayerNorm's scaling only: sqrt(d) x / ||x|| (RMS normalisation), then affine; no projection")
class LayerNormScaleOnly(FactorizedLayerNorm):
    """LayerNorm without its projection component (arXiv 2305.02582, §3 "without projection"):
    weight * x / sqrt(mean(x^2) + eps) + bias. x (..., d_model) -> (..., d_model); output (before
    the affine, eps = 0) has norm sqrt(d). Equals RMSNorm's normalisation (plus an optional bias)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(d_model, eps, bias, projection=False, scale=True)
