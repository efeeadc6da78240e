"""The long-horizon forecasting protocol: sliding windows, MSE/MAE on the normalised scale.

Metrics (Time-Series-Library ``utils/metrics.py``): MSE and MAE averaged over every window,
horizon step and channel, on the normalised scale (``--inverse`` off), over **all** test windows
(``drop_last=False``, as Time-Series-Library). ``drop_last=True`` reproduces the Pathformer
reference code (arXiv 2402.05956; its ``data_factory.py`` drops the last incomplete test batch, so
at ETTh1 H = 96, batch 128 it scores 2688 of 2785 windows). Every result carries ``look_back``,
``horizon`` and ``windows`` (the number of windows scored).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


class Windows:
    """Stride-1 windows over a (rows, n_channels) series: window i is rows [i, i + L) as input
    ``x`` and rows [i + L, i + L + H) as target ``y``.

    Raises:
        ValueError: a series with fewer than look_back + horizon rows, or a non-2-D series.
    """

    def __init__(self, series: np.ndarray | torch.Tensor, look_back: int, horizon: int) -> None:
        s = torch.as_tensor(np.asarray(series, dtype=np.float32))
        if s.dim() != 2:
            raise ValueError(f"Windows: series must be (rows, n_channels), got shape {tuple(s.shape)}")
        n = s.shape[0] - look_back - horizon + 1
        if n <= 0:
            raise ValueError(f"Windows: {s.shape[0]} rows are fewer than look_back + horizon = "
                             f"{look_back} + {horizon}")
        self.series, self.look_back, self.horizon, self.n = s, look_back, horizon, n
        self._offsets = torch.arange(look_back + horizon)

    def __len__(self) -> int:
        return self.n

    def batch(self, starts: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (b, look_back, C) and y: (b, horizon, C) of the windows starting at ``starts``."""
        starts = torch.as_tensor(np.asarray(starts), dtype=torch.long)
        w = self.series[starts[:, None] + self._offsets[None, :]]
        return w[:, : self.look_back].contiguous(), w[:, self.look_back:].contiguous()


@torch.no_grad()
def evaluate_windows(predict: Callable[[torch.Tensor], torch.Tensor], windows: Windows,
                     batch_size: int, device: torch.device | str = "cpu",
                     drop_last: bool = False, with_drop_last: bool = False) -> dict[str, float]:
    """MSE and MAE of ``predict(x: (b, L, C)) -> (b, H, C)`` over the windows, in order.

    Returns ``{"mse", "mae", "windows", "look_back", "horizon"}``; sums are accumulated in float64
    so the result does not depend on the batch size (up to float32 rounding of the predictions).
    ``with_drop_last``: also ``mse_drop_last``, ``mae_drop_last``, ``windows_drop_last``, the
    ``drop_last=True`` numbers, read from the same predictions (the full batches come first), so
    the drop_last scoring costs no second pass (absent when no full batch exists).

    Raises:
        ValueError: batch_size <= 0, a prediction of the wrong shape, or ``drop_last`` leaving no
            window.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n = len(windows)
    if drop_last:
        n = (n // batch_size) * batch_size
        if n == 0:
            raise ValueError(f"drop_last with batch_size {batch_size} leaves none of {len(windows)} windows")
    se = ae = 0.0
    count = 0
    full = (n // batch_size) * batch_size
    out: dict[str, float] = {}
    for a in range(0, n, batch_size):
        if with_drop_last and a == full and full > 0:  # the batches so far are the full ones
            out = {"mse_drop_last": se / count, "mae_drop_last": ae / count, "windows_drop_last": float(full)}
        idx = torch.arange(a, min(a + batch_size, n))
        x, y = windows.batch(idx)
        pred = predict(x.to(device)).float().cpu()
        if pred.shape != y.shape:
            raise ValueError(f"forecaster returned {tuple(pred.shape)}, expected {tuple(y.shape)} "
                             f"(batch, horizon, n_channels)")
        d = (pred - y).double()
        se += float((d * d).sum())
        ae += float(d.abs().sum())
        count += d.numel()
    if with_drop_last and full == n:
        out = {"mse_drop_last": se / count, "mae_drop_last": ae / count, "windows_drop_last": float(n)}
    return {"mse": se / count, "mae": ae / count, "windows": float(n),
            "look_back": float(windows.look_back), "horizon": float(windows.horizon), **out}


def evaluate_model(model: nn.Module, windows: Windows, batch_size: int,
                   device: torch.device | str = "cpu", drop_last: bool = False,
                   with_drop_last: bool = False) -> dict[str, float]:
    """:func:`evaluate_windows` of a forecaster module in eval mode (its mode is restored)."""
    was = model.training
    model.eval()
    try:
        return evaluate_windows(model, windows, batch_size, device, drop_last, with_drop_last)
    finally:
        model.train(was)


def persistence(x: torch.Tensor, horizon: int) -> torch.Tensor:
    """The naive forecast: the last observed value repeated. x: (b, L, C) -> (b, horizon, C)."""
    return x[:, -1:, :].expand(-1, horizon, -1)
