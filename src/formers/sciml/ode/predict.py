"""Symbolic inference with a trained ODEFormer: trajectory -> candidate systems -> the one whose
integrated trajectory fits the data best (R²), in the data's own units.

Source: ODEFormer (arXiv 2310.05573), §3 "Inference" and the reference
``model/sklearn_wrapper.py`` / ``model/utils_wrapper.py``:

1. the trajectory is rescaled (time min-max mapped to [1, 10], each component divided by its
   value at the earliest time; :class:`formers.sciml.ode.codec.Rescaling`) and tokenised, one
   encoder token per point;
2. candidates are decoded by beam search or by sampling (:mod:`formers.sciml.ode.search`);
3. each candidate that parses into a system of the right dimension is mapped back to the
   original units (``Rescaling.unscale_system``, exact), integrated from the earliest
   observation on the observed times, and scored by R² (zero-clipped, variance-weighted over
   components; a failed integration scores 0);
4. the best candidate is kept. Optionally (``refine=True``, a documented extra as in the paper's
   appendix) its constants are refined by BFGS (scipy) on the trajectory's mean squared error,
   and the refined system is kept only if its R² is higher.

Deviations: the reference cuts a long trajectory into random bags of 10,000 points and decodes
each; here the whole trajectory is one bag (``max_points`` caps it by uniform thinning).
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from formers.config import Config, check_choice
from formers.sciml.ode import expr, tokens
from formers.sciml.ode.codec import Rescaling

System = tuple[expr.Node, ...]


@dataclass
class DecodeConfig(Config):
    """How candidates are decoded and chosen.

    method: ``beam`` (beam search, length penalty 1, early stopping) or ``sampling`` (the
        reference README's choice: ``beam_size`` samples at ``temperature``).
    beam_size: beams or samples (paper: 50 for sampling; its evaluation sweeps 1, 10, 50).
    temperature: sampling temperature (paper README: 0.1); unused by beam search.
    max_len: new tokens per candidate (None = the model's max_output_len - 1).
    rescale: apply the inference-time rescaling (paper default: on).
    refine: BFGS refinement of the chosen system's constants (extra; needs scipy).
    max_points: use at most this many points (uniformly thinned beyond it).
    seed: sampling seed.
    Raises ValueError naming the field for a bad value.
    """

    method: Literal["beam", "sampling"] = "sampling"
    beam_size: int = 10
    temperature: float = 0.1
    max_len: int | None = None
    rescale: bool = True
    refine: bool = False
    max_points: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("DecodeConfig", "method", self.method, ("beam", "sampling"))
        if self.beam_size < 1:
            raise ValueError(f"DecodeConfig.beam_size must be >= 1, got {self.beam_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"DecodeConfig.temperature must be a finite number > 0, got {self.temperature}")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"DecodeConfig.max_len must be >= 1 or None, got {self.max_len}")
        if self.max_points < 2:
            raise ValueError(f"DecodeConfig.max_points must be >= 2, got {self.max_points}")


@dataclass
class Fit:
    """The result of :func:`fit_system`: ``system`` (original units), its ``r2`` on the data, and
    every parsed ``candidates`` as (system, r2) pairs in decoding order (original units)."""

    system: System | None
    r2: float
    candidates: list[tuple[System, float]] = field(default_factory=list)
    refined: bool = False

    def equations(self) -> str:
        """Readable equations (``x_0' = ...``, one line per component), or a note when none parsed."""
        return expr.to_str(self.system) if self.system is not None else (
            "(no decoded candidate parsed into a system of this dimension: an undertrained model?)")


def check_trajectory(t: Any, x: Any, max_dimension: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one observed trajectory before any work: ``t (n,)``, ``x (n, dim)`` (a 1-D ``x`` is
    one component). Returns float64 arrays.

    Raises:
        ValueError: NaN/inf, fewer than 2 points, time not strictly increasing, shapes that
            disagree, no state column, or more components than ``max_dimension``.
    """
    t = np.asarray(t, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if t.ndim != 1 or x.ndim != 2 or x.shape[0] != t.shape[0]:
        raise ValueError(f"t must be (n,) and x (n, dim) with the same n, got {t.shape} and {x.shape}")
    if x.shape[1] < 1:
        raise ValueError("the trajectory has no state column")
    if t.shape[0] < 2:
        raise ValueError(f"the trajectory has {t.shape[0]} point(s); at least 2 are needed")
    bad = ~np.isfinite(np.c_[t, x])
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        what = "time" if col == 0 else f"state column {col - 1}"
        raise ValueError(f"the trajectory has {int(bad.sum())} NaN/inf value(s), first in row {row} ({what})")
    steps = np.diff(t)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0))
        raise ValueError(f"time must be strictly increasing; t[{i + 1}] = {t[i + 1]} follows t[{i}] = {t[i]}")
    if max_dimension is not None and x.shape[1] > max_dimension:
        raise ValueError(f"the trajectory has {x.shape[1]} state columns; the model reads at most "
                         f"max_dimension = {max_dimension}")
    return t, x


def r2_of(system: System, t: np.ndarray, x: np.ndarray) -> float:
    """R² (zero-clipped, variance-weighted) of ``system`` integrated from ``x[0]`` on ``t`` against
    ``x``; 0 when integration fails (the paper's ``r2_zero``)."""
    from formers.sciml.ode import metrics

    try:
        pred = expr.integrate(system, x[0], t, timeout_s=2.0)
    except ValueError:
        return 0.0
    return float(metrics.r2_zero(x, pred))


def _candidates(model, points: torch.Tensor, dim: int, cfg: DecodeConfig) -> list[System]:
    from formers.sciml.ode.search import beam_search, sample

    mcfg = model.cfg
    max_len = cfg.max_len or mcfg.max_output_len - 1
    if cfg.method == "beam":
        seqs = [ids for _, ids in beam_search(model, points, tokens.BOS, tokens.EOS, cfg.beam_size, max_len)]
    else:
        g = torch.Generator(device=points.device).manual_seed(cfg.seed)
        seqs = sample(model, points, tokens.BOS, tokens.EOS, cfg.beam_size, cfg.temperature, max_len, g)
    out, seen = [], set()
    for ids in seqs:
        try:
            s = tokens.decode_system(ids, mcfg.max_dimension, dim=dim)
        except ValueError:
            continue
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def fit_system(model, t: Any, x: Any, cfg: DecodeConfig | None = None) -> Fit:
    """Discover ``x' = f(x)`` from one trajectory with a trained ODEFormer.

    Args:
        model: an :class:`~formers.sciml.ode.model.ODEFormer`.
        t: (n,) strictly increasing times (any units). x: (n, dim) states (or (n,) for dim 1).
        cfg: decoding settings (:class:`DecodeConfig`).
    Returns:
        :class:`Fit` with the best system in the data's units and its R² on the data.
    Raises:
        ValueError: a bad trajectory (see :func:`check_trajectory`), checked before any work.
    """
    cfg = cfg or DecodeConfig()
    t, x = check_trajectory(t, x, model.cfg.max_dimension)
    if t.shape[0] > cfg.max_points:
        keep = np.unique(np.linspace(0, t.shape[0] - 1, cfg.max_points).round().astype(int))
        t_in, x_in = t[keep], x[keep]
    else:
        t_in, x_in = t, x
    scaler = Rescaling.fit(t_in, x_in) if cfg.rescale else None
    t_s, x_s = scaler.transform(t_in, x_in) if scaler else (t_in, x_in)
    dev = next(model.parameters()).device
    points = torch.from_numpy(tokens.encode_points(t_s, x_s, model.cfg.max_dimension))[None].to(dev)
    found = _candidates(model, points, x.shape[1], cfg)
    scored = []
    for s in found:
        s = tuple(scaler.unscale_system(s)) if scaler else s
        scored.append((s, r2_of(s, t, x)))
    if not scored:
        return Fit(None, 0.0, [])
    best, best_r2 = max(scored, key=lambda c: c[1])  # max keeps the first of equal scores
    result = Fit(best, best_r2, scored)
    if cfg.refine:
        refined = refine_constants(best, t, x)
        r2 = r2_of(refined, t, x)
        if r2 > best_r2:
            result.system, result.r2, result.refined = refined, r2, True
    return result


def _constants(n: expr.Node, out: list[float]) -> None:
    if n.op == "const":
        out.append(n.value)
    for c in n.children:
        _constants(c, out)


def _with_constants(n: expr.Node, values: list[float]) -> expr.Node:
    if n.op == "const":
        return expr.const(float(values.pop(0)))
    if not n.children:
        return n
    return expr.Node(n.op, tuple(_with_constants(c, values) for c in n.children))


def refine_constants(system: Sequence[expr.Node], t: np.ndarray, x: np.ndarray,
                     max_iter: int = 30) -> System:
    """BFGS (scipy) on the system's constants, minimising the variance-normalised mean squared
    error between the integrated trajectory and ``x`` (a failed integration costs 1e6).

    A documented extra (the paper refines constants after decoding in one of its variants;
    here the objective is the trajectory, with finite-difference gradients). Returns the
    refined system (the input when it has no constants)."""
    from scipy.optimize import minimize

    system = tuple(system)
    start: list[float] = []
    for c in system:
        _constants(c, start)
    if not start:
        return system
    var = np.maximum(x.var(axis=0), 1e-12)

    def unpack(theta: np.ndarray) -> System:
        vals = list(theta)
        return tuple(_with_constants(c, vals) for c in system)

    def loss(theta: np.ndarray) -> float:
        try:
            pred = expr.integrate(unpack(theta), x[0], t, timeout_s=1.0)
        except ValueError:
            return 1e6
        if not np.all(np.isfinite(pred)):
            return 1e6
        return float(np.mean((pred - x) ** 2 / var))

    res = minimize(loss, np.asarray(start), method="BFGS", options={"maxiter": max_iter})
    return unpack(res.x)


@dataclass
class ODEFormerFitConfig(DecodeConfig):
    """:class:`DecodeConfig` plus the model: ``model`` (a ``formers train ode`` run folder or a
    model folder) and ``device``. The ODEBench harness's config for the ``odeformer`` entry."""

    model: str = "runs/ode-odeformer-seed0"
    device: str = "cpu"


_MODELS: dict[tuple[str, str], Any] = {}


def odeformer_fit(t: np.ndarray, x: np.ndarray, cfg: ODEFormerFitConfig | None = None) -> System:
    """``fit(t, x) -> system`` with a trained ODEFormer (the form of
    :func:`formers.sciml.ode.odebench.run_benchmark`); the model is loaded once per (folder,
    device). Raises ValueError when no candidate parses (the harness scores that 0)."""
    from formers.sciml.ode.fit import load_fit_model

    cfg = cfg or ODEFormerFitConfig()
    key = (str(Path(cfg.model).resolve()), cfg.device)
    if key not in _MODELS:
        _MODELS[key] = load_fit_model(cfg.model)[0].to(cfg.device)
    fit = fit_system(_MODELS[key], t, x, cfg)
    if fit.system is None:
        raise ValueError("ODEFormer: no decoded candidate parsed into a system of the right dimension")
    return fit.system
