"""The ``kolmogorov`` task: next-frame prediction of 2-D Kolmogorov-flow vorticity (FactFormer's
KM2D benchmark at reduced size), with one-step and rollout relative L2.

``formers train kolmogorov --model factformer`` and ``formers compare kolmogorov --models
factformer,fno,softmax``. The data are generated on first use (progress bar) by the project's
pseudo-spectral solver and cached in the data directory (:mod:`formers.sciml.pde.field_data`).
The protocol (curriculum, pushforward, metrics, deviations) is the field-forecasting family's:
:mod:`formers.sciml.pde.field_task`. KM2D specifics (arXiv 2305.17560 §4, ``configs/ns2d_fact_lm.yml``):
frames 1/16 s apart (the reference: 32 frames/s, interval 2), ``t_in`` = 10 input frames,
FactFormer marching ``t_out`` = 4 latent steps per call, the rollout metric over 16 frames.

Deviations beyond the family's: the data are smaller than the paper's (64² generated directly,
36 trajectories of 5 s, against 120 of 10 s simulated at 2048² and stored at 256²); default models
are sized for a CPU (FactFormer d_model 64, 3 layers, 4 heads of 32; the paper's KM2D size is
``--set d_model=128 n_layers=4 n_heads=8 head_dim=64``); FNO keeps the paper's 12 modes, capped
at grid/2 on small grids. On the CPU one FactFormer step at 64², batch 8, takes several seconds:
the default budget (600 steps) is sized for a GPU.
"""

from __future__ import annotations

import math
from typing import Any

from formers.registry import register
from formers.sciml.pde.factformer import PAPER
from formers.sciml.pde.field_data import KolmogorovDataSpec
from formers.sciml.pde.field_task import FieldForecastTask


@register("task", "kolmogorov", paper=PAPER,
          summary="2-D Kolmogorov flow (generated): next frames, one-step and 16-frame rollout relative L2")
class KolmogorovTask(FieldForecastTask):
    """Kolmogorov-flow surrogate modelling (see the module docstrings for the protocol).

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
            (``auto`` = CUDA if available). quiet: no progress bar.
    Raises:
        ValueError: bad options (too few frames for t_in + rollout, forcing outside the band, ...),
            or data holding NaN, before any training.
    """

    name = "kolmogorov"
    n_dims, channels, lengths = 2, 1, (2 * math.pi,)
    default_models = ("factformer", "fno", "softmax")
    model_sizes: dict[str, dict[str, Any]] = {
        "factformer": {"d_model": 64, "n_layers": 3, "n_heads": 4, "head_dim": 32},
        "ifactformer-m": {"d_model": 64, "n_heads": 4, "head_dim": 32, "n_iter": 4, "t_out": 1},
        "ifactformer-o": {"d_model": 64, "n_heads": 4, "head_dim": 32, "n_iter": 4, "t_out": 1},
        "softmax": {"d_model": 64, "n_layers": 3, "n_heads": 4, "t_out": 1},
        "fno": {"t_out": 1},
    }

    def __init__(self, seed: int = 0, grid: int = 64, n_train: int = 24, n_val: int = 4, n_test: int = 8,
                 n_frames: int = 80, record_dt: float = 1.0 / 16, burn_in: float = 2.0,
                 dt: float = 1.0 / 1024, nu: float = 1e-3, forcing_wavenumber: int = 8,
                 data_seed: int = 0, t_in: int = 10, t_out: int = 4, rollout: int = 16,
                 eval_stride: int = 8, curriculum_length: int = 200, pushforward_after: int = 300,
                 pushforward_every: int = 3, data: str | list[str] | None = None,
                 gen_device: str = "auto", quiet: bool = False) -> None:
        super().__init__(seed)
        self.setup(dict(locals()), lambda: KolmogorovDataSpec(
            grid=grid, n_trajectories=n_train + n_val + n_test, n_frames=n_frames, record_dt=record_dt,
            burn_in=burn_in, dt=dt, nu=nu, forcing_wavenumber=forcing_wavenumber, seed=data_seed), quiet)
