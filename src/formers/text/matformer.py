"""The ``lm-matformer`` task: byte-level LM trained with MatFormer's loss and evaluated at every
granularity (Devvrit, Kudugunta et al., "MatFormer: Nested Transformer for Elastic Inference",
arXiv 2310.07707, §3.2 training)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.matformer import SCHEDULES, matformer_layers, matformer_loss, n_granularities, set_granularity
from formers.registry import Paper, register
from formers.text.task import LMTask


@register("task", "lm-matformer",
          paper=Paper("MatFormer: Nested Transformer for Elastic Inference", "2310.07707", "§3.2"),
          summary="byte-level LM with the MatFormer loss (joint or sampled); val_bpb per granularity")
class MatFormerLMTask(LMTask):
    """The ``lm`` task (same data, windows, metric) with MatFormer training.

    Loss: :func:`formers.nn.matformer.matformer_loss` of the ``lm`` cross-entropy over ``ids``
    (batch, seq_len + 1): ``schedule='joint'`` (default; sum over all g granularities on the same
    batch, one optimiser step, as MatFormer-OLMo) or ``'sampled'`` (one granularity per step,
    uniform, a pure function of (seed, step), as devvrit/matformer). The step reaches the loss
    as a ``step`` column (batch,) of each training batch. ``train_loss`` in the logs is the
    summed joint loss (g times a single model's scale).

    Evaluation: ``val_bpb`` / ``val_loss`` at the largest granularity (the universal model), and
    ``val_bpb_g{i}`` / ``val_loss_g{i}`` for each granularity i = 0 (smallest) .. g-1.

    Default model: ``matformer`` (``default_models = ('matformer', 'baseline')``; pass
    ``--model matformer`` to ``formers train``, whose own default is ``baseline``). A model with no
    nested FFN is trained with the plain ``lm`` loss and evaluated at its single size: the
    independently trained dense model the paper compares each submodel against.

    Options: those of ``lm`` plus ``schedule``.
    Raises: ValueError for an unknown schedule.
    """

    default_models = ("matformer", "baseline")

    def __init__(self, seed: int = 0, data: list[str] | str | None = None, seq_len: int = 128,
                 d_model: int = 128, n_layers: int = 4, n_heads: int = 4, schedule: str = "joint") -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"lm-matformer task: schedule {schedule!r} is not one of {list(SCHEDULES)}")
        super().__init__(seed, data, seq_len, d_model, n_layers, n_heads)
        self.options["schedule"] = schedule
        self.schedule = schedule

    def model_config(self, variant: str = "matformer") -> ModelConfig:
        return super().model_config(variant)

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        batch = super().train_batch(step, micro, batch_size)
        batch["step"] = torch.full((batch_size,), step, dtype=torch.int64)
        return batch

    def _lm_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return LMTask.loss(self, model, batch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raw = getattr(model, "module", model)  # DDP / compile wrappers keep the nested layers inside
        raw = getattr(raw, "_orig_mod", raw)
        if not matformer_layers(raw):
            return self._lm_loss(model, batch)
        step = int(batch["step"][0]) if "step" in batch else 0
        return matformer_loss(raw, batch, lambda _m, b: self._lm_loss(model, b),
                              schedule=self.schedule, step=step, seed=self.seed)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        out = dict(super().evaluate(model, n_batches, batch_size, device))
        if matformer_layers(model):
            for i in range(n_granularities(model)):
                with set_granularity(model, i):
                    r = super().evaluate(model, n_batches, batch_size, device)
                out[f"val_bpb_g{i}"], out[f"val_loss_g{i}"] = r["val_bpb"], r["val_loss"]
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["task"] = "lm-matformer"
        return d
