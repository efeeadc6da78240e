"""The training config: budget, optimiser, schedule, precision, checkpoints, output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from formers.config import Config, check_choice, check_positive


@dataclass
class TrainConfig(Config):
    """How to train.

    max_steps: optimiser steps. batch_size: sequences per micro-batch (global, over all ranks).
    grad_accum: micro-batches per step. lr: peak learning rate. schedule
    (:func:`formers.train.schedule.lr_at`): ``cosine`` (default): warmup_steps of linear warm-up,
    then cosine decay to lr * min_lr_ratio at max_steps; ``one_cycle``: torch's ``OneCycleLR``
    (cosine annealing, ``div_factor`` 25): cosine rise from lr / 25 over warmup_steps, then cosine
    fall to lr * min_lr_ratio at max_steps; ``step``: lr for the first warmup_steps (no ramp), then
    multiplied by lr_gamma every lr_step_every steps (the per-epoch ``lradj`` rules of the
    long-horizon forecasting code: lr_step_every = steps per epoch). weight_decay: AdamW decay
    for matrices (embeddings and weights of linear layers); biases, norms and other 1-D/0-D
    parameters get none (``decay_mixing_weights`` adds DenseFormer's alphas and value-residual
    lambdas to the decayed group, as the DenseFormer reference code does). grad_clip: global-norm clip (0 = off). eval_every / eval_batches:
    validation cadence and size. checkpoint_every: steps between checkpoints (0 = only at the end).
    device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``. dtype: ``auto`` (bf16
    autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``. compile: ``torch.compile`` the model.
    sam_rho: sharpness-aware minimisation radius (:class:`formers.train.optim.SAM`, Foret et al.
    arXiv 2010.01412) around AdamW; 0 = off (plain AdamW, one forward/backward per micro-batch).
    early_stopping: patience in evaluations (0 = off): stop when the task's selection metric
    (``Task.select_metric``, default ``Task.metric``) has not improved for this many evaluations,
    and report the final metrics at the best evaluation's weights (kept in ``RUN/best/``).
    optimizer: ``adamw`` (default; with weight_decay 0 it is Adam) or ``lbfgs``:
    ``torch.optim.LBFGS`` with the strong-Wolfe line search (history 100), ``lbfgs_max_iter``
    iterations per optimiser step at learning rate ``lr`` (the full-batch optimiser of PINNs; the
    step's closure re-runs every micro-batch). L-BFGS takes no gradient clipping (grad_clip must be
    0: its line search needs the true gradient) and no SAM.
    parallel: how a run launched by ``torchrun`` with ``WORLD_SIZE`` > 1 spreads the model over
    its ranks (ignored by a single process): ``ddp`` (default): every rank holds the whole model
    (``DistributedDataParallel``); ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard`` per
    block, then the root) shards weights, gradients and optimiser state over the ranks, for models
    that do not fit one GPU (bf16 compute / fp32 gradient reduction when the dtype is bf16; AdamW
    only, no SAM). Either way ``batch_size`` is the global batch, so a run may be resumed under
    the other mode or at another world size (:mod:`formers.train.distributed`).
    init_from: a run or checkpoint folder whose model weights start this run (the same model
    config is required); optimiser state, step, schedule and RNG start fresh. For continuing a
    model on other data or other settings, which ``resume`` refuses; a resumed run loads its
    own checkpoint instead.
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
