"""SINDy and gplearn baselines in the ODEBench harness (ODEFormer, arXiv 2310.05573, section 4)."""

import numpy as np
import pytest

from formers.sciml.ode import baselines as B
from formers.sciml.ode import expr


def _decay():
    t = np.linspace(0.0, 10.0, 200)
    return t, expr.integrate(expr.parse("-0.5*x_0"), [3.0], t)


def test_sindy_recovers_linear_decay():
    pytest.importorskip("pysindy", reason="pysindy not installed (pip install 'formers[sci]')")
    t, x = _decay()
    s = B.sindy_fit(t, x)
    assert len(s) == 1
    assert expr.variables(s) == {0}
    consts = [n.value for n in s[0].walk() if n.op == "const"]
    assert consts == [pytest.approx(-0.5, abs=2e-3)]  # exactly one term: -0.5 x_0
    assert expr.to_str(s) == "x_0' = (-0.5 * x_0)"


def test_sindy_on_lotka_volterra_two_components():
    pytest.importorskip("pysindy", reason="pysindy not installed (pip install 'formers[sci]')")
    t = np.linspace(0, 10, 300)
    law = expr.parse("x_0*(1.84 - 1.45*x_1) | -x_1*(3.0 - 1.62*x_0)")
    x = expr.integrate(law, [1.0, 0.5], t)
    s = B.sindy_fit(t, x, B.SINDyConfig(functions=()))
    pts = np.random.default_rng(0).uniform(0.2, 2, (30, 2))
    np.testing.assert_allclose(expr.evaluate(s, pts), expr.evaluate(law, pts), rtol=0.05, atol=0.05)


def test_gplearn_fits_linear_decay():
    pytest.importorskip("gplearn", reason="gplearn not installed (pip install 'formers[sci]')")
    t, x = _decay()
    fit = B.get_baseline("gplearn", population_size=200, generations=5, max_points=60)
    s = fit(t, x)
    assert B.trajectory_r2(s, t, x) > 0.9


def test_baseline_input_errors():
    with pytest.raises(ValueError, match="unknown baseline"):
        B.get_baseline("pysr")
    with pytest.raises(ValueError, match="unknown option"):
        B.get_baseline("sindy", depth=3)
    with pytest.raises(ValueError, match="functions"):
        B.SINDyConfig(functions=("gamma",))
    with pytest.raises(ValueError, match="increasing"):
        B.sindy_fit(np.array([0.0, 2.0, 1.0]), np.ones((3, 1)))
