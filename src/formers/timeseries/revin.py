"""Reversible instance normalisation (RevIN).

Paper: Kim, Kim, Tae, Park, Choi, Choo, "Reversible Instance Normalization for Accurate
Time-Series Forecasting against Distribution Shift", ICLR 2022 (no arXiv id; OpenReview
cGDAkQo1C0p), §3 eqs. (1)-(3); as used by SAMformer (arXiv 2402.10198, §4) and PatchTST.

normalise:  x̂ = γ · (x − μ) / σ + β,   μ, σ over the look-back (time) axis per sample and channel,
            σ = sqrt(Var(x) + eps) with the population variance; μ and σ are detached
            (the reference code's ``.detach()``).
denormalise: y = (ŷ − β) / (γ + eps²) · σ + μ   (the eps² guard of the reference code).
"""

from __future__ import annotations

import torch
from torch import nn


class RevIN(nn.Module):
    """RevIN over ``(batch, time, n_channels)`` tensors.

    Args:
        n_channels: number of channels C (one γ, β pair each when ``affine``).
        eps: variance floor (1e-5 as in the reference code).
        affine: learn γ (init 1) and β (init 0) per channel.
    Call ``x_norm, stats = revin(x)`` and ``y = revin.inverse(y_norm, stats)``; ``stats`` is
    ``(mean, std)``, each (batch, 1, C). The inverse of the forward is the identity up to float
    rounding (about 1e-6 relative).
    Raises:
        ValueError: n_channels <= 0 or eps <= 0; an input whose last dim is not n_channels.
    """

    def __init__(self, n_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if n_channels <= 0:
            raise ValueError(f"RevIN: n_channels must be > 0, got {n_channels}")
        if not eps > 0:
            raise ValueError(f"RevIN: eps must be > 0, got {eps}")
        self.n_channels, self.eps, self.affine = n_channels, float(eps), affine
        if affine:
            self.weight = nn.Parameter(torch.ones(n_channels))
            self.bias = nn.Parameter(torch.zeros(n_channels))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.n_channels:
            raise ValueError(f"RevIN: expected (batch, time, {self.n_channels}), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x: (batch, time, C) -> (normalised x of the same shape, (mean, std) each (batch, 1, C))."""
        self._check(x)
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        z = (x - mean) / std
        if self.affine:
            z = z * self.weight + self.bias
        return z, (mean, std)

    def inverse(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """y: (batch, horizon, C) on the normalised scale -> the data scale."""
        self._check(y)
        mean, std = stats
        if self.affine:
            y = (y - self.bias) / (self.weight + self.eps * self.eps)
        return y * std + mean
