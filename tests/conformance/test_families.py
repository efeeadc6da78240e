"""Every entry of a model family (a registry kind with its own config class: forecasters, PDE
surrogates, PINNs, symbolic regressors, weather encoders) builds from its default config, saves
as config.json + model.safetensors and loads back to the same config and the same tensors."""

from __future__ import annotations

import pytest
import torch

from formers import registry
from formers.nn.family import build_family, family_config, load_family
from formers.nn.io import save_model

FAMILIES = ("forecaster", "surrogate", "pinn", "symbolic", "weather")
ALL = [(k, n) for k in FAMILIES for n in registry.names(k)]


def test_every_family_is_populated():
    for kind in FAMILIES:
        assert registry.names(kind), f"no {kind} registered"


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}-{n}" for k, n in ALL])
def test_family_entry_save_load_round_trip(kind, name, tmp_path):
    torch.manual_seed(0)
    cfg = family_config(kind, name)
    model = build_family(kind, cfg)
    assert model.cfg == cfg and sum(p.numel() for p in model.parameters()) > 0
    save_model(model, tmp_path / "m")
    back = load_family(kind, tmp_path / "m")
    assert type(back) is type(model) and back.cfg.to_dict() == cfg.to_dict()
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), f"{kind} {name!r}: {k} differs after save/load"
