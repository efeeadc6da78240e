"""DLinear: a linear forecaster on a trend/remainder decomposition (baseline).

Paper: Zeng, Chen, Zhang, Xu, "Are Transformers Effective for Time Series Forecasting?",
AAAI 2023, arXiv 2205.13504, §4 (DLinear). The look-back x is split into a trend (moving average
of ``kernel`` steps, the series padded by repeating its first and last values) and the remainder
x − trend; each goes through a Linear L -> H along time (shared by every channel unless
``individual``), and the two forecasts are added. No normalisation (as the paper's DLinear).
Linear layers use torch's default init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from formers.registry import Paper, register
from formers.timeseries.forecaster import ForecasterConfig, check_input
from formers.timeseries.recipe import ForecastRecipe

PAPER = Paper("Are Transformers Effective for Time Series Forecasting?", "2205.13504", "§4 DLinear")


@dataclass
class DLinearConfig(ForecasterConfig):
    """DLinear: moving-average ``kernel`` (25, odd), ``individual`` per-channel linear layers."""

    model: str = "dlinear"
    kernel: int = 25
    individual: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel <= 0 or self.kernel % 2 == 0:
            raise ValueError(f"DLinearConfig.kernel must be an odd int > 0, got {self.kernel}")


def moving_average(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Moving average over time with edge replication. x: (batch, L, C) -> (batch, L, C)."""
    pad = (kernel - 1) // 2
    xp = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return xp.unfold(1, kernel, 1).mean(dim=-1)


@register("forecaster", "dlinear", config=DLinearConfig, paper=PAPER,
          summary="DLinear baseline: linear maps of the moving-average trend and the remainder")
class DLinear(nn.Module):
    """DLinear forecaster. x: (batch, look_back, n_channels) -> (batch, horizon, n_channels)."""

    @staticmethod
    def recipe(horizon: int) -> ForecastRecipe:
        """The reference ETTh1 script (the same at every horizon)."""
        return ForecastRecipe(
            source="cure-lab/LTSF-Linear scripts/EXP-LongForecasting/DLinear/etth1.sh (commit f7cbf46) "
                   "with run_longExp.py defaults: MSE, Adam lr 1e-4, batch 8, 10 epochs, early stopping "
                   "patience 3, lradj type1 (lr halved every epoch from the third)",
            batch_size=8, lr=1e-4, epochs=10, patience=3, schedule="step", lr_gamma=0.5,
            hold_epochs=2, look_back=512,
            look_back_note="the script uses look-back 336; 512 here (SAMformer's) so that DLinear, "
                           "PatchTST and SAMformer read the same inputs",
            choices="look-back 512 instead of 336")

    def __init__(self, cfg: DLinearConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_channels if cfg.individual else 1
        self.seasonal = nn.ModuleList(nn.Linear(cfg.look_back, cfg.horizon) for _ in range(n))
        self.trend = nn.ModuleList(nn.Linear(cfg.look_back, cfg.horizon) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        trend = moving_average(x, self.cfg.kernel)
        s, t = (x - trend).transpose(1, 2), trend.transpose(1, 2)  # (batch, C, L)
        if self.cfg.individual:
            out = torch.stack([self.seasonal[c](s[:, c]) + self.trend[c](t[:, c])
                               for c in range(self.cfg.n_channels)], dim=1)
        else:
            out = self.seasonal[0](s) + self.trend[0](t)
        return out.transpose(1, 2)
