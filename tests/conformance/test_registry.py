"""Every registry entry is documented; parts with a source paper name it."""

from __future__ import annotations

import pytest

from formers import registry

from .checks import check_documented

PAPER_KINDS = ("attention", "ffn", "norm", "position", "model", "forecaster", "surrogate", "pinn",
               "symbolic", "weather")
# Neutral settings that have no source paper by nature.
NO_PAPER = {("position", "none")}

ALL = [(e.kind, e.name) for e in registry.entries()]


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}-{n}" for k, n in ALL])
def test_entry_documented(kind, name):
    e = registry.get(kind, name)
    check_documented(e, needs_paper=kind in PAPER_KINDS and (kind, name) not in NO_PAPER)


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}-{n}" for k, n in ALL])
def test_entry_row(kind, name):
    row = registry.as_row(registry.get(kind, name))
    assert row["kind"] == kind and row["name"] == name and row["summary"]


def test_every_part_kind_is_populated():
    for kind in ("attention", "ffn", "norm", "position", "cache", "model"):
        assert registry.names(kind), f"no {kind} registered"


def test_unknown_name_and_kind():
    with pytest.raises(ValueError, match="nonexistent"):
        registry.get("attention", "nonexistent")
    with pytest.raises(ValueError, match="widget"):
        registry.get("widget", "softmax")
    with pytest.raises(ValueError, match="widget"):
        registry.register("widget", "x")


def test_register_twice_is_an_error_and_unregister_cleans_up():
    class A:
        """toy"""

    class B:
        """toy"""

    registry.register("ffn", "_toy_dup")(A)
    try:
        registry.register("ffn", "_toy_dup")(A)  # same object again is fine
        with pytest.raises(ValueError, match="_toy_dup"):
            registry.register("ffn", "_toy_dup")(B)
    finally:
        registry.unregister("ffn", "_toy_dup")
    assert "_toy_dup" not in registry.names("ffn")
