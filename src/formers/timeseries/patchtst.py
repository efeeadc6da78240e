"""A channel-independent patch transformer (PatchTST-style baseline) built from ``formers.nn``.

Paper: Nie, Nguyen, Sinthong, Kalagnanam, "A Time Series is Worth 64 Words: Long-term
Forecasting with Transformers", ICLR 2023, arXiv 2211.14730, §3.1 (patching, channel
independence, RevIN, flatten head).

Each channel's look-back (after RevIN) is padded at the end with ``stride`` copies of its last
value, cut into N = (L − P)/S + 2 patches of length P with stride S, embedded by a Linear P -> d
plus a learned positional embedding, encoded by a bidirectional :class:`formers.nn.transformer.Stack`
(softmax attention through ``formers.nn.attention.core``), flattened (N·d) and mapped to H by a
Linear; every channel shares the weights.

Deviations from the paper's code: the encoder is the formers backbone (pre-norm LayerNorm, GELU
MLP) instead of post-norm BatchNorm; dropout is one rate for attention, MLP and embedding.
Defaults are PatchTST's small ETTh1 setting (d 16, 4 heads, 3 layers, d_ff 128, P 16, S 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.transformer import Stack
from formers.registry import Paper, register
from formers.timeseries.forecaster import ForecasterConfig, check_input
from formers.timeseries.recipe import ForecastRecipe
from formers.timeseries.revin import RevIN

PAPER = Paper("A Time Series is Worth 64 Words: Long-term Forecasting with Transformers",
              "2211.14730", "§3.1")


@dataclass
class PatchTSTConfig(ForecasterConfig):
    """PatchTST-style: ``patch_len`` P, ``stride`` S, ``d_model``, ``n_heads``, ``n_layers``,
    ``d_ff``, ``dropout``, ``revin``. Raises ValueError when P > L or sizes are not positive, or
    n_heads does not divide d_model."""

    model: str = "patchtst"
    patch_len: int = 16
    stride: int = 8
    d_model: int = 16
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int = 128
    dropout: float = 0.3
    revin: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        o = "PatchTSTConfig"
        for name in ("patch_len", "stride", "d_model", "n_heads", "n_layers", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{o}.{name} must be > 0, got {getattr(self, name)}")
        if self.patch_len > self.look_back:
            raise ValueError(f"{o}.patch_len = {self.patch_len} exceeds look_back = {self.look_back}")
        if self.d_model % self.n_heads:
            raise ValueError(f"{o}.n_heads = {self.n_heads} must divide d_model = {self.d_model}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{o}.dropout must be in [0, 1), got {self.dropout}")

    @property
    def n_patches(self) -> int:
        return (self.look_back - self.patch_len) // self.stride + 2


@register("forecaster", "patchtst", config=PatchTSTConfig, paper=PAPER,
          summary="PatchTST-style channel-independent patch transformer (formers.nn encoder)")
class PatchTST(nn.Module):
    """Patch transformer forecaster. x: (batch, look_back, n_channels) -> (batch, horizon, n_channels)."""

    @staticmethod
    def recipe(horizon: int) -> ForecastRecipe:
        """The reference ETTh1 script (the same at every horizon)."""
        return ForecastRecipe(
            source="yuqinie98/PatchTST PatchTST_supervised/scripts/PatchTST/etth1.sh (commit b75156c) "
                   "with run_longExp.py defaults: MSE, Adam lr 1e-4, batch 128, 100 epochs, patience 100 "
                   "(no early stop; the best validation epoch is tested), lradj type3 (lr x 0.9 every "
                   "epoch from the fifth); model d 16, 4 heads, 3 layers, d_ff 128, dropout 0.3, P 16, S 8",
            batch_size=128, lr=1e-4, epochs=100, patience=100, schedule="step", lr_gamma=0.9,
            hold_epochs=4, look_back=512,
            look_back_note="the script uses look-back 336 (PatchTST/42); 512 (PatchTST/64's) here, "
                           "SAMformer's",
            choices="look-back 512 instead of 336; one dropout rate (0.3) for attention, MLP, embedding "
                    "and head (the script: head dropout 0)")

    def __init__(self, cfg: PatchTSTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_patches
        self.revin = RevIN(cfg.n_channels) if cfg.revin else None
        self.embed = nn.Linear(cfg.patch_len, cfg.d_model)
        self.pos = nn.Parameter(torch.empty(n, cfg.d_model).uniform_(-0.02, 0.02))
        self.drop = nn.Dropout(cfg.dropout)
        mcfg = ModelConfig(arch="encoder", d_model=cfg.d_model, n_layers=cfg.n_layers,
                           n_heads=cfg.n_heads, d_ff=cfg.d_ff, max_seq_len=n, position="none",
                           dropout=cfg.dropout)
        self.encoder = Stack(mcfg, cfg.n_layers, causal=False)
        self.head = nn.Linear(n * cfg.d_model, cfg.horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        c = self.cfg
        b = x.shape[0]
        stats = None
        if self.revin is not None:
            x, stats = self.revin(x)
        s = x.transpose(1, 2).reshape(b * c.n_channels, c.look_back)  # channel independence
        s = torch.cat([s, s[:, -1:].expand(-1, c.stride)], dim=1)
        p = s.unfold(1, c.patch_len, c.stride)  # (b*C, N, P)
        h = self.drop(self.embed(p) + self.pos)
        ctx = Context(positions=torch.arange(h.shape[1], device=h.device), causal=False)
        h = self.encoder(h, ctx)
        y = self.head(h.flatten(1)).reshape(b, c.n_channels, c.horizon).transpose(1, 2)
        if self.revin is not None:
            y = self.revin.inverse(y, stats)
        return y
