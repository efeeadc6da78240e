"""Expression trees: prefix tokens, sympy round trip, evaluation and integration (ODEFormer,
arXiv 2310.05573, section 3)."""

import math

import numpy as np
import pytest

from formers.sciml.ode import expr
from formers.sciml.ode import generate as G
from formers.sciml.ode.expr import const, op, var

sympy = pytest.importorskip("sympy")


def test_paper_prefix_example_and_separator():
    s = (op("mul", const(1.2), op("sin", var(1))), var(0))
    assert expr.to_prefix(s) == ["mul", "+", "N1200", "E-3", "sin", "x_1", "|", "x_0"]
    assert expr.from_prefix(expr.to_prefix(s)) == s
    assert expr.complexity(s) == 5


def test_prefix_round_trip_over_1000_generated_systems():
    """Notes test 2: tree -> prefix -> tree is the identity (constants at the codec's 4 digits),
    and the parsed tree is the same sympy expression."""
    rng = np.random.default_rng(0)
    cfg = G.GeneratorConfig()
    for i in range(1000):
        s = expr.round_constants(G.sample_system(rng, cfg).system)
        toks = expr.to_prefix(s)
        assert toks.count("|") == len(s) - 1
        back = expr.from_prefix(toks, max_dim=cfg.max_dim)
        assert back == s
        if i % 50 == 0:  # the sympy form agrees too (a subset: sympy is slow)
            for a, b in zip(expr.to_sympy(s), expr.to_sympy(back)):
                assert sympy.expand(a - b) == 0


