"""Learning-rate schedule: linear warm-up, then cosine decay to ``lr * min_lr_ratio``.

:func:`lr_at` is a pure function of the step and the config, so a resumed run recomputes exactly the
learning rate an uninterrupted run would have used.
"""

from __future__ import annotations

import math

from formers.train.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based: the first update is step 0).

    Warm-up (``step < warmup_steps``): ``lr * (step + 1) / warmup_steps``, so the first update
    already moves and step ``warmup_steps - 1`` reaches the peak ``lr``.
    Decay: with ``p = (step - warmup_steps) / (max_steps - warmup_steps)`` clamped to [0, 1],
    ``lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2`` where ``lr_min = lr * min_lr_ratio``;
    it equals ``lr`` at the end of warm-up and ``lr_min`` at ``max_steps`` (and after).

    Raises:
        ValueError: ``step`` is negative.
    """
    if step < 0:
        raise ValueError(f"lr_at: step must be >= 0, got {step}")
    peak = cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    lr_min = peak * cfg.min_lr_ratio
    span = cfg.max_steps - cfg.warmup_steps
    if span <= 0:
        return lr_min
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return lr_min + (peak - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for g in optimizer.param_groups:
        g["lr"] = lr
