"""The PDE problems of the PINNsFormer paper, with exact statements, analytic solutions and losses.

Paper: Zhao, Ding, Prakash, "PINNsFormer", arXiv 2307.11833, §4 and Appendix (problem statements);
the losses follow the reference notebooks (``demo/*``), read for understanding only.

Every problem maps a model of registry kind ``pinn`` (input (batch, k, d_in), time last; output
(batch, k, d_out)) to its loss terms and metrics:

* ``convection``: u_t + β u_x = 0, β = 50, x ∈ [0, 2π], t ∈ [0, 1], u(x, 0) = sin x, periodic
  u(0, t) = u(2π, t). Exact u = sin(x − βt). (The reference scores against ``convection.mat``,
  a numerical solution that differs from sin(x − 50t) by up to 0.047; it is not shipped here.)
* ``reaction``: u_t − ρ u (1 − u) = 0, ρ = 5, same domain, u(x, 0) = h(x) = exp(−(x − π)² /
  (2 (π/4)²)), periodic. Exact u = h e^{ρt} / (h e^{ρt} + 1 − h).
* ``wave``: u_tt − 4 u_xx = 0, x, t ∈ [0, 1], u(x, 0) = sin πx + ½ sin 3πx, u_t(x, 0) = 0,
  u(0, t) = u(1, t) = 0. Exact u = sin πx cos 2πt + ½ sin 3πx cos 6πt.
* ``ns``: 2-D incompressible Navier–Stokes, ν = 0.01, the network gives (ψ, p) with u = ψ_y,
  v = −ψ_x (continuity holds by construction); f_u = u_t + u u_x + v u_y + p_x − ν (u_xx + u_yy),
  f_v = v_t + u v_x + v v_y + p_y − ν (v_xx + v_yy). Raissi's cylinder-wake data
  (``cylinder_nektar_wake.mat``) is not available offline, so the observed velocities come from
  the **Taylor–Green vortex**, an exact solution of the same equations: ψ = cos x cos y F,
  u = −cos x sin y F, v = sin x cos y F, p = −¼ (cos 2x + cos 2y) F², F = e^{−2νt}, sampled on
  the cylinder data's layout (x ∈ [1, 8] × y ∈ [−2, 2] on a 100 × 50 grid, t = 0, 0.1, ..., 19.9,
  2500 random points). The reference notebooks compute u_xx as ``grad(u, x, ones_like(u_x))``,
  which is u_x again (likewise u_yy, v_xx, v_yy); that bug is reproduced only with
  ``first_derivative_bug=True``.

Sequential loss (paper §3, reference notebooks): the residual and boundary terms average over all
k pseudo-time points; the initial condition (and, for ``ns``, the velocity data) uses the first
point of each sequence only. Derivatives are taken by autograd with respect to the (batch, k, 1)
coordinate tensors that are fed to the model, as the reference does: for PINNsFormer the
"derivative" at point i therefore also holds ∂u_j/∂t_i of the other points j of the sequence.
Collocation: a uniform grid of ``grid`` x ``grid`` points including the boundaries (51 for
PINNsFormer, 101 for the baselines in the paper); the test grid is 101 x 101 (``ns``: the 100 x 50
spatial grid at t = 10, snapshot 100).

Metrics: rMAE = Σ|u − û| / Σ|u|, rRMSE = sqrt(Σ(u − û)² / Σu²) against the analytic solution.
For ``ns`` the pressure is scored after matching its mean to the exact one (pressure is fixed only up
to a constant by the equations; the reference compares it raw), the velocities as they are.

Deviations: wave's u_t(x, 0) = 0 term uses step 0 only, like every initial-condition term (the
reference averages it over the k points of the t = 0 sequences; the target differs by O(k Δt));
``ns`` uses the Taylor–Green vortex instead of the cylinder wake (above).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from formers.sciml.pde.pinnsformer import pseudo_sequence

Tensor = torch.Tensor


def d(u: Tensor, x: Tensor, grad_outputs: Tensor | None = None) -> Tensor:
    """∂u/∂x by autograd (graph kept for higher derivatives and the weight gradient):
    ``grad(u, x, grad_outputs=ones_like(u))``; u and x: (batch, k, 1)."""
    go = torch.ones_like(u) if grad_outputs is None else grad_outputs
    return torch.autograd.grad(u, x, grad_outputs=go, create_graph=True)[0]


def leaf_columns(seq: Tensor) -> list[Tensor]:
    """The coordinate columns of ``seq`` (batch, k, d_in) as fresh leaves (batch, k, 1) that require
    grad, so residuals can differentiate with respect to each coordinate."""
    return [seq[..., i:i + 1].detach().clone().requires_grad_(True) for i in range(seq.shape[-1])]


def run(model: nn.Module, points: Tensor) -> tuple[list[Tensor], Tensor]:
    """Model output on the pseudo-sequences of ``points`` (n, d_in): (columns, out (n, k, d_out))."""
    cols = leaf_columns(pseudo_sequence(model, points))
    return cols, model(torch.cat(cols, dim=-1))


def relative_errors(pred: Tensor, exact: Tensor) -> dict[str, float]:
    """rMAE = Σ|u − û| / Σ|u| and rRMSE = sqrt(Σ(u − û)² / Σu²)."""
    pred, exact = pred.double().reshape(-1), exact.double().reshape(-1)
    err = pred - exact
    return {"rMAE": float(err.abs().sum() / exact.abs().sum()),
            "rRMSE": float(torch.sqrt((err ** 2).sum() / (exact ** 2).sum()))}


def grid_points(lower: tuple[float, float], upper: tuple[float, float], n_x: int, n_t: int) -> Tensor:
    """(n_t, n_x, 2) points (x, t) of a uniform grid with its boundaries, t-major like the
    reference's ``get_data`` (row 0 is t = lower t, column 0 is x = lower x)."""
    x = torch.linspace(lower[0], upper[0], n_x, dtype=torch.float64)
    t = torch.linspace(lower[1], upper[1], n_t, dtype=torch.float64)
    tt, xx = torch.meshgrid(t, x, indexing="ij")
    return torch.stack([xx, tt], dim=-1).float()


