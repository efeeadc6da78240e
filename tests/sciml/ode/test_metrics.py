"""ODEFormer's metrics (arXiv 2310.05573, section 4; reference ``odeformer/metrics.py``)."""

import numpy as np
import pytest

from formers.sciml.ode import metrics as M


def test_r2_edge_cases():
    y = np.stack([np.linspace(0, 1, 20), np.sin(np.linspace(0, 3, 20))], 1)
    assert M.r2_zero(y, y) == 1.0
    bad = y.copy()
    bad[5, 1] = np.nan
    assert M.r2_zero(y, bad) == 0.0  # failed integration
    bad[5, 1] = np.inf
    assert M.r2_zero(y, bad) == 0.0  # diverging
    assert M.r2_zero(y, y + 10.0) == 0.0  # negative R² is clipped
    const = np.ones((5, 1))
    assert M.r2_score(const, const) == 1.0 and M.r2_score(const, const + 1) == 0.0
    with pytest.raises(ValueError):
        M.r2_score(y, y[:, :1])


def test_r2_is_variance_weighted_by_hand():
    """Component 0 has variance 100x component 1: a miss on component 1 barely counts."""
    y = np.array([[0.0, 0.0], [10.0, 1.0], [20.0, 2.0]])
    p = y.copy()
    p[:, 1] = 1.0  # predicts the mean of component 1: its own R² is 0
    ss_tot = 200.0 + 2.0
    ss_res = 2.0
    assert M.r2_score(y, p) == pytest.approx(1 - ss_res / ss_tot)
    assert M.r2_score(y, p) > 0.98  # uniform averaging would give 0.5
    sklearn = pytest.importorskip("sklearn.metrics")
    assert M.r2_score(y, p) == pytest.approx(sklearn.r2_score(y, p, multioutput="variance_weighted"))


def test_accuracy_threshold_is_strict_and_counts_nan_as_failure():
    assert M.accuracy([0.95, 0.9, 0.2, float("nan")]) == 0.25
    assert np.isnan(M.accuracy([]))


def test_biggio_accuracy():
    y = np.linspace(1, 2, 100)[:, None]
    assert M.accuracy_l1_biggio(y, y * 1.04) == 1.0
    assert M.accuracy_l1_biggio(y, y * 1.06) == 0.0
