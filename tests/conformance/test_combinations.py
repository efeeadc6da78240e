"""All-pairs combinations of the backbone's switches.

Every pair of values of any two factors (token mixer, feed-forward, norm, position, residual
scheme, value residual, GQA, pre/post-norm, architecture) appears in at least one generated
model. Each model must either build and pass the core checks (finite forward/backward, causality
for decoders, cached decoding = full forward where every layer can be cached), or be refused at
build time with a ValueError that says why. No other outcome is allowed.
"""

from __future__ import annotations

import itertools

import pytest

from formers import registry
from formers.nn import LayerSpec, ModelConfig

from .checks import BASE, build, check_bidirectional, check_cache, check_causal, check_forward_backward


def all_pairs(factors: dict[str, list]) -> list[dict]:
    """A small set of rows (one value per factor) covering every pair of values of two factors.

    Greedy construction: start each row from the first uncovered pair, then give every other
    factor the value that covers the most still-uncovered pairs with the values chosen so far.
    """
    names = list(factors)

    def pairs(row: dict) -> set:
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(names, 2)}

    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]}
    rows = []
    while uncovered:
        a, va, b, vb = min(uncovered, key=repr)
        row = {a: va, b: vb}
        for n in names:
            if n in row:
                continue

            def gain(v, n=n):
                trial = {**row, n: v}
                return sum(1 for m in row
                           if (tuple(x for k in sorted((m, n), key=names.index) for x in (k, trial[k])))
                           in uncovered)

            row[n] = max(factors[n], key=gain)
        rows.append(row)
        uncovered -= pairs(row)
    return rows


FACTORS = {
    "attention": registry.names("attention"),
    "ffn": registry.names("ffn"),
    "norm": registry.names("norm"),
    "position": ["learned", "sinusoidal", "rope", "alibi", "none"],
    "residual": registry.names("residual"),
    "value_residual": ["none", "mix", "learned", "shared"],
    "n_kv_heads": [None, 1],
    "prenorm": [True, False],
    "arch": ["decoder", "encoder"],
}
ROWS = all_pairs(FACTORS)


def test_all_pairs_generator_covers_every_pair():
    f = {"a": [1, 2, 3], "b": ["x", "y"], "c": [True, False], "d": [0, 1, 2]}
    rows = all_pairs(f)
    for (n1, v1s), (n2, v2s) in itertools.combinations(f.items(), 2):
        for v1, v2 in itertools.product(v1s, v2s):
            assert any(r[n1] == v1 and r[n2] == v2 for r in rows), (n1, v1, n2, v2)
    assert len(rows) < 3 * 3 * 2 * 2  # fewer than the full product


def _config(row: dict) -> ModelConfig:
    spec = LayerSpec(attention=row["attention"], ffn=row["ffn"])
    return BASE.replace(arch=row["arch"], norm=row["norm"], position=row["position"],
                        residual=row["residual"], value_residual=row["value_residual"],
                        n_kv_heads=row["n_kv_heads"], prenorm=row["prenorm"], layers=[spec])


def _try_build(row: dict):
    """The built model, or the ValueError message of a refusal."""
    try:
        return build(_config(row))
    except ValueError as e:
        return str(e)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: "-".join(str(r[n]) for n in FACTORS))
def test_combination_builds_and_conforms_or_is_refused(row):
    model = _try_build(row)
    if isinstance(model, str):
        assert model.strip(), "a refusal must say why"
        return
    check_forward_backward(model)
    if row["arch"] == "decoder":
        check_causal(model)
        if all(registry.get("attention", model.cfg.layer_spec(i).attention).caps.kv_cache
               for i in range(model.cfg.n_layers)):
            check_cache(model, prefill=3, chunk=2)
    else:
        check_bidirectional(model)


def test_most_combinations_build():
    """Guards against the suite passing because everything is refused."""
    refused = {repr(r): m for r in ROWS if isinstance(m := _try_build(r), str)}
    assert len(refused) <= 0.4 * len(ROWS), f"{len(refused)} of {len(ROWS)} refused: {refused}"


def test_denseformer_value_residual_matformer_in_one_model():
    cfg = BASE.replace(residual="dwa", value_residual="learned", layers=[LayerSpec(ffn="matformer")])
    model = build(cfg)
    check_forward_backward(model)
    check_causal(model)
    check_cache(model, prefill=4, chunk=3)
