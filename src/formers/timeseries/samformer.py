"""SAMformer: channel-wise single-head attention + RevIN + linear head, trained with SAM.

Paper: Ilbert, Odonnat, Feofanov, Virmaux, Paolo, Palpanas, Redko, "SAMformer: Unlocking the
Potential of Transformers in Time Series Forecasting with Sharpness-Aware Minimization and
Channel-Wise Attention", ICML 2024, arXiv 2402.10198, §4 (eq. (3)) and Appendix (architecture).
Reference code read for understanding: romilbert/samformer (``samformer_pytorch``), MIT.

With X ∈ R^{C×L} (tokens are the C channels, each token its whole look-back series) after RevIN:

    A = softmax(X W_Q (X W_K)ᵀ / sqrt(d_qk)) ∈ R^{C×C},   W_Q, W_K: L -> d_qk (16), with bias
    Z = X + A X W_V,                                      W_V: L -> L, with bias
    Ŷ = RevIN⁻¹(Z W_O),                                   W_O: L -> H, with bias

Single head, no positional encoding, no feed-forward, no LayerNorm. Training (the paper's
protocol, ``formers.timeseries.task``): MSE, SAM (ρ = 0.7 on ETTh1) around Adam (lr 1e-3),
batch 32, early stopping on validation MSE (patience 5).

Deviations: the C×C attention uses an explicit softmax, not ``formers.nn.attention.core.attend``,
because its values are L-wide while queries/keys are 16-wide (``attend`` needs v and k of one
shape); numerically it is the same softmax(QKᵀ/√d)V. Linear layers use torch's default init (the
reference PyTorch port does; the TF original uses Glorot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from formers.registry import Paper, register
from formers.timeseries.forecaster import ForecasterConfig, check_input
from formers.timeseries.recipe import ForecastRecipe
from formers.timeseries.revin import RevIN

PAPER = Paper("SAMformer: Unlocking the Potential of Transformers in Time Series Forecasting with "
              "Sharpness-Aware Minimization and Channel-Wise Attention", "2402.10198", "§4, eq. (3)")


@dataclass
class SAMformerConfig(ForecasterConfig):
    """SAMformer: ``d_qk`` query/key width (16 in the paper), ``revin`` on/off (on)."""

    model: str = "samformer"
    look_back: int = 512
    d_qk: int = 16
    revin: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_qk <= 0:
            raise ValueError(f"SAMformerConfig.d_qk must be > 0, got {self.d_qk}")


@register("forecaster", "samformer", config=SAMformerConfig, paper=PAPER,
          summary="SAMformer: channel-wise single-head attention + RevIN + linear head (train with SAM)")
class SAMformer(nn.Module):
    """SAMformer forecaster. x: (batch, look_back, n_channels) -> (batch, horizon, n_channels).

    ``attention(x)`` returns the (batch, n_channels, n_channels) attention matrix (rows sum to 1).
    Raises ValueError for an input of the wrong shape.
    """

    @staticmethod
    def recipe(horizon: int) -> ForecastRecipe:
        """The paper's protocol (the same at every horizon on ETT)."""
        return ForecastRecipe(
            source="SAMformer arXiv 2402.10198 §5 and romilbert/samformer TF run.py / run_script.sh "
                   "(commit 71f10ea): MSE, SAM rho 0.7 around Adam lr 1e-3 (ETT) with weight decay "
                   "1e-5, constant lr, batch 32, 100 epochs, early stopping patience 5 on validation",
            batch_size=32, lr=1e-3, epochs=100, patience=5, sam_rho=0.7, weight_decay=1e-5,
            look_back=512,
            choices="weight decay 1e-5 is AdamW's decoupled decay on matrices (the reference: Adam's "
                    "L2 on every weight)")

    def __init__(self, cfg: SAMformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L = cfg.look_back
        self.revin = RevIN(cfg.n_channels) if cfg.revin else None
        self.q = nn.Linear(L, cfg.d_qk)
        self.k = nn.Linear(L, cfg.d_qk)
        self.v = nn.Linear(L, L)
        self.head = nn.Linear(L, cfg.horizon)

    def _tokens(self, x: torch.Tensor):
        check_input(self, x)
        stats = None
        if self.revin is not None:
            x, stats = self.revin(x)
        return x.transpose(1, 2), stats  # (batch, C, L): channels are tokens

    def _attn(self, z: torch.Tensor) -> torch.Tensor:
        scores = self.q(z) @ self.k(z).transpose(1, 2) / math.sqrt(self.cfg.d_qk)
        return torch.softmax(scores, dim=-1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel attention matrix A: (batch, n_channels, n_channels)."""
        z, _ = self._tokens(x)
        return self._attn(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, stats = self._tokens(x)
        z = z + self._attn(z) @ self.v(z)
        y = self.head(z).transpose(1, 2)  # (batch, H, C)
        if self.revin is not None:
            y = self.revin.inverse(y, stats)
        return y
