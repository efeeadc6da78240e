"""The training config: budget, optimiser, schedule, precision, checkpoints, output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from formers.config import Config, check_choice, check_positive


@dataclass
class TrainConfig(Config):
    """How to train. Every field is also a ``formers train`` / ``compare`` flag (``--max-steps``,
    ...), whose help is the field's entry below.

    Attributes:
        max_steps: optimiser steps.
        batch_size: sequences per micro-batch (global, over all ranks).
        grad_accum: micro-batches per step.
        lr: peak learning rate.
        min_lr_ratio: the learning rate decays to lr * min_lr_ratio (cosine, one_cycle).
        warmup_steps: steps of warm-up (cosine: linear; one_cycle: cosine rise from lr / 25;
            step: steps at lr before the first decay).
        schedule: :func:`formers.train.schedule.lr_at`: ``cosine`` (default): warmup_steps of
            linear warm-up, then cosine decay to lr * min_lr_ratio at max_steps; ``one_cycle``:
            torch's ``OneCycleLR`` (cosine annealing, ``div_factor`` 25); ``step``: lr for the
            first warmup_steps (no ramp), then multiplied by lr_gamma every lr_step_every steps
            (the per-epoch ``lradj`` rules of the long-horizon forecasting code).
        lr_gamma: the step schedule's factor, in (0, 1].
        lr_step_every: steps between the step schedule's decays (steps per epoch).
        weight_decay: AdamW decay for matrices (embeddings and weights of linear layers); biases,
            norms and other 1-D/0-D parameters get none.
        decay_mixing_weights: also decay DenseFormer's alphas and value-residual lambdas (as the
            DenseFormer reference code does).
        beta1: AdamW's first-moment decay.
        beta2: AdamW's second-moment decay.
        grad_clip: global-norm gradient clip (0 = off).
        eval_every: steps between validations.
        eval_batches: batches per validation.
        checkpoint_every: steps between checkpoints (0 = only at the end).
        seed: the run's seed (data order, initialisation).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        dtype: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        compile: ``torch.compile`` the model and the task's loss.
        quiet: no progress output.
        sam_rho: sharpness-aware minimisation radius (:class:`formers.train.optim.SAM`, Foret et
            al. arXiv 2010.01412) around AdamW; 0 = off.
        early_stopping: patience in evaluations (0 = off): stop when the task's selection metric
            (``Task.select_metric``, default ``Task.metric``) has not improved for this many
            evaluations, and report the final metrics at the best evaluation's weights (kept in
            ``RUN/best/``).
        optimizer: ``adamw`` (default; with weight_decay 0 it is Adam) or ``lbfgs``
            (``torch.optim.LBFGS``, strong-Wolfe line search, history 100, lbfgs_max_iter
            iterations per step at lr, the step's closure re-running every micro-batch: the
            full-batch optimiser of PINNs; grad_clip must be 0, as its line search needs the true
            gradient, and no SAM).
        lbfgs_max_iter: L-BFGS iterations per optimiser step.
        parallel: under ``torchrun`` with ``WORLD_SIZE`` > 1: ``ddp`` (default; every rank holds
            the whole model) or ``fsdp`` (FSDP2 shards weights, gradients and optimiser state;
            bf16 compute / fp32 gradient reduction under bf16; AdamW only, no SAM). batch_size is
            the global batch either way, so a run may resume under the other mode or at another
            world size (:mod:`formers.train.distributed`). Ignored by a single process.
        init_from: a run or checkpoint folder whose model weights start this run (the same model
            config is required); optimiser state, step, schedule and RNG start fresh. For
            continuing a model on other data or settings, which a resume refuses; a resumed run
            loads its own checkpoint instead.
    """

    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: Literal["cosine", "one_cycle", "step"] = "cosine"
    lr_gamma: float = 0.5
    lr_step_every: int = 0
    weight_decay: float = 0.1
    decay_mixing_weights: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 16
    checkpoint_every: int = 0
    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    quiet: bool = False
    sam_rho: float = 0.0
    early_stopping: int = 0
    optimizer: Literal["adamw", "lbfgs"] = "adamw"
    lbfgs_max_iter: int = 20
    parallel: Literal["ddp", "fsdp"] = "ddp"
    init_from: str | None = None

    def __post_init__(self) -> None:
        o = "TrainConfig"
        check_positive(o, max_steps=self.max_steps, batch_size=self.batch_size,
                       grad_accum=self.grad_accum, lr=self.lr, eval_every=self.eval_every,
                       eval_batches=self.eval_batches)
        check_choice(o, "dtype", self.dtype, ("auto", "fp32", "bf16"))
        check_choice(o, "optimizer", self.optimizer, ("adamw", "lbfgs"))
        check_positive(o, lbfgs_max_iter=self.lbfgs_max_iter)
        check_choice(o, "parallel", self.parallel, ("ddp", "fsdp"))
        if self.parallel == "fsdp" and (self.optimizer != "adamw" or self.sam_rho > 0):
            raise ValueError(f"{o}: parallel 'fsdp' takes optimizer 'adamw' without SAM (their steps "
                             f"read whole, unsharded gradients); got optimizer = {self.optimizer!r}, "
                             f"sam_rho = {self.sam_rho}: use parallel 'ddp'")
        if self.optimizer == "lbfgs" and (self.grad_clip > 0 or self.sam_rho > 0):
            raise ValueError(f"{o}: optimizer 'lbfgs' takes no grad_clip or sam_rho (its line search "
                             f"needs the true gradient); got grad_clip = {self.grad_clip}, "
                             f"sam_rho = {self.sam_rho}: set them to 0")
        check_choice(o, "schedule", self.schedule, ("cosine", "one_cycle", "step"))
        if self.schedule == "step" and self.lr_step_every <= 0:
            raise ValueError(f"{o}.lr_step_every must be > 0 with schedule 'step' (steps between "
                             f"decays), got {self.lr_step_every}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ValueError(f"{o}.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if self.seed < 0:
            raise ValueError(f"{o}.seed must be >= 0, got {self.seed}")
        for name in ("warmup_steps", "checkpoint_every", "weight_decay", "grad_clip", "sam_rho",
                     "early_stopping", "lr_step_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{o}.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"{o}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{o}.{name} must be in [0, 1), got {getattr(self, name)}")