class Problem(ABC):
    """A physics-informed problem: statement, analytic solution, training data, loss, metrics.

    Class attributes: ``name``, ``inputs`` (coordinate names, time last), ``outputs`` (model output
    names), ``dt`` (the paper's pseudo time step for PINNsFormer), ``steps`` (the paper's L-BFGS
    steps), ``statement`` (one line).
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    outputs: ClassVar[tuple[str, ...]] = ("u",)
    dt: ClassVar[float] = 1e-4
    steps: ClassVar[int] = 500
    statement: ClassVar[str]
    metric: ClassVar[str] = "rMAE"
    report_metrics: ClassVar[tuple[str, ...]] = ("rRMSE",)

    @property
    def d_in(self) -> int:
        return len(self.inputs)

    @property
    def d_out(self) -> int:
        return len(self.outputs)

    @abstractmethod
    def exact_output(self, cols: list[Tensor]) -> Tensor:
        """The exact solution in the model's output space as a differentiable torch function of the
        coordinate columns (each (..., 1)): (..., d_out)."""

    @abstractmethod
    def residual(self, cols: list[Tensor], out: Tensor) -> Tensor:
        """The PDE residual(s) of ``out`` (batch, k, d_out), a function of ``cols``: (batch, k, n_eq)."""

    @abstractmethod
    def training_data(self, grid: int, seed: int) -> dict[str, Tensor]:
        """Training points and targets (float32, batch dim first); ``grid`` points per side."""

    @abstractmethod
    def loss_terms(self, model: nn.Module, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """The named scalar loss terms (summed with weight 1 into the training loss)."""

    @abstractmethod
    def metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Errors against the analytic solution on the test set."""