def test_simplified_generated_systems_round_trip_through_sympy_and_prefix():
    rng = np.random.default_rng(1)
    cfg = G.GeneratorConfig(max_dim=3)
    pts = rng.uniform(0.5, 1.5, (16, 3))
    for _ in range(40):
        raw = G.sample_system(rng, cfg)
        simple = G.simplify_generated(raw, cfg)  # canonicalised, constants at 4 digits
        if simple is None:
            continue
        assert expr.from_prefix(expr.to_prefix(simple)) == simple
        x = pts[:, :raw.dim]
        a = expr.evaluate(raw.system, x)
        b = expr.evaluate(expr.simplify(raw.system), x)  # the same function before rounding
        ok = np.isfinite(a) & (np.abs(a) < 1e6)
        np.testing.assert_allclose(b[ok], a[ok], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("tokens,msg", [
    ([], "empty"), (["add", "x_0"], "ends early"), (["x_0", "x_1"], "leftover"), (["foo"], "unknown token"),
    (["mul", "+", "N12", "E1", "x_0"], "mantissa"), (["x_0", "|"], "empty"), (["+", "N1000"], "fewer than 3"),
    (["sin"] * 150 + ["x_0"], "deeper"),
])
def test_malformed_prefix_raises(tokens, msg):
    with pytest.raises(ValueError, match=msg):
        expr.from_prefix(tokens)


def test_random_token_sequences_only_raise_value_error():
    """Decoder output can be any token string: parsing and evaluating it never raises anything
    but ValueError (a deep tree too, which Python could not compile)."""
    vocab = expr.vocabulary(3)[3:]
    rng = np.random.default_rng(5)
    for _ in range(3000):
        toks = [vocab[j] for j in rng.integers(0, 30 if rng.random() < 0.7 else len(vocab), rng.integers(1, 25))]
        try:
            s = expr.from_prefix(toks, max_dim=3)
            expr.evaluate(s, np.ones((2, len(s))))
        except ValueError:
            pass
    deep = var(0)
    for _ in range(300):
        deep = op("sin", deep)
    with pytest.raises(ValueError, match="nested"):
        expr.evaluate((deep,), np.ones((2, 1)))


def test_max_dim_limits_components_and_variables():
    with pytest.raises(ValueError, match="max_dim"):
        expr.from_prefix(["x_0", "|", "x_1", "|", "x_0"], max_dim=2)
    with pytest.raises(ValueError, match="max_dim"):
        expr.from_prefix(["x_2"], max_dim=2)


def test_vocabulary_holds_every_token_the_encoder_writes():
    vocab = set(expr.vocabulary(6))
    rng = np.random.default_rng(2)
    for _ in range(100):
        assert set(expr.to_prefix(G.sample_system(rng, G.GeneratorConfig()).system)) <= vocab
    assert len(expr.vocabulary(6)) == len(set(expr.vocabulary(6)))


ALL_OPS = ("abs(x_0) + sqrt(x_1) - log(x_1) * exp(-x_0) | sin(x_0) / cos(x_1) + asin(x_1/3) "
           "- acos(x_1/3) + tan(x_0) * atan(x_1) + x_0**2 * x_1**3 / (x_0 + 1) + x_1**1.7 + cot(x_1)")


def test_evaluate_matches_sympy_lambdify_on_every_operator():
    s = expr.parse(ALL_OPS)
    ops = {n.op for c in s for n in c.walk()}
    assert {"abs", "sqrt", "log", "exp", "sin", "cos", "arcsin", "arccos", "tan", "arctan", "pow2",
            "pow3", "pow", "div", "sub", "mul", "add"} <= ops
    x = np.random.default_rng(0).uniform(0.3, 1.4, (50, 2))
    xs = sympy.symbols("x_0 x_1", real=True)
    want = np.stack([np.broadcast_to(sympy.lambdify(xs, e, "numpy")(x[:, 0], x[:, 1]), (50,))
                     for e in expr.to_sympy(s)], 1)
    np.testing.assert_allclose(expr.evaluate(s, x), want, rtol=1e-12)
    # the parsed text and our tree are the same function
    ref = [sympy.sympify(p, locals={"x_0": xs[0], "x_1": xs[1]}) for p in ALL_OPS.split("|")]
    want2 = np.stack([sympy.lambdify(xs, e, "numpy")(x[:, 0], x[:, 1]) for e in ref], 1)
    np.testing.assert_allclose(expr.evaluate(s, x), want2, rtol=1e-12)


def test_evaluate_torch_matches_numpy_and_is_differentiable():
    torch = pytest.importorskip("torch")
    s = expr.parse(ALL_OPS)
    x = np.random.default_rng(3).uniform(0.3, 1.4, (20, 2))
    xt = torch.tensor(x, requires_grad=True)
    out = expr.evaluate_torch(s, xt)
    np.testing.assert_allclose(out.detach().numpy(), expr.evaluate(s, x), rtol=1e-12)
    out.sum().backward()
    assert torch.isfinite(xt.grad).all()


def test_evaluate_constant_component_and_errors():
    s = expr.parse("2.0 | x_0")
    out = expr.evaluate(s, np.ones((4, 2)))
    assert out.shape == (4, 2) and np.all(out[:, 0] == 2.0)
    with pytest.raises(ValueError, match="columns"):
        expr.evaluate(s, np.ones((4, 3)))
    assert np.isnan(expr.evaluate(expr.parse("log(x_0)"), np.array([[-1.0]]))[0, 0])  # no warning/raise


def test_integrate_linear_decay_blowup_and_bad_input():
    t = np.linspace(0, 10, 101)
    y = expr.integrate(expr.parse("-0.5*x_0"), [3.0], t)
    np.testing.assert_allclose(y[:, 0], 3 * np.exp(-0.5 * t), rtol=1e-4)
    # x' = x^2 from 1 blows up at t = 1: the stop leaves NaN from there on
    z = expr.integrate(expr.parse("x_0**2"), [1.0], t, max_abs=100.0)
    assert np.all(np.isfinite(z[t < 0.98])) and np.all(np.isnan(z[t > 1.0]))
    # non-autonomous: x' = cos(t) from sin(t0)
    w = expr.integrate(expr.parse("cos(t)"), [0.0], t)
    np.testing.assert_allclose(w[:, 0], np.sin(t), atol=1e-4)
    with pytest.raises(ValueError, match="increasing"):
        expr.integrate(expr.parse("x_0"), [1.0], np.array([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        expr.integrate(expr.parse("x_0"), [math.nan], t)


def test_integrate_timeout_gives_nan():
    t = np.linspace(0, 1000, 50)
    y = expr.integrate(expr.parse("-1000*(x_0 - cos(t))"), [0.0], t, method="RK45", first_step=None,
                       timeout_s=0.01)
    assert np.isnan(y[-1, 0])


def test_sympy_conversion_covers_odebench_forms():
    s = expr.parse("-0.64*x_1*Abs(x_1) - sin(x_0) + 1.67 | cos(x_0)*cot(x_1) - 0.8*x_0*(1 - x_0)**1.2")
    ops = {n.op for c in s for n in c.walk()}
    assert {"abs", "div", "pow", "cos", "sin"} <= ops and "cot" not in ops
    with pytest.raises(ValueError, match="unsupported|unknown"):
        expr.parse("gamma(x_0)")
    with pytest.raises(ValueError, match="symbol"):
        expr.parse("y + x_0")


def test_node_validation():
    with pytest.raises(ValueError, match="operand"):
        expr.Node("add", (var(0),))
    with pytest.raises(ValueError, match="unknown node op"):
        expr.Node("y")


def test_blow_up_inside_the_solver_ends_in_nan_rows_without_numpy_warnings():
    """A generated system (from the paper's generator, seed 3) whose state overflows the RK45 error
    norm before the |x| = 100 event fires: the rows after the stop are NaN and numpy stays quiet
    (it used to print 'overflow encountered in dot' into every generation log)."""
    import warnings

    system = expr.parse("x_0**2 * (0.9077 * x_0 * (15.34 * (0.1705 - 12.62 * x_0)**2 - 0.3538 * x_0) - 0.2999 * x_0)")
    t = np.linspace(1.0, 10.0, 147)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = expr.integrate(system, [0.134802384708746], t, method="RK45", rtol=1e-3, atol=1e-6,
                             first_step=None, max_abs=100.0, max_evals=30000)
    assert out[0, 0] == pytest.approx(0.134802384708746)
    assert np.isnan(out[-1, 0]) and np.all(np.isfinite(out[: np.argmax(np.isnan(out[:, 0])), 0]))
