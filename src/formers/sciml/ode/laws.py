"""A small family of 1-D growth laws for CPU smoke training of ODEFormer (not from the paper).

* linear: ``x' = a x`` with |a| in [0.1, 0.9] (either sign);
* logistic: ``x' = a x - c x^2`` (= a x (1 - x/K), K = a/c) with a in [0.3, 0.9], K in [0.5, 5].

Constants have two decimals (a grid of 0.01). **Held-out systems**: those whose leading constant
``a`` is a multiple of 0.05 (|a| = 0.10, 0.15, ...) are never drawn for training
(:func:`draw_law` with ``held_out=False``) and are the only ones drawn for validation
(``held_out=True``): a model must answer for a constant it never saw in that law.
Trajectories follow the paper's generator where it applies: t = linspace(1, 10, N) with
N ~ U{40..80}; x0 ~ U(0.2, 2) for linear laws, x0 ~ U(0.05, 0.5) K for logistic ones. Samples are
dicts in the generator's shard format (``dim``, ``tokens``, ``infix``, ``t``, ``x``;
:func:`formers.sciml.ode.generate.generate_sample`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from formers.sciml.ode import expr


def is_held_out(a: float) -> bool:
    """Whether leading constant ``a`` belongs to the held-out systems (|a| a multiple of 0.05)."""
    return round(abs(a) * 100) % 5 == 0


def draw_law(rng: np.random.Generator, held_out: bool) -> tuple[str, float, float]:
    """One (kind, a, c) law (c = 0 for linear laws), from the training or the held-out part."""
    while True:
        if rng.random() < 0.5:
            law = ("linear", float(rng.choice([-1, 1]) * rng.integers(10, 91) / 100), 0.0)
        else:
            a = int(rng.integers(30, 91)) / 100
            law = ("logistic", a, round(a / rng.uniform(0.5, 5.0), 2) or 0.01)
        if is_held_out(law[1]) == held_out:
            return law


def law_system(law: tuple[str, float, float]) -> tuple[expr.Node, ...]:
    """The system (one component) of ``(kind, a, c)``."""
    kind, a, c = law
    x = expr.var(0)
    lin = expr.op("mul", expr.const(a), x)
    if kind == "linear":
        return (lin,)
    return (expr.op("add", lin, expr.op("mul", expr.const(-c), expr.op("pow2", x))),)


def law_sample(rng: np.random.Generator, held_out: bool = False) -> dict[str, Any]:
    """One trajectory of a random law of the chosen part, as a generator-format sample dict."""
    kind, a, c = law = draw_law(rng, held_out)
    n = int(rng.integers(40, 81))
    t = np.linspace(1.0, 10.0, n)
    x0 = rng.uniform(0.2, 2.0) if kind == "linear" else rng.uniform(0.05, 0.5) * a / c
    system = law_system(law)
    x = expr.integrate(system, [x0], t)
    return {"dim": 1, "tokens": expr.to_prefix(system), "infix": expr.to_str(system),
            "t": t.tolist(), "x": x.tolist()}
