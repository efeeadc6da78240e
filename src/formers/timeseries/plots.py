"""Plots of forecasts against the truth on a few test windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.atomic import atomic_write


@torch.no_grad()
def plot_forecasts(models: dict[str, tuple[Any, nn.Module]], path: str | Path, title: str = "",
                   n: int = 3, channel: int = -1) -> Path:
    """PNG of each model's forecast of ``channel`` (default the last: the target) on ``n`` test
    windows spread over the test set, against the truth and the end of the look-back.

    ``models``: name -> (forecast task, model). The tasks must share the data and horizon (they
    may differ in look-back: test window i predicts the same rows whatever the look-back, because
    the test split starts look_back rows early). Window i of the plot is test window i of each task.

    Raises ValueError for tasks with different horizons or numbers of test windows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [t for t, _ in models.values()]
    H = tasks[0].horizon
    sizes = {(t.horizon, len(t.windows["test"])) for t in tasks}
    if len(sizes) != 1:
        raise ValueError(f"plot_forecasts: the tasks differ in (horizon, test windows): {sorted(sizes)}")
    starts = torch.linspace(0, len(tasks[0].windows["test"]) - 1, n).long()
    fig = Figure(figsize=(10, 2.8 * n), dpi=100)
    FigureCanvasAgg(fig)
    truth = None
    preds = {}
    for name, (task, model) in models.items():
        x, y = task.windows["test"].batch(starts)
        was = model.training
        model.eval()
        try:
            preds[name] = (x, model(x.to(next(model.parameters()).device)).float().cpu())
        finally:
            model.train(was)
        truth = y
    keep = min(min(t.look_back for t in tasks), 2 * H)
    x_ref = preds[next(iter(preds))][0]
    cname = tasks[0].data.columns[channel]
    ax = None
    for i in range(n):
        ax = fig.add_subplot(n, 1, i + 1)
        ax.plot(range(-keep, 0), x_ref[i, -keep:, channel], color="0.5", lw=1, label="look-back (last part)")
        ax.plot(range(H), truth[i, :, channel], color="k", lw=1.4, label="truth")
        for name, (_, p) in preds.items():
            ax.plot(range(H), p[i, :, channel], lw=1.1, label=name)
        ax.set_ylabel(f"{cname} (normalised)\ntest window {int(starts[i])}")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_title(title or f"forecasts on test windows, H={H}")
            ax.legend(loc="upper left", fontsize=8, ncol=2)
    ax.set_xlabel("steps after the forecast origin")
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
