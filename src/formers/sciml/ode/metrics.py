"""ODEFormer's trajectory metrics: R² (variance-weighted, zero-clipped), accuracy at R² > 0.9,
the Biggio-style tolerance accuracy and expression complexity.

Source: d'Ascoli et al., "ODEFormer: Symbolic Regression of Dynamical Systems with Transformers"
(arXiv 2310.05573), section 4 ("Metrics"); reference ``odeformer/metrics.py``: ``r2`` is sklearn's
``r2_score(true, pred, multioutput="variance_weighted")``, ``r2_zero = max(0, r2)`` with a failed
or diverging prediction (NaN/inf anywhere) scored 0, and the headline number is the fraction of
systems with R² > 0.9.

Shapes: ``y_true``, ``y_pred``: ``(n_points, dim)`` (a 1-D array counts as one component).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ACCURACY_THRESHOLD = 0.9


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64)
    yt = yt[:, None] if yt.ndim == 1 else yt
    yp = yp[:, None] if yp.ndim == 1 else yp
    if yt.shape != yp.shape or yt.ndim != 2 or yt.shape[0] < 1:
        raise ValueError(f"y_true and y_pred must both be (n_points, dim), got {yt.shape} and {yp.shape}")
    if not np.all(np.isfinite(yt)):
        raise ValueError("y_true holds NaN or inf: the reference trajectory must be finite")
    return yt, yp


def r2_score(y_true, y_pred) -> float:
    """Variance-weighted R² over components: ``1 - sum_j SS_res_j / sum_j SS_tot_j`` (sklearn's
    ``variance_weighted``). A constant reference (all SS_tot zero) gives 1 for an exact prediction
    and 0 otherwise (sklearn's convention). NaN/inf in the prediction gives ``-inf``.

    Raises:
        ValueError: shapes differ, or ``y_true`` is not finite.
    """
    yt, yp = _pair(y_true, y_pred)
    if not np.all(np.isfinite(yp)):
        return float("-inf")
    res = float(np.sum((yt - yp) ** 2))
    tot = float(np.sum((yt - yt.mean(axis=0)) ** 2))
    if tot == 0.0:
        return 1.0 if res == 0.0 else 0.0
    return 1.0 - res / tot


def r2_zero(y_true, y_pred) -> float:
    """``max(0, R²)``; a prediction with NaN/inf (failed or diverging integration) scores 0."""
    return max(0.0, r2_score(y_true, y_pred))


def accuracy(r2_values: Sequence[float], threshold: float = ACCURACY_THRESHOLD) -> float:
    """Fraction of R² values strictly above ``threshold`` (NaN counts as a failure); nan if empty."""
    v = np.asarray(list(r2_values), dtype=np.float64)
    if v.size == 0:
        return float("nan")
    return float(np.mean(np.nan_to_num(v, nan=-np.inf) > threshold))


def accuracy_l1_biggio(y_true, y_pred, atol: float = 1e-3, rtol: float = 0.05, frac: float = 0.95) -> float:
    """1.0 if at least ``frac`` of the points satisfy ``|pred - true| <= atol + rtol |true|`` in
    every component, else 0.0 (reference ``accuracy_l1_biggio``); NaN predictions fail."""
    yt, yp = _pair(y_true, y_pred)
    ok = np.all(np.abs(yp - yt) <= atol + rtol * np.abs(yt), axis=1)
    return float(np.mean(ok) >= frac)


def complexity(system) -> int:
    """Expression complexity: number of tree nodes over all components (see
    :func:`formers.sciml.ode.expr.complexity`)."""
    from formers.sciml.ode.expr import complexity as _c

    return _c(system)
