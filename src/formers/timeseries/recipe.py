"""Training recipes: how each forecaster's own paper trains it on the long-horizon benchmarks.

A forecaster declares its recipe as a static method ``recipe(horizon: int) -> ForecastRecipe`` on
its registered class (:func:`forecaster_recipe` finds it). The ``forecast`` task
(:mod:`formers.timeseries.task`) trains every model with its own recipe unless the user
overrides a field (a ``formers train`` flag such as ``--lr``, or ``--opt look_back=...``); the
data, splits, seeds and evaluation stay the task's and are the same for every model. Each run
records the recipe it used (``summary.json``'s ``recipe``: the declared recipe, where it comes
from, and the fields the user changed).

Recipes count in epochs of the task's training windows; :meth:`ForecastRecipe.train_config`
turns them into optimiser steps for a given number of steps per epoch. All use fp32, Adam-style
betas (0.9, 0.999), no gradient clipping, and evaluate (and checkpoint) once per epoch; early
stopping keeps the best validation epoch's weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from formers.train.config import TrainConfig

SCHEDULES = ("constant", "one_cycle", "step")


@dataclass(frozen=True)
class ForecastRecipe:
    """A forecaster's training recipe (one horizon).

    source: where the numbers come from (paper section or reference script and commit).
    batch_size: training windows per step (also the evaluation batch, which only matters for
        Pathformer's ``drop_last`` scoring). lr: peak learning rate. epochs: the budget.
    patience: early-stopping patience in epochs (on the task's selection metric; equal to
        ``epochs`` = keep the best epoch without stopping early).
    loss: ``mse`` or ``mae`` (L1; the task then also selects on ``val_mae``).
    sam_rho: SAM radius (0 = plain Adam). weight_decay: AdamW decay of matrices (0 = Adam).
    schedule: ``constant``; ``one_cycle`` (torch ``OneCycleLR``, rise over ``pct_start`` of all
        steps); ``step`` (x ``lr_gamma`` every epoch after ``hold_epochs`` epochs at ``lr``).
    min_lr_ratio: the one-cycle end (OneCycleLR's 1 / (div_factor * final_div_factor)).
    look_back: the look-back this project trains the model at by default (``look_back_note``
        says where it differs from the reference script).
    drop_last: also score the test set with the last incomplete batch dropped (the reference's).
    model: model-config fields of the published script for this horizon.
    choices: what the reference does not fix, or what we chose differently, in words.

    Raises ValueError (naming the field) for a bad value.
    """

    source: str
    batch_size: int
    lr: float
    epochs: int
    patience: int
    loss: str = "mse"
    sam_rho: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    pct_start: float = 0.3
    min_lr_ratio: float = 1.0
    lr_gamma: float = 1.0
    hold_epochs: int = 0
    look_back: int = 512
    look_back_note: str = ""
    drop_last: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    choices: str = ""

    def __post_init__(self) -> None:
        o = "ForecastRecipe"
        for name in ("batch_size", "epochs", "patience", "look_back"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"{o}.lr must be > 0, got {self.lr!r}")
        if self.loss not in ("mse", "mae"):
            raise ValueError(f"{o}.loss must be 'mse' or 'mae', got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{o}.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"{o}.pct_start must be in (0, 1), got {self.pct_start!r}")
        if self.hold_epochs < 0 or self.sam_rho < 0 or self.weight_decay < 0:
            raise ValueError(f"{o}: hold_epochs, sam_rho and weight_decay must be >= 0")

    def train_config(self, steps_per_epoch: int) -> TrainConfig:
        """The recipe as a :class:`TrainConfig` for ``steps_per_epoch`` optimiser steps per epoch."""
        spe = steps_per_epoch
        total = self.epochs * spe
        sched: dict[str, Any] = {"schedule": "cosine", "min_lr_ratio": 1.0, "warmup_steps": 0}
        if self.schedule == "one_cycle":
            sched = {"schedule": "one_cycle", "warmup_steps": max(1, round(self.pct_start * total)),
                     "min_lr_ratio": self.min_lr_ratio}
        elif self.schedule == "step":
            sched = {"schedule": "step", "warmup_steps": self.hold_epochs * spe,
                     "lr_gamma": self.lr_gamma, "lr_step_every": spe}
        return TrainConfig(max_steps=total, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, beta1=0.9, beta2=0.999, grad_clip=0.0,
                           eval_every=spe, eval_batches=1, checkpoint_every=spe, dtype="fp32",
                           sam_rho=self.sam_rho, early_stopping=self.patience, **sched)

    def summary(self) -> str:
        """One line for tables, e.g. ``MSE, SAM 0.7, Adam 1e-3 constant, batch 32, 100 ep, patience 5``."""
        opt = f"SAM {self.sam_rho:g} + Adam" if self.sam_rho else "Adam"
        sched = {"constant": "constant",
                 "one_cycle": f"one-cycle {self.pct_start:g}",
                 "step": f"x{self.lr_gamma:g}/epoch after {self.hold_epochs}"}[self.schedule]
        return (f"{self.loss.upper()}, {opt} {self.lr:g} {sched}, batch {self.batch_size}, "
                f"{self.epochs} ep, patience {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The forecast task's own protocol (SAMformer's TF run.py without SAM) for a forecaster that
# declares no recipe.
DEFAULT_RECIPE = ForecastRecipe(
    source="the forecast task's protocol (no recipe declared by the model): SAMformer's TF run.py "
           "settings without SAM",
    batch_size=32, lr=1e-3, epochs=100, patience=5, weight_decay=1e-5)
