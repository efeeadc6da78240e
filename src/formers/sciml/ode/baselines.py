"""Symbolic-regression baselines for ODEBench: SINDy (pysindy) and genetic programming (gplearn),
both fitted to finite-difference derivatives, in the ``fit(t, x) -> system`` form of
:func:`formers.sciml.ode.odebench.run_benchmark`.

Sources: Brunton, Proctor, Kutz, "Discovering governing equations from data by sparse
identification of nonlinear dynamical systems" (PNAS 2016, arXiv 1509.03580); pysindy (de Silva
et al., arXiv 2004.08424); gplearn (Stephens, genetic programming in the style of Koza). Their use
as ODEFormer baselines follows d'Ascoli et al. (arXiv 2310.05573), section 4 and reference
``odeformer/baselines/sindy_wrapper.py``.

* **SINDy**: library = polynomials up to ``degree`` (2, as the reference's default) concatenated
  with ``functions`` of each variable; STLSQ; derivatives by pysindy's finite differences
  (optionally smoothed). A small grid over (threshold, smoother window) is fitted and the
  candidate whose integrated trajectory has the best R² on the observed data is returned (the
  reference grid-searches 108 combinations of threshold, alpha, max_iter, FD order and smoother
  and scores on a held-out part of the trajectory: ours is a reduced grid, see docs/papers.md).
  Default functions are sin, cos, exp: the reference also has log, sqrt and 1/x, which raise on
  the non-positive states most ODEBench trajectories visit.
* **gplearn**: one ``SymbolicRegressor`` per component on ``(x, dx/dt)`` with ``np.gradient``
  (second-order finite differences, irregular grids allowed); the evolved program is converted
  to a system. gplearn's protected ``div``/``inv`` (1 where |denominator| < 0.001) become plain
  division in the returned equations. At most ``max_points`` evenly strided points are used.

Both are optional: ``pip install formers[sci]`` (pysindy 2.1, gplearn 0.4.3, scikit-learn 1.9);
they are imported inside the functions and a missing one raises ImportError naming the extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from formers.sciml.ode import expr
from formers.sciml.ode.metrics import r2_score


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the {package} baseline needs {package}: pip install 'formers[sci]' "
                          f"(or pip install {package})") from e


def _check_trajectory(t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] != t.size or t.size < 3:
        raise ValueError(f"need t (n,) and x (n, dim) with n >= 3, got {t.shape} and {x.shape}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(x))):
        raise ValueError("t and x must be finite")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing")
    return t, x


def trajectory_r2(system, t: np.ndarray, x: np.ndarray, timeout_s: float = 5.0) -> float:
    """R² of ``system`` integrated from ``x[0]`` on ``t`` against ``x`` (-inf on failure)."""
    try:
        y = expr.integrate(system, x[0], t, max_abs=1e8, timeout_s=timeout_s)
    except ValueError:
        return float("-inf")
    return r2_score(x, y)


# ----------------------------------------------------------------------------- SINDy

@dataclass
class SINDyConfig:
    """degree: polynomial degree; functions: extra library functions (sin, cos, exp, log, sqrt,
    inv); thresholds / smoother_windows: the grid (window None = no smoothing); alpha: ridge
    strength of STLSQ."""

    degree: int = 2
    functions: tuple[str, ...] = ("sin", "cos", "exp")
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.15)
    smoother_windows: tuple[int | None, ...] = (None, 15)
    alpha: float = 0.05

    def __post_init__(self) -> None:
        allowed = ("sin", "cos", "exp", "log", "sqrt", "inv")
        bad = [f for f in self.functions if f not in allowed]
        if bad:
            raise ValueError(f"SINDyConfig.functions: unknown {bad}; allowed: {allowed}")
        if self.degree < 1:
            raise ValueError(f"SINDyConfig.degree={self.degree}: must be >= 1")
        if not self.thresholds or any(th < 0 for th in self.thresholds):
            raise ValueError(f"SINDyConfig.thresholds={self.thresholds}: need at least one, all >= 0")


# plain functions (pysindy reads their __code__ for the arity; numpy ufuncs have none)
_NP_FUNCS = {"sin": lambda u: np.sin(u), "cos": lambda u: np.cos(u), "exp": lambda u: np.exp(u),
             "log": lambda u: np.log(u), "sqrt": lambda u: np.sqrt(u), "inv": lambda u: 1.0 / u}
_NAME = {"sin": "sin({})", "cos": "cos({})", "exp": "exp({})", "log": "log({})",
         "sqrt": "sqrt({})", "inv": "1/({})"}


def _sindy_model(ps, cfg: SINDyConfig, threshold: float, window: int | None, n_points: int):
    libs = [ps.PolynomialLibrary(degree=cfg.degree, include_interaction=True, include_bias=True)]
    if cfg.functions:
        libs.append(ps.CustomLibrary(
            library_functions=[_NP_FUNCS[f] for f in cfg.functions],
            function_names=[(lambda fmt: (lambda v: fmt.format(v)))(_NAME[f]) for f in cfg.functions]))
    lib = ps.ConcatLibrary(libs) if len(libs) > 1 else libs[0]
    if window is not None and window < n_points:
        diff = ps.SmoothedFiniteDifference(smoother_kws={"window_length": window})
    else:
        diff = ps.FiniteDifference()
    return ps.SINDy(optimizer=ps.STLSQ(threshold=threshold, alpha=cfg.alpha), feature_library=lib,
                    differentiation_method=diff)


def _sindy_system(model, dim: int):
    names = model.get_feature_names()
    coefs = np.asarray(model.coefficients())
    comps = []
    for d in range(dim):
        terms = [f"({float(c)!r})*({_feature(n)})" for c, n in zip(coefs[d], names) if c != 0.0]
        comps.append(" + ".join(terms) if terms else "0")
    return expr.parse(" | ".join(comps))


def _feature(name: str) -> str:
    """pysindy feature name ('x_0^2 x_1', '1', 'sin(x_0)') -> sympy syntax."""
    return "*".join(f.replace("^", "**") for f in name.split(" ") if f)


def sindy_fit(t: np.ndarray, x: np.ndarray, cfg: SINDyConfig | None = None) -> tuple[expr.Node, ...]:
    """Fit SINDy over the config's grid; the candidate with the best trajectory R² wins.

    ``t (n,)``, ``x (n, dim)``; returns a system of ``dim`` components.

    Raises:
        ImportError: pysindy missing. ValueError: bad trajectory; RuntimeError: every grid
            point failed to fit.
    """
    ps = _require("pysindy", "pysindy")
    cfg = cfg or SINDyConfig()
    t, x = _check_trajectory(t, x)
    names = [f"x_{j}" for j in range(x.shape[1])]
    best, best_r2, errors = None, float("-inf"), []
    seen = set()
    for window in cfg.smoother_windows:
        for th in cfg.thresholds:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = _sindy_model(ps, cfg, th, window, t.size)
                    model.fit(x, t=t, feature_names=names)
                system = _sindy_system(model, x.shape[1])
            except Exception as e:  # noqa: BLE001 - a grid point that fails is skipped
                errors.append(f"{type(e).__name__}: {e}")
                continue
            if system in seen:
                continue
            seen.add(system)
            r2 = trajectory_r2(system, t, x)
            if best is None or r2 > best_r2:
                best, best_r2 = system, r2
    if best is None:
        raise RuntimeError(f"SINDy failed at every grid point: {errors[:2]}")
    return best


# ----------------------------------------------------------------------------- gplearn

@dataclass
class GPConfig:
    """gplearn ``SymbolicRegressor`` settings (per component) and the point budget."""

    population_size: int = 500
    generations: int = 10
    function_set: tuple[str, ...] = ("add", "sub", "mul", "div", "sin", "cos", "neg", "inv")
    parsimony_coefficient: float = 0.001
    max_points: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        allowed = ("add", "sub", "mul", "div", "sin", "cos", "tan", "neg", "inv", "abs", "sqrt", "log")
        bad = [f for f in self.function_set if f not in allowed]
        if bad:
            raise ValueError(f"GPConfig.function_set: unsupported {bad}; allowed: {allowed}")
        if self.population_size < 2 or self.generations < 1 or self.max_points < 3:
            raise ValueError("GPConfig: need population_size >= 2, generations >= 1, max_points >= 3; got "
                             f"{self.population_size}, {self.generations}, {self.max_points}")


def _program_to_sympy(program: str, dim: int):
    import sympy as sp

    xs = [sp.Symbol(f"x_{j}", real=True) for j in range(dim)]
    local = {f"X{j}": xs[j] for j in range(dim)}
    local.update(add=lambda a, b: a + b, sub=lambda a, b: a - b, mul=lambda a, b: a * b,
                 div=lambda a, b: a / b, neg=lambda a: -a, inv=lambda a: 1 / a, sin=sp.sin,
                 cos=sp.cos, tan=sp.tan, abs=sp.Abs, sqrt=lambda a: sp.sqrt(sp.Abs(a)),
                 log=lambda a: sp.log(sp.Abs(a)))
    return sp.sympify(program, locals=local)


def gplearn_fit(t: np.ndarray, x: np.ndarray, cfg: GPConfig | None = None) -> tuple[expr.Node, ...]:
    """One gplearn regressor per component on finite-difference derivatives.

    ``t (n,)``, ``x (n, dim)``; returns a system of ``dim`` components.

    Raises:
        ImportError: gplearn missing. ValueError: bad trajectory.
    """
    gp = _require("gplearn.genetic", "gplearn")
    cfg = cfg or GPConfig()
    t, x = _check_trajectory(t, x)
    dx = np.gradient(x, t, axis=0, edge_order=2)
    idx = np.unique(np.linspace(0, t.size - 1, min(cfg.max_points, t.size)).round().astype(int))
    comps = []
    for d in range(x.shape[1]):
        reg = gp.SymbolicRegressor(population_size=cfg.population_size, generations=cfg.generations,
                                   function_set=cfg.function_set,
                                   parsimony_coefficient=cfg.parsimony_coefficient,
                                   random_state=cfg.seed + d, n_jobs=1, verbose=0)
        reg.fit(x[idx], dx[idx, d])
        comps.append(_program_to_sympy(str(reg._program), x.shape[1]))
    return expr.from_sympy(comps)


# ----------------------------------------------------------------------------- registry

BASELINES: dict[str, tuple[Callable, type]] = {"sindy": (sindy_fit, SINDyConfig), "gplearn": (gplearn_fit, GPConfig)}


def get_baseline(name: str, **options) -> Callable[[np.ndarray, np.ndarray], tuple[expr.Node, ...]]:
    """``fit(t, x) -> system`` for baseline ``name`` (``sindy``, ``gplearn``) with config options.

    The library is imported here, so a missing extra fails before any work and its import time
    is not charged to the first fit.

    Raises:
        ValueError: unknown name or option. ImportError: the baseline's package is missing.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; available: {sorted(BASELINES)}")
    fn, cfg_cls = BASELINES[name]
    fields = set(cfg_cls.__dataclass_fields__)
    bad = sorted(set(options) - fields)
    if bad:
        raise ValueError(f"{name}: unknown option(s) {bad}; allowed: {sorted(fields)}")
    cfg = cfg_cls(**options)
    _require(*{"sindy": ("pysindy", "pysindy"), "gplearn": ("gplearn.genetic", "gplearn")}[name])  # fail early

    def fit(t: np.ndarray, x: np.ndarray) -> tuple[expr.Node, ...]:
        return fn(t, x, cfg)

    fit.__name__ = name
    return fit
