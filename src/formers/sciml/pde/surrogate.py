"""The PDE-surrogate interface: every model of registry kind ``surrogate`` and how it is built.

A surrogate maps a window of past fields on a regular periodic grid to the next fields:

    forward(x: (batch, t_in, *grid, channels)) -> (batch, t_out, *grid, channels)

with ``grid`` = (nx, ny) for ``n_dims = 2`` or (nx, ny, nz) for ``n_dims = 3`` and the channels
last (vorticity: 1 channel; velocity: 3). It is an ``nn.Module`` registered under kind
``surrogate``, built as ``Cls(cfg)`` from a dataclass subclassing :class:`SurrogateConfig` and kept
as ``self.cfg`` (checkpoints save ``cfg.to_dict()`` as ``config.json`` beside
``model.safetensors``). Physical coordinates of the grid are ``linspace(0, length, n)`` per axis
(``cfg.lengths``, default 2*pi, FactFormer's KM2D convention).

Adding a model is registering one class::

    @dataclass
    class MyConfig(SurrogateConfig):
        model: str = "mine"

    @register("surrogate", "mine", config=MyConfig, paper=Paper(...))
    class Mine(nn.Module): ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.config import Config
from formers.nn.family import build_family, family_config, family_config_from_dict, load_family


@dataclass
class SurrogateConfig(Config):
    """Shape of a surrogate: ``model`` (registry name), ``n_dims`` (2 or 3 spatial axes),
    ``t_in`` input frames, ``t_out`` output frames, ``channels`` per grid point, ``lengths``
    the physical size of each axis (coordinates ``linspace(0, L, n)``; one value = all axes).

    Raises ValueError (naming the field, the value and what is allowed) for a bad field."""

    model: str = ""
    n_dims: int = 2
    t_in: int = 1
    t_out: int = 1
    channels: int = 1
    lengths: tuple[float, ...] = (2 * math.pi,)

    def __post_init__(self) -> None:
        o = type(self).__name__
        if not self.model:
            raise ValueError(f"{o}.model must name a registered surrogate")
        if self.n_dims not in (2, 3):
            raise ValueError(f"{o}.n_dims must be 2 or 3, got {self.n_dims!r}")
        for name in ("t_in", "t_out", "channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{o}.{name} must be an int > 0, got {v!r}")
        self.lengths = tuple(float(v) for v in self.lengths)
        if len(self.lengths) not in (1, self.n_dims) or not all(v > 0 for v in self.lengths):
            raise ValueError(f"{o}.lengths must be 1 or n_dims = {self.n_dims} positive numbers, "
                             f"got {self.lengths!r}")

    def axis_lengths(self) -> tuple[float, ...]:
        """The physical length of every axis (``lengths`` broadcast to ``n_dims``)."""
        return self.lengths * self.n_dims if len(self.lengths) == 1 else self.lengths


def grid_coords(cfg: SurrogateConfig, grid: tuple[int, ...], device=None,
                dtype=torch.float32) -> list[torch.Tensor]:
    """Per-axis physical coordinates ``linspace(0, L_a, n_a)``: a list of (n_a,) tensors."""
    return [torch.linspace(0.0, L, n, device=device, dtype=dtype)
            for L, n in zip(cfg.axis_lengths(), grid)]


def check_grid_size(model: nn.Module, grid: tuple[int, ...], multiple_of: int = 1, min_size: int = 1) -> None:
    """Raise ValueError unless ``grid`` has ``model.cfg.n_dims`` sizes, each >= ``min_size`` and a
    multiple of ``multiple_of`` (a grid the model cannot take, named in the message)."""
    c: SurrogateConfig = model.cfg  # type: ignore[assignment]
    bad = len(grid) != c.n_dims or any(n < min_size or n % multiple_of for n in grid)
    if bad:
        raise ValueError(f"{type(model).__name__}: grid {tuple(grid)} cannot be taken: it needs "
                         f"{c.n_dims} axes, every size >= {min_size}"
                         + (f" and a multiple of {multiple_of}" if multiple_of > 1 else ""))


def check_fields(model: nn.Module, x: torch.Tensor, multiple_of: int = 1, min_size: int = 1) -> None:
    """Raise ValueError unless x is (batch, t_in, *grid, channels) for ``model.cfg``, every grid
    size is a multiple of ``multiple_of`` and at least ``min_size``, and x is finite."""
    c: SurrogateConfig = model.cfg  # type: ignore[assignment]
    name = type(model).__name__
    want = f"(batch, {c.t_in}, {', '.join('n' + 'xyz'[i] for i in range(c.n_dims))}, {c.channels})"
    if x.dim() != c.n_dims + 3 or x.shape[1] != c.t_in or x.shape[-1] != c.channels:
        raise ValueError(f"{name}: expected x of shape {want}, got {tuple(x.shape)}")
    check_grid_size(model, tuple(x.shape[2:-1]), multiple_of, min_size)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: the input holds NaN or inf values")


def surrogate_config(name: str, **fields: Any) -> SurrogateConfig:
    """The config of registered surrogate ``name`` with ``fields`` set (unknown fields -> ValueError)."""
    return family_config("surrogate", name, **fields)


def config_from_dict(data: dict[str, Any]) -> SurrogateConfig:
    """Rebuild a surrogate config from ``cfg.to_dict()`` (its ``model`` field names the class)."""
    return family_config_from_dict("surrogate", data)


def build_surrogate(cfg: SurrogateConfig) -> nn.Module:
    """The module of ``cfg`` (its registered class called with ``cfg``)."""
    if not isinstance(cfg, SurrogateConfig):
        raise TypeError(f"build_surrogate: expected a SurrogateConfig, got {type(cfg).__name__}")
    return build_family("surrogate", cfg)


def load_surrogate(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A surrogate saved as ``config.json`` + ``model.safetensors`` (never unpickles).

    Raises FileNotFoundError for missing files, ValueError for a bad config or mismatched weights."""
    return load_family("surrogate", folder, device)


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative L2 error per sample: ||pred - target||_2 / ||target||_2 over every axis but the
    first (FactFormer's ``rel_l2_loss``). pred, target: (batch, ...) -> (batch,)."""
    dims = tuple(range(1, target.dim()))
    return ((pred - target).pow(2).sum(dims) / target.pow(2).sum(dims).clamp_min(1e-30)).sqrt()


def predict(model: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The first ``steps`` output frames of one call: (batch, steps, *grid, channels). Models whose
    forward takes ``steps`` (FactFormer's latent marching) compute only those; others are cut."""
    from formers.train.distributed import unwrap

    if getattr(unwrap(model), "takes_steps", False):
        return model(x, steps=steps)
    return model(x)[:, :steps]


def rollout(model: nn.Module, x: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Autoregressive prediction of ``n_frames`` frames from the window x (batch, t_in, *grid, C):
    each call's t_out frames are appended and the last t_in frames form the next input.
    Returns (batch, n_frames, *grid, channels)."""
    out: list[torch.Tensor] = []
    done = 0
    while done < n_frames:
        y = model(x)
        out.append(y)
        done += y.shape[1]
        x = torch.cat([x, y], dim=1)[:, -x.shape[1]:]
    return torch.cat(out, dim=1)[:, :n_frames]
