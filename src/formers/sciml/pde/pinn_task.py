"""The physics-informed tasks: ``pinn-convection``, ``pinn-reaction``, ``pinn-wave``, ``pinn-ns`` and
the generic ``pinn`` (``--opt pde=NAME``), with the PINNsFormer paper's protocol.

``formers train pinn-reaction --model pinnsformer`` (or ``--model pinn|qres|fls``) and
``formers compare pinn-reaction --models pinn,pinnsformer``. Models are registry kind ``pinn``
(:mod:`formers.sciml.pde.pinnsformer`, :mod:`formers.sciml.pde.pinn_baselines`); the problems,
losses and metrics are :mod:`formers.sciml.pde.pinn_problems`.

Protocol (arXiv 2307.11833 §4, reference notebooks ``demo/*``):

* full-batch training on fixed collocation points: a uniform ``grid`` x ``grid`` grid with its
  boundaries, 51 x 51 for PINNsFormer and 101 x 101 for the baselines when ``grid`` is not given
  (``pinn-ns``: 2500 random points of the 100 x 50 x 200 layout);
* loss = residual + initial + boundary terms with weight 1 (``pinn-ns``: velocity data + residuals);
* L-BFGS with the strong-Wolfe line search, lr 1, 20 iterations per step (torch defaults otherwise,
  history 100), 500 steps (1000 for wave and ns); fp32; evaluation (rMAE, rRMSE on the 101 x 101
  test grid) and a checkpoint every 50 steps. ``--optimizer adamw --lr 1e-3`` trains with Adam
  instead (weight decay 0 here).

Per-problem model sizes as the notebooks: QRes is 512 wide with 2 layers on convection (256 / 4
elsewhere); PINNsFormer's Δt is 1e-4 (1e-2 for ns). ``eval_batches`` and ``batch_size`` are
unused (the whole test grid is scored; the batch is every collocation point).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from formers.registry import register
from formers.sciml.pde import pinn_baselines  # noqa: F401  (registers pinn, qres, fls)
from formers.sciml.pde.pinn_problems import PROBLEMS, NavierStokes, get_problem
from formers.sciml.pde.pinnsformer import PAPER, PINNConfig, build_pinn, load_pinn, pinn_config, pinn_config_from_dict
from formers.train.config import TrainConfig
from formers.train.task import Task

# the reference notebooks' per-problem sizes where they differ from the config defaults
MODEL_SIZES: dict[tuple[str, str], dict[str, Any]] = {("convection", "qres"): {"d_hidden": 512, "n_layers": 2}}
PAPER_GRID = {"pinnsformer": 51}  # collocation points per side; every other model: 101
DEFAULT_GRID = 101


@register("task", "pinn", paper=PAPER,
          summary="physics-informed PDE solving (--opt pde=convection|reaction|wave|ns); rMAE, rRMSE")
class PINNTask(Task):
    """Solve one PDE of the PINNsFormer paper with a ``pinn`` model; metrics against the exact solution.

    Options:
        pde: ``convection``, ``reaction`` (default), ``wave`` or ``ns``.
        grid: collocation points per side of the uniform grid (1-D problems) or the number of random
            points (``ns``); None = the paper's (51 for PINNsFormer, 101 for the baselines; ns 2500).
        first_derivative_bug: ``ns`` only: the reference notebooks' viscous term ν (u_x + u_y).
        test_grid: 1-D PDEs: points per side of the test grid (101, the paper's; smaller for smoke runs).

    Raises:
        ValueError: an unknown PDE, a grid below 2 (or outside [1, 10^6] points for ns), an option the
            PDE does not take, or a model config whose d_in / d_out do not fit the PDE.
    """

    metric = "rMAE"
    report_metrics = ("rRMSE",)
    lower_is_better = True
    default_models = ("pinn", "qres", "fls", "pinnsformer")

    def __init__(self, seed: int = 0, pde: str = "reaction", grid: int | None = None,
                 first_derivative_bug: bool = False, test_grid: int = 101) -> None:
        super().__init__(seed)
        if not isinstance(pde, str) or pde not in PROBLEMS:
            raise ValueError(f"pinn task: unknown PDE {pde!r}; known: {sorted(PROBLEMS)}")
        if not isinstance(first_derivative_bug, bool):
            raise ValueError(f"pinn task: first_derivative_bug must be true or false, got {first_derivative_bug!r}")
        if first_derivative_bug and pde != "ns":
            raise ValueError(f"pinn task: first_derivative_bug applies to pde 'ns' only, not {pde!r}")
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 2):
            raise ValueError(f"pinn task: grid must be an int >= 2 or None (the paper's), got {grid!r}")
        if pde == "ns" and test_grid != 101:
            raise ValueError("pinn task: test_grid applies to the 1-D PDEs; ns is scored on its 100 x 50 snapshot")
        self.options = self._options(pde, grid, first_derivative_bug, test_grid)
        self.problem = get_problem(pde, **({"first_derivative_bug": first_derivative_bug} if pde == "ns"
                                           else {"test_grid": test_grid}))
        self.metric = self.problem.metric
        self.report_metrics = self.problem.report_metrics
        self.grid = grid
        self._data: dict[str, torch.Tensor] | None = None
        if grid is not None:  # check the size now, before any model is built
            self._data = self.problem.training_data(grid, seed)

    def _options(self, pde: str, grid: int | None, first_derivative_bug: bool, test_grid: int) -> dict[str, Any]:
        """The options that rebuild this task through ``make_task`` (named tasks drop ``pde``)."""
        return {"pde": pde, "grid": grid, "first_derivative_bug": first_derivative_bug, "test_grid": test_grid}

    # ------------------------------------------------------------------------------ models
    def model_config(self, variant: str = "pinnsformer") -> PINNConfig:
        fields: dict[str, Any] = {"d_in": self.problem.d_in, "d_out": self.problem.d_out}
        if variant == "pinnsformer":
            fields["dt"] = self.problem.dt
        fields.update(MODEL_SIZES.get((self.problem.name, variant), {}))
        return pinn_config(variant, **fields)

    def build_model(self, cfg: PINNConfig) -> nn.Module:
        if not isinstance(cfg, PINNConfig):
            raise TypeError(f"pinn task: expected a pinn model config, got {type(cfg).__name__}")
        if (cfg.d_in, cfg.d_out) != (self.problem.d_in, self.problem.d_out):
            raise ValueError(f"pinn task: PDE {self.problem.name!r} has {self.problem.d_in} inputs "
                             f"{self.problem.inputs} and {self.problem.d_out} outputs {self.problem.outputs}; "
                             f"the model config has d_in = {cfg.d_in}, d_out = {cfg.d_out}")
        if self.grid is None:  # the paper's collocation for this model
            self._data = self.problem.training_data(self.paper_grid(cfg.model), self.seed)
        return build_pinn(cfg)

    def paper_grid(self, model: str) -> int:
        """The reference's collocation size for ``model`` (points per side; ns: random points)."""
        if isinstance(self.problem, NavierStokes):
            return 2500
        return PAPER_GRID.get(model, DEFAULT_GRID)

    def config_from_dict(self, data: dict[str, Any]) -> PINNConfig:
        return pinn_config_from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        return load_pinn(folder)

    # ------------------------------------------------------------------------------ budget
    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=self.problem.steps, batch_size=1, optimizer="lbfgs", lr=1.0,
                           warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, grad_clip=0.0,
                           beta1=0.9, beta2=0.999, eval_every=50, eval_batches=1,
                           checkpoint_every=50, dtype="fp32")

    # ------------------------------------------------------------------------------ data, loss
    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Every collocation point (full batch, the same at every step)."""
        if self._data is None:
            self._data = self.problem.training_data(self.paper_grid(""), self.seed)
        return dict(self._data)

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(sum(v.shape[0] for k, v in batch.items() if v.shape[-1] == self.problem.d_in))

    def loss_terms(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The problem's named loss terms on ``batch``."""
        return self.problem.loss_terms(model, batch)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.loss_terms(model, batch).values())  # type: ignore[return-value]

    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        return self.problem.metrics(model, device)

    def describe(self) -> dict[str, Any]:
        return {"options": self.options, "pde": self.problem.name, "statement": self.problem.statement,
                "inputs": list(self.problem.inputs), "outputs": list(self.problem.outputs),
                "data": "analytic (generated)"}


