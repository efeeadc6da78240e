"""The forecaster interface: every forecasting model of ``formers.timeseries`` and how it is built.

A forecaster is an ``nn.Module`` registered under registry kind ``forecaster``:

* built as ``Cls(cfg)`` from a dataclass config that subclasses :class:`ForecasterConfig` (fields
  ``model`` = its registry name, ``look_back``, ``horizon``, ``n_channels``, plus its own, all with
  defaults) and kept as ``self.cfg`` (checkpoints save ``cfg.to_dict()`` as ``config.json``);
* ``forward(x: (batch, look_back, n_channels)) -> (batch, horizon, n_channels)``, on the scale of
  its input (a model that normalises, e.g. with RevIN, denormalises its output);
* optionally ``aux_loss() -> scalar tensor`` for the last forward (e.g. Pathformer's load-balancing
  loss); the forecast task adds it to the training loss;
* optionally a static method ``recipe(horizon) -> ForecastRecipe`` (:mod:`formers.timeseries.recipe`):
  how its paper trains it; the forecast task trains it so by default (else with
  :data:`~formers.timeseries.recipe.DEFAULT_RECIPE`).

Adding a model is registering one class::

    @dataclass
    class MyConfig(ForecasterConfig):
        model: str = "mine"
        width: int = 64

    @register("forecaster", "mine", config=MyConfig, paper=Paper(...))
    class Mine(nn.Module):
        \"\"\"... shapes ...\"\"\"
        def __init__(self, cfg: MyConfig): ...

``formers train forecast --model mine`` and ``formers compare forecast --models mine,...`` then work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.config import Config
from formers.nn.family import build_family, family_config, family_config_from_dict, load_family
from formers.registry import get
from formers.timeseries.recipe import DEFAULT_RECIPE, ForecastRecipe


@dataclass
class ForecasterConfig(Config):
    """Shape of a forecaster: ``model`` (registry name), ``look_back`` L (input steps),
    ``horizon`` H (output steps), ``n_channels`` C (variables).

    Raises ValueError (naming the field) for a non-positive size or an empty model name."""

    model: str = ""
    look_back: int = 96
    horizon: int = 96
    n_channels: int = 7

    def __post_init__(self) -> None:
        o = type(self).__name__
        if not self.model:
            raise ValueError(f"{o}.model must name a registered forecaster")
        for name in ("look_back", "horizon", "n_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")


def forecaster_config(name: str, **fields: Any) -> ForecasterConfig:
    """The config of registered forecaster ``name`` with ``fields`` set (unknown fields -> ValueError)."""
    return family_config("forecaster", name, **fields)


def forecaster_recipe(name: str, horizon: int) -> ForecastRecipe:
    """The training recipe registered forecaster ``name`` declares for ``horizon`` (its class's
    static ``recipe(horizon)``), or :data:`~formers.timeseries.recipe.DEFAULT_RECIPE`.

    Raises ValueError for an unknown forecaster or a recipe method that returns something else."""
    fn = getattr(get("forecaster", name).obj, "recipe", None)
    if fn is None:
        return DEFAULT_RECIPE
    r = fn(horizon)
    if not isinstance(r, ForecastRecipe):
        raise ValueError(f"forecaster {name!r}: recipe({horizon}) returned {type(r).__name__}, "
                         f"expected a ForecastRecipe")
    return r


def config_from_dict(data: dict[str, Any]) -> ForecasterConfig:
    """Rebuild a forecaster config from ``cfg.to_dict()`` (its ``model`` field names the class)."""
    return family_config_from_dict("forecaster", data)


def build_forecaster(cfg: ForecasterConfig) -> nn.Module:
    """The module of ``cfg`` (its registered class called with ``cfg``)."""
    if not isinstance(cfg, ForecasterConfig):
        raise TypeError(f"build_forecaster: expected a ForecasterConfig, got {type(cfg).__name__}")
    return build_family("forecaster", cfg)


def load_forecaster(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A forecaster saved by :func:`formers.nn.io.save_model` (config.json + model.safetensors).

    Raises FileNotFoundError for missing files, ValueError for a bad config or mismatched weights."""
    return load_family("forecaster", folder, device)


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ValueError unless x is (batch, cfg.look_back, cfg.n_channels)."""
    c = model.cfg
    if x.dim() != 3 or x.shape[1] != c.look_back or x.shape[2] != c.n_channels:
        raise ValueError(f"{type(model).__name__}: expected x of shape (batch, {c.look_back}, "
                         f"{c.n_channels}), got {tuple(x.shape)}")