@dataclass
class Problem1D(Problem):
    """A 1-D (x, t) problem on a rectangle; initial condition at t = lower t, boundaries at the two
    x ends. Subclasses give the residual, the initial and boundary terms and the exact solution.

    test_grid: points per side of the test grid (101 in the paper; smaller for smoke tests)."""

    inputs: ClassVar[tuple[str, ...]] = ("x", "t")
    lower: ClassVar[tuple[float, float]] = (0.0, 0.0)
    upper: ClassVar[tuple[float, float]] = (2 * math.pi, 1.0)
    test_grid: int = 101

    def __post_init__(self) -> None:
        if isinstance(self.test_grid, bool) or not isinstance(self.test_grid, int) or self.test_grid < 2:
            raise ValueError(f"{self.name}: test_grid must be an int >= 2, got {self.test_grid!r}")

    def exact(self, x: Tensor, t: Tensor) -> Tensor:
        """u(x, t), any matching shapes (torch, differentiable)."""
        return self.exact_output([x, t])

    def training_data(self, grid: int, seed: int = 0) -> dict[str, Tensor]:
        """``res`` (grid², 2) all grid points, ``ic`` (grid, 2) the t = 0 row, ``bc_lo`` / ``bc_hi``
        (grid, 2) the x = x_min / x = x_max columns (deterministic; ``seed`` unused)."""
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"{self.name}: grid must be an int >= 2 (points per side), got {grid!r}")
        pts = grid_points(self.lower, self.upper, grid, grid)
        return {"res": pts.reshape(-1, 2), "ic": pts[0], "bc_lo": pts[:, 0], "bc_hi": pts[:, -1]}

    def initial_loss(self, cols: list[Tensor], out: Tensor) -> Tensor:
        """MSE of u(x, 0) against the initial condition, on step 0 of each sequence."""
        x0 = cols[0][:, 0]
        return torch.mean((out[:, 0] - self.exact(x0, torch.zeros_like(x0))) ** 2)

    def boundary_loss(self, lo: tuple[list[Tensor], Tensor], hi: tuple[list[Tensor], Tensor]) -> Tensor:
        """Periodic: MSE(u(x_max, t) − u(x_min, t)) over all k steps."""
        return torch.mean((hi[1] - lo[1]) ** 2)

    def loss_terms(self, model: nn.Module, data: dict[str, Tensor]) -> dict[str, Tensor]:
        cols, out = run(model, data["res"])
        ic_cols, ic_out = run(model, data["ic"])
        return {"res": torch.mean(self.residual(cols, out) ** 2),
                "ic": self.initial_loss(ic_cols, ic_out),
                "bc": self.boundary_loss(run(model, data["bc_lo"]), run(model, data["bc_hi"]))}

    def test_points(self) -> Tensor:
        """(test_grid², 2) points of the test grid (101 x 101 in the paper)."""
        return grid_points(self.lower, self.upper, self.test_grid, self.test_grid).reshape(-1, 2)

    @torch.no_grad()
    def metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        pts = self.test_points().to(device)
        pred = model(pseudo_sequence(model, pts))[:, 0, 0]
        return relative_errors(pred.float().cpu(), self.exact(pts[:, 0], pts[:, 1]).cpu())


@dataclass
class Convection(Problem1D):
    """1-D convection u_t + β u_x = 0 (β = 50), u(x, 0) = sin x, periodic on [0, 2π] x [0, 1]."""

    name: ClassVar[str] = "convection"
    statement: ClassVar[str] = "u_t + 50 u_x = 0, u(x,0) = sin x, periodic, x in [0,2pi], t in [0,1]"
    beta: float = 50.0

    def exact_output(self, cols: list[Tensor]) -> Tensor:
        x, t = cols
        return torch.sin(x - self.beta * t)

    def residual(self, cols: list[Tensor], out: Tensor) -> Tensor:
        x, t = cols
        return d(out, t) + self.beta * d(out, x)


@dataclass
class Reaction(Problem1D):
    """1-D reaction u_t − ρ u (1 − u) = 0 (ρ = 5), Gaussian initial condition, periodic."""

    name: ClassVar[str] = "reaction"
    statement: ClassVar[str] = ("u_t - 5 u (1 - u) = 0, u(x,0) = exp(-(x-pi)^2 / (2 (pi/4)^2)), periodic, "
                                "x in [0,2pi], t in [0,1]")
    rho: float = 5.0

    @staticmethod
    def h(x: Tensor) -> Tensor:
        """The initial condition exp(−(x − π)² / (2 (π/4)²))."""
        return torch.exp(-(x - math.pi) ** 2 / (2 * (math.pi / 4) ** 2))

    def exact_output(self, cols: list[Tensor]) -> Tensor:
        x, t = cols
        h, g = self.h(x), torch.exp(self.rho * t)
        return h * g / (h * g + 1 - h)

    def residual(self, cols: list[Tensor], out: Tensor) -> Tensor:
        return d(out, cols[1]) - self.rho * out * (1 - out)


