"""The ``kolmogorov`` task: next-frame prediction of 2-D Kolmogorov-flow vorticity (FactFormer's
KM2D benchmark at reduced size), with one-step and rollout relative L2.

``formers train kolmogorov --model factformer`` and ``formers compare kolmogorov --models
factformer,fno,softmax``. The data are generated on first use (progress bar) by the project's
pseudo-spectral solver and cached in the data directory (:mod:`formers.sciml.pde.kolmogorov_data`).

Protocol (Li, Shu, Barati Farimani, arXiv 2305.17560, §4 and the reference KM2D script
``examples/turb_ns2d_fact_lm.py`` / ``configs/ns2d_fact_lm.yml``):

* trajectories: the first ``n_train`` train, the next ``n_val`` validate, the last ``n_test`` test;
  frames ``record_dt`` = 1/16 s apart (the reference: 32 frames/s, interval 2); the field is
  normalised by the training mean and standard deviation;
* input: ``t_in`` = 10 frames; FactFormer marches ``t_out`` = 4 latent steps per call, the
  one-step baselines predict one frame per call;
* loss: relative L2 per sample over (time, x, y), averaged over the batch;
* curriculum: the number of predicted frames L grows linearly 1 -> t_out over
  ``curriculum_length`` steps (the reference: 6000 iterations); from ``pushforward_after`` on, every
  ``pushforward_every``-th step is a pushforward step: the model unrolls twice without gradient
  from the window and is trained on the third L frames (the reference: after 8000 iterations,
  every 3rd);
* evaluation (denormalised fields): ``*_one_step_rel_l2`` = relative L2 of the first predicted
  frame; ``*_rollout_rel_l2`` = relative L2 over (t, x, y) of ``rollout`` = 16 autoregressive
  frames (the reference's test metric); windows start every ``eval_stride`` frames of every
  validation / test trajectory (all windows always; ``eval_batches`` is ignored).

``metric`` = ``test_rollout_rel_l2``; ``select_metric`` = ``val_rollout_rel_l2``.

Deviations: the loss is the batch mean (the reference sums over the batch of 8; AdamW is
invariant to the factor, the gradient clip at 1.0 is not); normalisation uses the training
trajectories' overall standard deviation (the reference: the mean over points of the temporal
std); training windows start anywhere that leaves room for a pushforward window (t_in + 3 t_out
frames), from the first step on; warm-up + cosine schedule of the trainer instead of OneCycleLR;
the data are smaller than the paper's (see :class:`KolmogorovDataSpec` and the solver's docstring).
Default models are sized for a CPU (FactFormer d_model 64, 3 layers, 4 heads of 32); the paper's
KM2D size is ``--set d_model=128 n_layers=4 n_heads=8 head_dim=64``. FNO keeps the paper's 12
modes, capped at grid/2 on small grids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from formers.registry import get, register
from formers.sciml.pde import factformer, fno, grid_softmax, ifactformer  # noqa: F401  (register the models)
from formers.sciml.pde.factformer import PAPER
from formers.sciml.pde.kolmogorov_data import KolmogorovDataSpec, load_or_generate
from formers.sciml.pde.surrogate import (SurrogateConfig, build_surrogate, config_from_dict,
                                         load_surrogate, predict, relative_l2, rollout,
                                         surrogate_config)
from formers.train.config import TrainConfig
from formers.train.distributed import unwrap
from formers.train.task import Task

# CPU-sized defaults of each model variant (fields of its config); t_in / t_out come from the task.
MODEL_SIZES: dict[str, dict[str, Any]] = {
    "factformer": {"d_model": 64, "n_layers": 3, "n_heads": 4, "head_dim": 32},
    "ifactformer-m": {"d_model": 64, "n_heads": 4, "head_dim": 32, "n_iter": 4, "t_out": 1},
    "ifactformer-o": {"d_model": 64, "n_heads": 4, "head_dim": 32, "n_iter": 4, "t_out": 1},
    "softmax": {"d_model": 64, "n_layers": 3, "n_heads": 4, "t_out": 1},
    "fno": {"t_out": 1},
}


def curriculum(step: int, t_out: int, length: int) -> int:
    """Frames predicted at ``step``: 1 + floor((t_out - 1) * step / length), capped at t_out
    (the reference's linear ``CurriculumSampler`` from 1 to t_out)."""
    if t_out <= 1 or length <= 0:
        return t_out
    return 1 + int((t_out - 1) * min(step, length) / length)


@register("task", "kolmogorov", paper=PAPER,
          summary="2-D Kolmogorov flow (generated): next frames, one-step and 16-frame rollout relative L2")
class KolmogorovTask(Task):
    """Kolmogorov-flow surrogate modelling (see the module docstring for the protocol).

    Options:
        grid: N of the N x N field (even, >= 8; default 64). n_train / n_val / n_test: trajectories
            (24 / 4 / 8). n_frames: frames per trajectory (80 = 5 s). record_dt: seconds between
            frames (1/16). burn_in: seconds simulated before frame 0 (2). dt: solver step (1/1024).
            nu: viscosity (1e-3, Re 1000). forcing_wavenumber: n of the forcing -n cos(n y) (8; at
            most grid/3, so 4 on a 16 x 16 grid). data_seed: generator seed.
        t_in: input frames (10). t_out: FactFormer's latent steps per call (4).
        rollout: frames of the rollout metric (16). eval_stride: frames between evaluation windows (8).
        curriculum_length, pushforward_after, pushforward_every: the training schedule (steps;
            pushforward_every 0 = off).
        data: the data directory (``--data DIR``). gen_device: where to run the solver
            (``auto`` = CUDA if available).
    Raises:
        ValueError: bad options (too few frames for t_in + rollout, ...), or data holding NaN,
            before any training.
    """

    metric = "test_rollout_rel_l2"
    select_metric = "val_rollout_rel_l2"
    report_metrics = ("test_one_step_rel_l2", "val_rollout_rel_l2")
    lower_is_better = True
    default_models = ("factformer", "fno", "softmax")

    def __init__(self, seed: int = 0, grid: int = 64, n_train: int = 24, n_val: int = 4, n_test: int = 8,
                 n_frames: int = 80, record_dt: float = 1.0 / 16, burn_in: float = 2.0,
                 dt: float = 1.0 / 1024, nu: float = 1e-3, forcing_wavenumber: int = 8,
                 data_seed: int = 0, t_in: int = 10,
                 t_out: int = 4, rollout: int = 16, eval_stride: int = 8, curriculum_length: int = 200,
                 pushforward_after: int = 300, pushforward_every: int = 3,
                 data: str | list[str] | None = None, gen_device: str = "auto", quiet: bool = False) -> None:
        super().__init__(seed)
        if isinstance(data, (list, tuple)):
            if len(data) != 1:
                raise ValueError(f"kolmogorov task: data takes one folder, got {list(data)}")
            data = data[0]
        for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("t_in", t_in),
                        ("t_out", t_out), ("rollout", rollout), ("eval_stride", eval_stride)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"kolmogorov task: {name} must be an int > 0, got {v!r}")
        for name, v in (("curriculum_length", curriculum_length), ("pushforward_after", pushforward_after),
                        ("pushforward_every", pushforward_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"kolmogorov task: {name} must be an int >= 0, got {v!r}")
        need = max(t_in + 3 * t_out, t_in + rollout)
        if n_frames < need:
            raise ValueError(f"kolmogorov task: n_frames = {n_frames} is too short: t_in + max(3 t_out, "
                             f"rollout) = {need} frames are needed per window")
        if gen_device not in ("auto", "cpu") and not gen_device.startswith("cuda"):
            raise ValueError(f"kolmogorov task: gen_device must be auto, cpu or cuda[:N], got {gen_device!r}")
        self.spec = KolmogorovDataSpec(grid=grid, n_trajectories=n_train + n_val + n_test, n_frames=n_frames,
                                       record_dt=record_dt, burn_in=burn_in, dt=dt, nu=nu,
                                       forcing_wavenumber=forcing_wavenumber, seed=data_seed)
        self.options = {"grid": grid, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                        "n_frames": n_frames, "record_dt": record_dt, "burn_in": burn_in, "dt": dt,
                        "nu": nu, "forcing_wavenumber": forcing_wavenumber, "data_seed": data_seed, "t_in": t_in, "t_out": t_out, "rollout": rollout,
                        "eval_stride": eval_stride, "curriculum_length": curriculum_length,
                        "pushforward_after": pushforward_after, "pushforward_every": pushforward_every,
                        "data": None if data is None else str(data), "gen_device": gen_device}
        self.t_in, self.t_out, self.n_rollout, self.stride = t_in, t_out, rollout, eval_stride
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if gen_device == "auto" else gen_device
        w, self.data_info = load_or_generate(self.spec, data, dev, quiet=quiet)
        train = w[:n_train]
        self.mean, self.std = float(train.mean()), float(train.std())
        w = ((w - self.mean) / self.std).unsqueeze(-1)  # (traj, frames, x, y, 1)
        self.splits = {"train": w[:n_train], "val": w[n_train:n_train + n_val], "test": w[n_train + n_val:]}

    # -------------------------------------------------------------------------------- models
    def model_config(self, variant: str = "factformer") -> SurrogateConfig:
        get("surrogate", variant)  # unknown name -> ValueError listing the registered ones
        fields = {"n_dims": 2, "channels": 1, "t_in": self.t_in, "t_out": self.t_out,
                  **MODEL_SIZES.get(variant, {})}
        if variant == "fno":  # the paper's 12 modes, capped by what the grid holds
            fields["modes"] = min(12, self.spec.grid // 2)
        return surrogate_config(variant, **fields)

    def build_model(self, cfg: SurrogateConfig) -> nn.Module:
        if cfg.n_dims != 2 or cfg.channels != 1 or cfg.t_in != self.t_in:
            raise ValueError(f"kolmogorov task: the model config has n_dims {cfg.n_dims}, channels "
                             f"{cfg.channels}, t_in {cfg.t_in}; the data need 2, 1, {self.t_in}")
        model = build_surrogate(cfg)
        for part in model.modules():  # a grid the model cannot take fails here, before training
            check = getattr(part, "check_grid", None)
            if callable(check):
                check((self.spec.grid, self.spec.grid))
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
        starts = range(0, w.shape[1] - self.t_in - self.n_rollout + 1, self.stride)
        one, roll = [], []
        for i in range(w.shape[0]):
            for s0 in range(0, len(starts), batch_size):
                s = list(starts)[s0:s0 + batch_size]
                win = torch.stack([w[i, t:t + self.t_in + self.n_rollout] for t in s]).to(device)
                pred = rollout(model, win[:, :self.t_in], self.n_rollout).float() * self.std + self.mean
                true = win[:, self.t_in:].float() * self.std + self.mean
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
        return {"task": "kolmogorov", "options": self.options, "data": self.data_info,
                "normalisation": {"mean": self.mean, "std": self.std},
                "trajectories": {k: int(v.shape[0]) for k, v in self.splits.items()}}

