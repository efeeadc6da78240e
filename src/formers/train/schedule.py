"""Learning-rate schedules: warm-up + cosine (default), one-cycle, and per-period step decay.

:func:`lr_at` is a pure function of the step and the config, so a resumed run recomputes exactly the
learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math

from formers.train.config import TrainConfig

# torch.optim.lr_scheduler.OneCycleLR's default div_factor: the one-cycle rise starts at lr / 25.
ONE_CYCLE_DIV = 25.0


def _cos(start: float, end: float, p: float) -> float:
    """Cosine interpolation from ``start`` (p = 0) to ``end`` (p = 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based: the first update is step 0).

    ``cfg.schedule``:

    * ``cosine``: warm-up (``step < warmup_steps``) ``lr * (step + 1) / warmup_steps``, so the first
      update already moves and step ``warmup_steps - 1`` reaches the peak ``lr``; then with
      ``p = (step - warmup_steps) / (max_steps - warmup_steps)`` clamped to [0, 1],
      ``lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2`` where ``lr_min = lr * min_lr_ratio``.
    * ``one_cycle``: ``torch.optim.lr_scheduler.OneCycleLR`` with ``anneal_strategy='cos'``,
      ``div_factor`` 25, ``pct_start = warmup_steps / max_steps`` and ``final_div_factor =
      1 / (25 * min_lr_ratio)``: a cosine rise from ``lr / 25`` at step 0 to ``lr`` at step
      ``warmup_steps - 1``, then a cosine fall to ``lr * min_lr_ratio`` at step ``max_steps - 1``
      (and after). OneCycleLR's momentum cycling (beta1 between 0.85 and 0.95) is not done here.
    * ``step``: ``lr`` for steps ``< warmup_steps`` (a hold, no ramp), then
      ``lr * lr_gamma ** ((step - warmup_steps) // lr_step_every + 1)``. The ``lradj`` rules of
      the long-horizon forecasting code are ``lr_step_every`` = steps per epoch with ``type1``
      (halve every epoch from the third): gamma 0.5, hold 2 epochs; ``type3`` (x 0.9 every epoch
      from the fifth): gamma 0.9, hold 4 epochs.

    Raises:
        ValueError: ``step`` is negative.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    peak, warm = cfg.lr, cfg.warmup_steps
    lr_min = peak * cfg.min_lr_ratio
    if cfg.schedule == "step":
        if step < warm:
            return peak
        return peak * cfg.lr_gamma ** ((step - warm) // cfg.lr_step_every + 1)
    if cfg.schedule == "one_cycle":
        rise_end, fall_end = warm - 1, cfg.max_steps - 1
        if step <= rise_end:
            return _cos(peak / ONE_CYCLE_DIV, peak, step / rise_end if rise_end > 0 else 1.0)
        span = fall_end - max(rise_end, 0)
        p = min(1.0, (step - max(rise_end, 0)) / span) if span > 0 else 1.0
        return _cos(peak, lr_min, p)
    if step < warm:
        return peak * (step + 1) / warm
    span = cfg.max_steps - warm
    if span <= 0:
        return lr_min
    p = min(1.0, (step - warm) / span)
    return _cos(peak, lr_min, p)


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for g in optimizer.param_groups:
        g["lr"] = lr