@dataclass
class Wave(Problem1D):
    """1-D wave u_tt − c² u_xx = 0 (c² = 4) on [0, 1]², u(x, 0) = sin πx + ½ sin 3πx,
    u_t(x, 0) = 0, u = 0 at x = 0 and x = 1."""

    name: ClassVar[str] = "wave"
    upper: ClassVar[tuple[float, float]] = (1.0, 1.0)
    steps: ClassVar[int] = 1000
    statement: ClassVar[str] = ("u_tt - 4 u_xx = 0, u(x,0) = sin(pi x) + sin(3 pi x)/2, u_t(x,0) = 0, "
                                "u(0,t) = u(1,t) = 0, x, t in [0,1]")
    c2: float = 4.0

    def exact_output(self, cols: list[Tensor]) -> Tensor:
        x, t = cols
        c = math.sqrt(self.c2)
        return (torch.sin(math.pi * x) * torch.cos(c * math.pi * t)
                + 0.5 * torch.sin(3 * math.pi * x) * torch.cos(3 * c * math.pi * t))

    def residual(self, cols: list[Tensor], out: Tensor) -> Tensor:
        x, t = cols
        return d(d(out, t), t) - self.c2 * d(d(out, x), x)

    def initial_loss(self, cols: list[Tensor], out: Tensor) -> Tensor:
        """MSE of u(x, 0) and of u_t(x, 0) (target 0), both on step 0 of each sequence."""
        u_t = d(out, cols[1])
        return super().initial_loss(cols, out) + torch.mean(u_t[:, 0] ** 2)

    def boundary_loss(self, lo: tuple[list[Tensor], Tensor], hi: tuple[list[Tensor], Tensor]) -> Tensor:
        """Dirichlet: MSE(u(0, t)) + MSE(u(1, t)) over all k steps."""
        return torch.mean(lo[1] ** 2) + torch.mean(hi[1] ** 2)


