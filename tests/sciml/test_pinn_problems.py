"""The PINNsFormer problems: exact solutions, residuals, the sequential loss and the NS compatibility
option (arXiv 2307.11833 §4 and the reference notebooks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formers.sciml.pde.pinn_problems import (PROBLEMS, NavierStokes, Reaction, Wave, get_problem,
                                             leaf_columns, relative_errors)
from formers.sciml.pde.pinnsformer import make_time_sequence

torch.set_num_threads(1)


def random_columns(problem, n=64, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, problem.d_in, generator=g, dtype=torch.float64) * 3
    return leaf_columns(make_time_sequence(pts, k, 0.01))


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_residual_vanishes_on_the_exact_solution_only(name):
    p = get_problem(name)
    cols = random_columns(p)
    exact = p.exact_output(cols)
    assert exact.shape == (64, 3, p.d_out)
    assert p.residual(cols, exact).abs().max() < 1e-10
    bumped = exact + 0.05 * torch.sin(cols[0]) * cols[-1] ** 2  # smooth, and no solution of any of the PDEs
    assert p.residual(cols, bumped).abs().mean() > 1e-3


def test_exact_solutions_against_their_formulas():
    x = torch.linspace(0, 2 * math.pi, 41, dtype=torch.float64)[:, None]
    t = torch.linspace(0, 1, 41, dtype=torch.float64)[None, :]
    h = torch.exp(-(x - math.pi) ** 2 / (2 * (math.pi / 4) ** 2))
    want = h * torch.exp(5 * t) / (h * torch.exp(5 * t) + 1 - h)
    assert torch.allclose(Reaction().exact(x, t), want, atol=1e-12, rtol=0)
    assert torch.allclose(Reaction().exact(x, 0 * t), h.expand(41, 41), atol=1e-12, rtol=0)
    xw = x / (2 * math.pi)
    want_w = torch.sin(math.pi * xw) * torch.cos(2 * math.pi * t) + 0.5 * torch.sin(3 * math.pi * xw) * torch.cos(6 * math.pi * t)
    assert torch.allclose(Wave().exact(xw, t), want_w, atol=1e-12, rtol=0)
    assert Wave().exact(torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.3, 0.3], dtype=torch.float64)).abs().max() < 1e-12
    assert torch.allclose(get_problem("convection").exact(x, t), torch.sin(x - 50 * t), atol=1e-12)


def test_ns_first_derivative_bug_changes_the_residual_exactly_as_the_reference():
    correct, buggy = NavierStokes(), NavierStokes(first_derivative_bug=True)
    cols = random_columns(correct, n=32, k=2)
    x, y, t = cols
    out = correct.exact_output(cols)
    diff = buggy.residual(cols, out) - correct.residual(cols, out)
    # by hand for Taylor-Green: the bug replaces nu (w_xx + w_yy) = -2 nu w with nu (w_x + w_y)
    f = torch.exp(-2 * 0.01 * t)
    u, v = -torch.cos(x) * torch.sin(y) * f, torch.sin(x) * torch.cos(y) * f
    u_x, u_y = torch.sin(x) * torch.sin(y) * f, -torch.cos(x) * torch.cos(y) * f
    v_x, v_y = torch.cos(x) * torch.cos(y) * f, -torch.sin(x) * torch.sin(y) * f
    want = torch.cat([-0.01 * (u_x + u_y) - 0.02 * u, -0.01 * (v_x + v_y) - 0.02 * v], dim=-1)
    assert torch.allclose(diff, want, atol=1e-12, rtol=0)
    assert diff.abs().max() > 1e-3


class Fake(nn.Module):
    """u = exact(x, t) + bump at pseudo-steps >= ``from_step`` (a function of each point's own time)."""

    def __init__(self, problem, k=4, dt=1e-3, bump=0.0, from_step=1):
        super().__init__()
        self.problem, self.bump, self.from_step = problem, bump, from_step
        self.cfg = type("Cfg", (), {"k": k, "dt": dt})()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        cols = [x[..., i:i + 1] for i in range(x.shape[-1])]
        mask = (torch.arange(x.shape[1]) >= self.from_step).to(x.dtype)[None, :, None]
        return self.problem.exact_output(cols) + self.bump * mask * torch.cos(3 * cols[-1]) + 0 * self.w


@pytest.mark.parametrize("name", ["convection", "reaction", "wave"])
def test_initial_condition_on_step_zero_only_residual_and_boundary_on_all(name):
    p = get_problem(name)
    data = {k: v.double() for k, v in p.training_data(9).items()}
    clean = p.loss_terms(Fake(p), data)
    assert all(v.abs() < 1e-8 for v in clean.values()), clean
    later = p.loss_terms(Fake(p, bump=0.1, from_step=1), data)  # steps 1..k-1 perturbed
    assert later["ic"].abs() < 1e-8
    assert later["res"] > 1e-4
    first = p.loss_terms(Fake(p, bump=0.1, from_step=0), data)  # every step perturbed, step 0 too
    assert first["ic"] > 1e-4
    if name == "wave":  # Dirichlet: a bump at x = 0 and 1 breaks the boundary term on steps >= 1
        assert later["bc"] > 1e-4


def test_training_data_layout():
    p = get_problem("reaction")
    d = p.training_data(51)
    assert d["res"].shape == (51 * 51, 2) and d["ic"].shape == (51, 2)
    assert torch.all(d["ic"][:, 1] == 0) and torch.all(d["bc_lo"][:, 0] == 0)
    assert torch.allclose(d["bc_hi"][:, 0], torch.full((51,), 2 * math.pi))
    assert torch.allclose(d["bc_lo"][:, 1], torch.linspace(0, 1, 51))
    ns = NavierStokes().training_data(2500, seed=0)
    assert ns["pts"].shape == (2500, 3) and ns["u"].shape == (2500, 1)
    assert torch.equal(ns["pts"], NavierStokes().training_data(2500, seed=0)["pts"])
    f = NavierStokes().exact_fields(*ns["pts"].double().unbind(-1))
    assert torch.allclose(ns["u"][:, 0].double(), f["u"], atol=1e-6)
    with pytest.raises(ValueError, match="grid must be"):
        p.training_data(1)


def test_relative_errors_by_hand():
    e = relative_errors(torch.tensor([1.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, 3.0]))
    assert math.isclose(e["rMAE"], 2 / 5) and math.isclose(e["rRMSE"], math.sqrt(2 / 11))


def test_unknown_pde_and_options():
    with pytest.raises(ValueError, match="unknown PDE 'heat'"):
        get_problem("heat")
    with pytest.raises(ValueError, match="does not take"):
        get_problem("reaction", first_derivative_bug=True)
