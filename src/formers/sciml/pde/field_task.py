"""The field-forecasting task family: next-frame prediction of generated PDE fields with a
relative-L2 loss, FactFormer's curriculum and pushforward training, and one-step and rollout
relative-L2 metrics. ``kolmogorov`` (:mod:`formers.sciml.pde.kolmogorov`) and ``turbulence3d``
(:mod:`formers.sciml.pde.turbulence3d`) are its registered members; they differ in the data and
the model sizes only.

Protocol (Li, Shu, Barati Farimani, arXiv 2305.17560, §4 and the reference KM2D script
``examples/turb_ns2d_fact_lm.py`` / ``configs/ns2d_fact_lm.yml``):

* trajectories: the first ``n_train`` train, the next ``n_val`` validate, the last ``n_test`` test;
  every channel is normalised by the training trajectories' mean and standard deviation;
* input: ``t_in`` frames; a model predicts up to ``t_out`` frames per call (FactFormer's latent
  steps; the one-step models 1);
* loss: relative L2 per sample over (time, space, channels), averaged over the batch;
* curriculum: the number of predicted frames L grows linearly 1 -> t_out over
  ``curriculum_length`` steps (the reference: 6000 iterations); from ``pushforward_after`` on, every
  ``pushforward_every``-th step is a pushforward step: the model unrolls twice without gradient
  from the window and is trained on the third L frames (the reference: after 8000 iterations,
  every 3rd);
* evaluation (fields in physical units): ``*_one_step_rel_l2`` = relative L2 of the first predicted
  frame; ``*_rollout_rel_l2`` = relative L2 over (t, space, channels) of ``rollout`` autoregressive
  frames; windows start every ``eval_stride`` frames of every validation / test trajectory (all
  windows always; ``eval_batches`` is ignored).

``metric`` = ``test_rollout_rel_l2``; ``select_metric`` = ``val_rollout_rel_l2``.

Deviations: the loss is the batch mean (the reference sums over the batch of 8; AdamW is
invariant to the factor, the gradient clip at 1.0 is not); normalisation by the training
trajectories' overall standard deviation per channel (the reference: the mean over points of the
temporal std); training windows start anywhere that leaves room for a pushforward window
(t_in + 3 t_out frames), from the first step on; the trainer's warm-up + cosine schedule instead of
OneCycleLR.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from formers.registry import get
from formers.sciml.pde import factformer, fno, grid_softmax, ifactformer  # noqa: F401  (register the models)
from formers.sciml.pde.field_data import FieldDataSpec, load_or_generate
from formers.sciml.pde.surrogate import (SurrogateConfig, build_surrogate, config_from_dict,
                                         load_surrogate, predict, relative_l2, rollout,
                                         surrogate_config)
from formers.train.config import TrainConfig
from formers.train.distributed import unwrap
from formers.train.task import Task


def curriculum(step: int, t_out: int, length: int) -> int:
    """Frames predicted at ``step``: 1 + floor((t_out - 1) * step / length), capped at t_out
    (the reference's linear ``CurriculumSampler`` from 1 to t_out)."""
    if t_out <= 1 or length <= 0:
        return t_out
    return 1 + int((t_out - 1) * min(step, length) / length)


class FieldForecastTask(Task):
    """Base of the field-forecasting tasks (see the module docstring). A subclass sets ``name``,
    ``n_dims``, ``channels``, ``lengths`` (physical axis lengths), ``model_sizes`` (config fields per
    model variant) and ``default_models``, and calls :meth:`setup` with its options and a function
    that builds its :class:`FieldDataSpec`.
    """

    metric = "test_rollout_rel_l2"
    select_metric = "val_rollout_rel_l2"
    report_metrics = ("test_one_step_rel_l2", "val_rollout_rel_l2")
    lower_is_better = True
    model_kind = "surrogate"  # an unknown --model fails before the data are generated
    name: ClassVar[str] = ""
    n_dims: ClassVar[int] = 2
    channels: ClassVar[int] = 1
    lengths: ClassVar[tuple[float, ...]] = ()
    model_sizes: ClassVar[dict[str, dict[str, Any]]] = {}

    def setup(self, options: dict[str, Any], make_spec: Callable[[], FieldDataSpec], quiet: bool = False) -> None:
        """Check the common options, build the data spec (``make_spec()``: the solver's checks),
        load (or generate) its data and split it. ``options``: the subclass constructor's
        ``locals()`` (``self``, ``seed``, ``quiet`` and ``__class__`` are dropped here).

        Raises ValueError naming a bad option (before any work) or data holding NaN/inf."""
        o = {k: v for k, v in options.items() if k not in ("self", "seed", "quiet", "__class__")}
        data = o.get("data")
        if isinstance(data, (list, tuple)):
            if len(data) != 1:
                raise ValueError(f"{self.name} task: data takes one folder, got {list(data)}")
            o["data"] = data = str(data[0])
        for key in ("n_train", "n_val", "n_test", "t_in", "t_out", "rollout", "eval_stride"):
            v = o[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{self.name} task: {key} must be an int > 0, got {v!r}")
        for key in ("curriculum_length", "pushforward_after", "pushforward_every"):
            v = o[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{self.name} task: {key} must be an int >= 0, got {v!r}")
        need = max(o["t_in"] + 3 * o["t_out"], o["t_in"] + o["rollout"])
        if o["n_frames"] < need:
            raise ValueError(f"{self.name} task: n_frames = {o['n_frames']} is too short: t_in + max(3 t_out, "
                             f"rollout) = {need} frames are needed per window")
        gen = o["gen_device"]
        if gen not in ("auto", "cpu") and not gen.startswith("cuda"):
            raise ValueError(f"{self.name} task: gen_device must be auto, cpu or cuda[:N], got {gen!r}")
        self.spec = spec = make_spec()
        self.options = o
        self.t_in, self.t_out, self.n_rollout, self.stride = o["t_in"], o["t_out"], o["rollout"], o["eval_stride"]
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if gen == "auto" else gen
        w, self.data_info = load_or_generate(spec, data, dev, quiet=quiet)
        if self.channels == 1:
            w = w.unsqueeze(-1)  # (traj, frames, *grid, 1)
        n_train, n_val = o["n_train"], o["n_val"]
        dims = tuple(range(w.dim() - 1))
        self.std, self.mean = torch.std_mean(w[:n_train], dim=dims)  # per channel
        w = (w - self.mean) / self.std
        self.splits = {"train": w[:n_train], "val": w[n_train:n_train + n_val], "test": w[n_train + n_val:]}

    # -------------------------------------------------------------------------------- models
    def model_config(self, variant: str | None = None) -> SurrogateConfig:
        variant = variant or self.default_models[0]
        get("surrogate", variant)  # unknown name -> ValueError listing the registered ones
        fields = {"n_dims": self.n_dims, "channels": self.channels, "t_in": self.t_in, "t_out": self.t_out,
                  "lengths": self.lengths, **self.model_sizes.get(variant, {})}
        if variant == "fno":  # the paper's 12 modes, capped by what the grid holds
            fields["modes"] = min(12, self.spec.grid // 2)
        return surrogate_config(variant, **fields)

    def build_model(self, cfg: SurrogateConfig) -> nn.Module:
        if cfg.n_dims != self.n_dims or cfg.channels != self.channels or cfg.t_in != self.t_in:
            raise ValueError(f"{self.name} task: the model config has n_dims {cfg.n_dims}, channels "
                             f"{cfg.channels}, t_in {cfg.t_in}; the data need {self.n_dims}, "
                             f"{self.channels}, {self.t_in}")
        model = build_surrogate(cfg)
        for part in model.modules():  # a grid the model cannot take fails here, before training
            check = getattr(part, "check_grid", None)
            if callable(check):
                check((self.spec.grid,) * self.n_dims)
        return model

    def config_from_dict(self, data: dict[str, Any]) -> SurrogateConfig:
        return config_from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        return load_surrogate(folder)

    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=600, batch_size=8, lr=5e-4, warmup_steps=30, min_lr_ratio=0.01,
                           weight_decay=1e-4, grad_clip=1.0, eval_every=100, eval_batches=1,
                           checkpoint_every=100, dtype="fp32")

    # -------------------------------------------------------------------------------- data
    def frames_now(self, step: int, t_out: int) -> tuple[int, int]:
        """(frames L predicted per call, pushforward unrolls 0 or 2) at ``step``."""
        o = self.options
        L = curriculum(step, t_out, o["curriculum_length"])
        every = o["pushforward_every"]
        push = 2 if every and step > o["pushforward_after"] and step % every == 0 else 0
        return L, push

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Random windows (trajectory, start) from ``default_rng([seed, step, micro])``: x = t_in
        frames, y = the t_out frames after the window (after 2 t_out more for pushforward rows);
        ``step`` = the trainer step (a tensor per row) for the curriculum and pushforward."""
        w = self.splits["train"]
        rng = np.random.default_rng([self.seed, step, micro])
        span = w.shape[1] - self.t_in - 3 * self.t_out + 1
        traj = rng.integers(0, w.shape[0], batch_size)
        start = rng.integers(0, span, batch_size)
        win = torch.stack([w[i, s:s + self.t_in + 3 * self.t_out] for i, s in zip(traj, start)])
        return {"x": win[:, :self.t_in], "future": win[:, self.t_in:],
                "step": torch.full((batch_size,), step, dtype=torch.long)}

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["x"].shape[0])  # windows

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, future = batch["x"], batch["future"]
        t_out = unwrap(model).cfg.t_out
        L, push = self.frames_now(int(batch["step"][0]), min(t_out, self.t_out))
        if push:
            with torch.no_grad():
                for _ in range(push):
                    x = torch.cat([x, predict(model, x, L)], dim=1)[:, -self.t_in:]
        y = future[:, push * L:(push + 1) * L]
        return relative_l2(predict(model, x.detach(), L).float(), y.float()).mean()

    @torch.no_grad()
    def _scores(self, model: nn.Module, split: str, device: torch.device, batch_size: int) -> dict[str, float]:
        w = self.splits[split]
        std, mean = self.std.to(device), self.mean.to(device)
        starts = range(0, w.shape[1] - self.t_in - self.n_rollout + 1, self.stride)
        one, roll = [], []
        for i in range(w.shape[0]):
            for s0 in range(0, len(starts), batch_size):
                s = list(starts)[s0:s0 + batch_size]
                win = torch.stack([w[i, t:t + self.t_in + self.n_rollout] for t in s]).to(device)
                pred = rollout(model, win[:, :self.t_in], self.n_rollout).float() * std + mean
                true = win[:, self.t_in:].float() * std + mean
                one.append(relative_l2(pred[:, :1], true[:, :1]))
                roll.append(relative_l2(pred, true))
        return {f"{split}_one_step_rel_l2": float(torch.cat(one).mean()),
                f"{split}_rollout_rel_l2": float(torch.cat(roll).mean()),
                f"{split}_windows": float(sum(len(r) for r in roll))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        was = model.training
        model.eval()
        try:
            out = {**self._scores(model, "val", device, batch_size),
                   **self._scores(model, "test", device, batch_size)}
        finally:
            model.train(was)
        out["rollout_frames"] = float(self.n_rollout)
        return out

    def persistence_metrics(self) -> dict[str, float]:
        """Test scores of repeating the last input frame (a floor any model must beat)."""
        class Persist(nn.Module):
            def forward(self, x):
                return x[:, -1:]
        return self._scores(Persist(), "test", torch.device("cpu"), 64)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "options": dict(self.options), "data": self.data_info,
                "normalisation": {"mean": self.mean.tolist(), "std": self.std.tolist()},
                "trajectories": {k: int(v.shape[0]) for k, v in self.splits.items()}}