@dataclass
class NavierStokes(Problem):
    """2-D incompressible Navier–Stokes (ν = 0.01) from observed velocities, network (ψ, p);
    Taylor–Green vortex data on the cylinder-wake layout (see the module docstring).

    first_derivative_bug: reproduce the reference notebooks' viscous term ν (u_x + u_y) (and
    ν (v_x + v_y)) in place of ν (u_xx + u_yy); off by default.
    """

    name: ClassVar[str] = "ns"
    inputs: ClassVar[tuple[str, ...]] = ("x", "y", "t")
    outputs: ClassVar[tuple[str, ...]] = ("psi", "p")
    dt: ClassVar[float] = 1e-2
    steps: ClassVar[int] = 1000
    statement: ClassVar[str] = ("u_t + u u_x + v u_y + p_x - 0.01 (u_xx + u_yy) = 0 (and for v), u = psi_y, "
                                "v = -psi_x; Taylor-Green data on x in [1,8], y in [-2,2], t in [0,19.9]")
    metric: ClassVar[str] = "p_rMAE"
    report_metrics: ClassVar[tuple[str, ...]] = ("p_rRMSE", "u_rRMSE", "v_rRMSE")
    nu: float = 0.01
    first_derivative_bug: bool = False
    n_x: ClassVar[int] = 100
    n_y: ClassVar[int] = 50
    n_t: ClassVar[int] = 200
    snapshot_dt: ClassVar[float] = 0.1
    test_snapshot: ClassVar[int] = 100

    def exact_output(self, cols: list[Tensor]) -> Tensor:
        x, y, t = cols
        f = torch.exp(-2 * self.nu * t)
        psi = torch.cos(x) * torch.cos(y) * f
        p = -0.25 * (torch.cos(2 * x) + torch.cos(2 * y)) * f ** 2
        return torch.cat([psi, p], dim=-1)

    def exact_fields(self, x: Tensor, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        """u, v, p of the Taylor–Green vortex (any matching shapes)."""
        f = torch.exp(-2 * self.nu * t)
        return {"u": -torch.cos(x) * torch.sin(y) * f, "v": torch.sin(x) * torch.cos(y) * f,
                "p": -0.25 * (torch.cos(2 * x) + torch.cos(2 * y)) * f ** 2}

    def velocity(self, cols: list[Tensor], out: Tensor) -> tuple[Tensor, Tensor]:
        """u = ψ_y, v = −ψ_x of the output (batch, k, 2): each (batch, k, 1)."""
        psi = out[..., 0:1]
        return d(psi, cols[1]), -d(psi, cols[0])

    def residual(self, cols: list[Tensor], out: Tensor) -> Tensor:
        x, y, t = cols
        u, v = self.velocity(cols, out)
        p = out[..., 1:2]
        terms = []
        for w in (u, v):
            w_x, w_y = d(w, x), d(w, y)
            if self.first_derivative_bug:  # the reference's grad(w, x, ones_like(w_x)) is w_x again
                lap = w_x + w_y
            else:
                lap = d(w_x, x) + d(w_y, y)
            grad_p = d(p, x) if w is u else d(p, y)
            terms.append(d(w, t) + u * w_x + v * w_y + grad_p - self.nu * lap)
        return torch.cat(terms, dim=-1)

    def _layout(self) -> tuple[Tensor, Tensor, Tensor]:
        xs = torch.linspace(1.0, 8.0, self.n_x, dtype=torch.float64)
        ys = torch.linspace(-2.0, 2.0, self.n_y, dtype=torch.float64)
        ts = torch.arange(self.n_t, dtype=torch.float64) * self.snapshot_dt
        return xs, ys, ts

    def training_data(self, grid: int = 2500, seed: int = 0) -> dict[str, Tensor]:
        """``pts`` (n, 3) random (x, y, t) of the 100 x 50 x 200 layout (n = ``grid``, 2500 in the
        reference; drawn with ``seed``) and the observed ``u``, ``v`` (n, 1) there."""
        xs, ys, ts = self._layout()
        total = self.n_x * self.n_y * self.n_t
        if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= total:
            raise ValueError(f"{self.name}: the number of training points must be an int in [1, {total}], "
                             f"got {grid!r}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(total, generator=g)[:grid]
        i_s, i_t = idx // self.n_t, idx % self.n_t
        x, y, t = xs[i_s % self.n_x], ys[i_s // self.n_x], ts[i_t]
        f = self.exact_fields(x, y, t)
        pts = torch.stack([x, y, t], dim=-1)
        return {"pts": pts.float(), "u": f["u"][:, None].float(), "v": f["v"][:, None].float()}

    def loss_terms(self, model: nn.Module, data: dict[str, Tensor]) -> dict[str, Tensor]:
        cols, out = run(model, data["pts"])
        u, v = self.velocity(cols, out)
        return {"data": torch.mean((u[:, 0] - data["u"]) ** 2) + torch.mean((v[:, 0] - data["v"]) ** 2),
                "res": torch.mean(self.residual(cols, out) ** 2) * 2}  # ‖f_u‖² + ‖f_v‖² (means)

    def metrics(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        xs, ys, ts = self._layout()
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        tt = torch.full_like(xx, float(ts[self.test_snapshot]))
        pts = torch.stack([xx, yy, tt], dim=-1).reshape(-1, 3)
        exact = self.exact_fields(pts[:, 0], pts[:, 1], pts[:, 2])
        with torch.enable_grad():
            cols, out = run(model, pts.float().to(device))
            u, v = self.velocity(cols, out)
        p = out[:, 0, 1].detach().double().cpu()
        p = p - p.mean() + exact["p"].mean()  # pressure is defined up to a constant
        out_m = {f"p_{k}": v_ for k, v_ in relative_errors(p, exact["p"]).items()}
        out_m["u_rRMSE"] = relative_errors(u[:, 0, 0].detach().cpu(), exact["u"])["rRMSE"]
        out_m["v_rRMSE"] = relative_errors(v[:, 0, 0].detach().cpu(), exact["v"])["rRMSE"]
        return out_m


PROBLEMS: dict[str, type[Problem]] = {c.name: c for c in (Convection, Reaction, Wave, NavierStokes)}


def get_problem(name: str, **options: object) -> Problem:
    """The problem ``name`` (``convection``, ``reaction``, ``wave``, ``ns``) with its options
    (``test_grid`` for the 1-D ones, ``first_derivative_bug`` for ``ns``). Raises ValueError for an
    unknown PDE or option."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown PDE {name!r}; known: {sorted(PROBLEMS)}")
    cls = PROBLEMS[name]
    try:
        return cls(**options)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"PDE {name!r} does not take options {sorted(options)}") from None
