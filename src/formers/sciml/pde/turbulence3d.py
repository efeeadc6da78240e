"""The ``turbulence3d`` task: next-frame prediction of 3-D forced isotropic turbulence (velocity),
the generated stand-in for IFactFormer's channel flow, for the IFactFormer-m vs -o comparison.

``formers compare turbulence3d --models ifactformer-m,ifactformer-o`` trains both on the same data
and budget. Data: the project's 3-D pseudo-spectral solver
(:func:`formers.sciml.pde.navier_stokes_3d.navier_stokes_3d`; 32³, frames 0.1 apart after a 2 s
burn-in, nu 0.03, energy forcing of |k| <= 3), generated on first use into the data directory.
Protocol: the field-forecasting family's (:mod:`formers.sciml.pde.field_task`) with IFactFormer's
setting (Yang, Wang, Wang, arXiv 2412.18840, ``configs/IFactFormer.yml`` and ``main.ipynb``): one
input frame, one output frame, per-channel z-score, relative L2 loss; the rollout metric over 50
steps (the notes' proxy experiment, §3(c)).

Deviations: the paper's data are filtered channel-flow DNS (Re_tau 180, 32 x 33 x 16, walls), not
available offline; this periodic box has no walls, so the paper's wall-bounded statistics (mean
profile, Reynolds stress) do not apply; the axes are 2 pi long (the paper: 4 pi, 2, 4 pi / 3).
Models keep the reference IFactFormer size (d_model 96, 5 heads of 96, 10 iterations), sized for
a GPU.
"""

from __future__ import annotations

import math
from typing import Any

from formers.registry import register
from formers.sciml.pde.field_data import Turbulence3DDataSpec
from formers.sciml.pde.field_task import FieldForecastTask
from formers.sciml.pde.ifactformer import PAPER


@register("task", "turbulence3d", paper=PAPER,
          summary="3-D forced turbulence (generated): next velocity frame, one-step and 50-step rollout relative L2")
class Turbulence3DTask(FieldForecastTask):
    """3-D turbulence surrogate modelling (see the module docstrings for the protocol).

    Options:
        grid: N of the N^3 box (even, >= 8; default 32). n_train / n_val / n_test: trajectories
            (20 / 2 / 4). n_frames: frames per trajectory (80). record_dt: time between frames (0.1).
            burn_in: time simulated before frame 0 (2). dt: solver step (0.01). nu: viscosity (0.03).
            forcing_k: forced band |k| <= forcing_k (3; at most grid/3). data_seed: generator seed.
        t_in / t_out: frames in / out per call (1 / 1). rollout: steps of the rollout metric (50).
        eval_stride: frames between evaluation windows (40).
        curriculum_length, pushforward_after, pushforward_every: as ``kolmogorov`` (pushforward off
            by default: the reference trains on one-step pairs only).
        data, gen_device, quiet: as ``kolmogorov``.
    Raises:
        ValueError: bad options or data holding NaN, before any training.
    """

    name = "turbulence3d"
    n_dims, channels, lengths = 3, 3, (2 * math.pi,)
    default_models = ("ifactformer-m", "ifactformer-o")
    model_sizes: dict[str, dict[str, Any]] = {"factformer": {"t_out": 1}, "softmax": {"t_out": 1},
                                              "fno": {"t_out": 1}}

    def __init__(self, seed: int = 0, grid: int = 32, n_train: int = 20, n_val: int = 2, n_test: int = 4,
                 n_frames: int = 80, record_dt: float = 0.1, burn_in: float = 2.0, dt: float = 0.01,
                 nu: float = 0.03, forcing_k: float = 3.0, data_seed: int = 0, t_in: int = 1,
                 t_out: int = 1, rollout: int = 50, eval_stride: int = 40, curriculum_length: int = 0,
                 pushforward_after: int = 0, pushforward_every: int = 0,
                 data: str | list[str] | None = None, gen_device: str = "auto", quiet: bool = False) -> None:
        super().__init__(seed)
        self.setup(dict(locals()), lambda: Turbulence3DDataSpec(
            grid=grid, n_trajectories=n_train + n_val + n_test, n_frames=n_frames, record_dt=record_dt,
            burn_in=burn_in, dt=dt, nu=nu, forcing_k=forcing_k, seed=data_seed), quiet)