def _named(pde: str, summary: str) -> type[PINNTask]:
    """A task fixed to one PDE (options: ``grid``; 1-D: ``test_grid``; ns: ``first_derivative_bug``)."""

    if pde == "ns":
        class Named(PINNTask):
            def __init__(self, seed: int = 0, grid: int | None = None, first_derivative_bug: bool = False) -> None:
                super().__init__(seed, pde, grid, first_derivative_bug)

            def _options(self, pde: str, grid: int | None, bug: bool, test_grid: int) -> dict[str, Any]:
                return {"grid": grid, "first_derivative_bug": bug}
    else:
        class Named(PINNTask):  # type: ignore[no-redef]
            def __init__(self, seed: int = 0, grid: int | None = None, test_grid: int = 101) -> None:
                super().__init__(seed, pde, grid, test_grid=test_grid)

            def _options(self, pde: str, grid: int | None, bug: bool, test_grid: int) -> dict[str, Any]:
                return {"grid": grid, "test_grid": test_grid}

    Named.__name__ = Named.__qualname__ = f"PINN{pde.capitalize()}Task"
    Named.__doc__ = f"{summary}\n\n{PROBLEMS[pde].__doc__}\n\nOptions and errors: see :class:`PINNTask`."
    return register("task", f"pinn-{pde}", paper=PAPER, summary=summary)(Named)


PINNConvectionTask = _named("convection", "1-D convection (beta = 50), PINNsFormer protocol; rMAE, rRMSE")
PINNReactionTask = _named("reaction", "1-D reaction (rho = 5), PINNsFormer protocol; rMAE, rRMSE")
PINNWaveTask = _named("wave", "1-D wave (c^2 = 4), PINNsFormer protocol; rMAE, rRMSE")
PINNNsTask = _named("ns", "2-D Navier-Stokes, Taylor-Green data (nu = 0.01), (psi, p) network; p_rMAE")
