"""ODEFormer's 3-token float codec and the time/state rescaling (arXiv 2310.05573, section 3)."""

import warnings

import numpy as np
import pytest

from formers.sciml.ode import codec, expr
from formers.sciml.ode.metrics import r2_score


def test_paper_example_and_hand_cases():
    assert codec.encode_float(0.012345) == ["+", "N1235", "E-5"]  # the notes' example
    assert codec.decode_float(["+", "N1235", "E-5"]) == pytest.approx(0.01235, rel=0, abs=1e-18)
    assert codec.encode_float(1.0) == ["+", "N1000", "E-3"]
    assert codec.encode_float(-2.5e10) == ["-", "N2500", "E7"]
    assert codec.encode_float(9.9996) == ["+", "N1000", "E-2"]  # rounding carries into the exponent
    assert codec.encode_float(0.0) == ["+", "N0000", "E-3"]
    assert codec.encode_float(float("nan")) == ["NaN"] * 3
    assert codec.encode_float(float("inf")) == ["NaN"] * 3
    assert codec.encode_float(1e-99) == ["+", "N0000", "E0"]  # below E-100: zero, as the reference
    assert np.isnan(codec.decode_float(["NaN"] * 3))
    assert len(codec.FLOAT_TOKENS) == 3 + 10_000 + 201


def test_round_trip_relative_error_over_1e90_range():
    rng = np.random.default_rng(0)
    x = rng.choice([-1, 1], 5000) * 10 ** rng.uniform(-90, 90, 5000)
    back = np.array([codec.decode_float(codec.encode_float(v)) for v in x])
    assert np.max(np.abs(back - x) / np.abs(x)) <= 5e-4


def test_vectorised_equals_scalar_including_ties_and_edges():
    rng = np.random.default_rng(1)
    x = np.concatenate([
        rng.standard_normal(3000) * 10 ** rng.uniform(-95, 95, 3000),
        [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-99, 9.9996e103, 1000.0, 0.001, 0.0125, 1.2345,
         2.5e-5, 0.99995, 9.9995, 1e100, 123456789.0, -1e-97]])
    ids = codec.encode_floats(x)
    ref = np.array([[codec.FLOAT_INDEX[tok] for tok in codec.encode_float(v)] for v in x])
    np.testing.assert_array_equal(ids, ref)
    assert codec.float_tokens(x[:2]) == codec.encode_float(x[0]) + codec.encode_float(x[1])
    dec = codec.decode_floats(ids)
    scal = np.array([codec.decode_float(codec.encode_float(v)) for v in x])
    np.testing.assert_array_equal(np.isnan(dec), np.isnan(scal))
    ok = ~np.isnan(scal)
    np.testing.assert_allclose(dec[ok], scal[ok], rtol=1e-15)
    assert ids.shape == x.shape + (3,)
    assert codec.encode_floats(x[:6].reshape(2, 3)).shape == (2, 3, 3)


def test_subnormal_and_tiny_values_encode_as_zero_without_invalid_arithmetic():
    # a generated trajectory decayed to 1e-323 (a subnormal: 10**e underflows to 0 in the
    # mantissa arithmetic, which warned "invalid value" during ODEFormer training on the H200)
    x = np.array([1e-323, -5e-324, 2.5e-310, 1e-200, -1e-150, 9.9996e-98, 9.9994e-98, 1.0])
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = codec.encode_floats(x)
    ref = np.array([[codec.FLOAT_INDEX[tok] for tok in codec.encode_float(v)] for v in x])
    np.testing.assert_array_equal(ids, ref)
    assert codec.float_tokens(x[:2]) == ["+", "N0000", "E0", "-", "N0000", "E0"]
    assert codec.float_tokens(x[5:7]) == ["+", "N1000", "E-100", "+", "N0000", "E0"]  # rounds up to 1e-97


@pytest.mark.parametrize("bad", [["+", "N123", "E1"], ["*", "N1234", "E1"], ["+", "N1234", "E101"],
                                 ["+", "N1234"], ["NaN", "N1234", "E1"], ["+", "E1", "N1234"]])
def test_malformed_tokens_raise(bad):
    with pytest.raises(ValueError):
        codec.decode_float(bad)


def test_decode_floats_rejects_ids_in_the_wrong_slot():
    with pytest.raises(ValueError):
        codec.decode_floats(np.array([[codec.FLOAT_INDEX["N0001"], 5, 5]]))


def _decay_data():
    t = np.linspace(0.0, 20.0, 400)
    return t, 3.0 * np.exp(-0.5 * t)[:, None]


def test_rescaling_inverts_exactly_on_linear_decay():
    """Notes test 4: x' = -0.5 x on t in [0, 20], x(0) = 3; scale, write the true law in scaled
    coordinates, map it back with the exact inverse, get -0.5 x_0 and reproduce the data."""
    sympy = pytest.importorskip("sympy")
    t, x = _decay_data()
    r = codec.Rescaling.fit(t, x)
    assert r.a_t == pytest.approx(9 / 20) and r.b_t == pytest.approx(1.0) and r.scale == (pytest.approx(1 / 3),)
    s, y = r.transform(t, x)
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(10.0) and y[0, 0] == pytest.approx(1.0)
    law = expr.parse("-0.5*x_0")
    scaled = r.scale_system(law)
    # the scaled law is -0.5/a_t * y and reproduces the scaled data
    assert expr.evaluate(scaled, np.array([[2.0]]))[0, 0] == pytest.approx(-0.5 / r.a_t * 2.0)
    assert r2_score(y, expr.integrate(scaled, y[0], s)) > 0.999999
    back = expr.simplify(r.unscale_system(scaled))
    diff = expr.to_sympy(back)[0] - expr.to_sympy(law)[0]
    assert abs(float(sympy.expand(diff).coeff(sympy.Symbol("x_0", real=True)))) < 1e-12
    assert r2_score(x, expr.integrate(back, x[0], t)) > 0.999


def test_rescaling_round_trip_with_time_and_two_components():
    t = np.linspace(2.0, 7.0, 50)
    x = np.stack([np.cos(t) + 2, np.sin(t) - 3], axis=1)
    r = codec.Rescaling.fit(t, x)
    law = expr.parse("x_1 + 0.3*t | -2*x_0*x_1 + sin(t)")
    there_and_back = r.unscale_system(r.scale_system(law))
    pts = np.random.default_rng(0).standard_normal((20, 2))
    tt = np.linspace(0, 5, 20)
    np.testing.assert_allclose(expr.evaluate(there_and_back, pts, tt), expr.evaluate(law, pts, tt), rtol=1e-10)
    s, y = r.transform(t, x)
    t2, x2 = r.inverse_transform(s, y)
    np.testing.assert_allclose(t2, t) and np.testing.assert_allclose(x2, x)


def test_rescaling_input_errors():
    with pytest.raises(ValueError, match="two distinct times"):
        codec.Rescaling.fit(np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="finite"):
        codec.Rescaling.fit(np.arange(3.0), np.array([[1.0], [np.nan], [2.0]]))
    r = codec.Rescaling.fit(np.arange(3.0), np.array([[0.0], [1.0], [2.0]]))
    assert r.scale == (1.0,)  # a zero initial value is replaced by 1
    with pytest.raises(ValueError, match="components"):
        r.unscale_system(expr.parse("x_0 | x_1"))
