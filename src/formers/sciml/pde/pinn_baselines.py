"""The point-wise baselines of the PINNsFormer paper: a plain PINN MLP, QRes and First-Layer-Sine.

Paper: Zhao, Ding, Prakash, "PINNsFormer", arXiv 2307.11833, §4 (baselines; reference code
``model/pinn.py``, ``model/qres.py``, ``model/fls.py``). The baselines themselves come from:
Raissi, Perdikaris, Karniadakis, "Physics-informed neural networks" (J. Comput. Phys. 2019,
arXiv 1711.10561); Bu & Karpatne, "Quadratic residual networks" (SDM 2021, arXiv 2101.08366);
Wong et al., "Learning in sinusoidal spaces with physics-informed neural networks" (first-layer
sine, arXiv 2109.09338).

Every baseline maps coordinates point by point: x (..., d_in) -> (..., d_out); the PINN tasks feed
them sequences of length k = 1, (batch, 1, d_in). Initialisation as the reference's
``init_weights`` (xavier-uniform weights, bias 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from formers.registry import Paper, register
from formers.sciml.pde.pinnsformer import KIND, PINNConfig, _check_int, check_coordinates, init_reference

PINN_PAPER = Paper("Physics-informed neural networks (baseline of PINNsFormer, arXiv 2307.11833 §4)",
                   "1711.10561", "tanh MLP, reference model/pinn.py")
QRES_PAPER = Paper("Quadratic residual networks (baseline of PINNsFormer, arXiv 2307.11833 §4)",
                   "2101.08366", "sigma(H1 x * H2 x + H1 x), reference model/qres.py")
FLS_PAPER = Paper("Learning in sinusoidal spaces with physics-informed neural networks (first-layer "
                  "sine; baseline of PINNsFormer, arXiv 2307.11833 §4)", "2109.09338",
                  "reference model/fls.py")


@dataclass
class MLPConfig(PINNConfig):
    """A baseline's shape: ``d_hidden`` width, ``n_layers`` linear layers (the reference's
    ``num_layer``: n_layers - 1 hidden layers and the output layer; QRes: n_layers quadratic
    blocks and the output layer). Raises ValueError for a size that is not an int > 0 (n_layers
    >= 2 for the MLPs)."""

    model: str = "pinn"
    d_hidden: int = 512
    n_layers: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(type(self).__name__, d_hidden=self.d_hidden, n_layers=self.n_layers)
        if self.model in ("pinn", "fls") and self.n_layers < 2:
            raise ValueError(f"{type(self).__name__}.n_layers must be >= 2 for {self.model!r} (hidden "
                             f"layers + output layer), got {self.n_layers}")


@dataclass
class QResConfig(MLPConfig):
    """QRes's shape (defaults: the reaction notebook's width 256, 4 layers)."""

    model: str = "qres"
    d_hidden: int = 256


@dataclass
class FLSConfig(MLPConfig):
    """First-Layer-Sine's shape (defaults: width 512, 4 layers)."""

    model: str = "fls"


class _PointMLP(nn.Module):
    """Linear -> first_act -> (Linear -> tanh) x (n_layers - 2) -> Linear: x (..., d_in) -> (..., d_out)."""

    first_act: type[nn.Module] = nn.Tanh

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.d_hidden
        layers: list[nn.Module] = [nn.Linear(cfg.d_in, h), self.first_act()]
        for _ in range(cfg.n_layers - 2):
            layers += [nn.Linear(h, h), nn.Tanh()]
        layers.append(nn.Linear(h, cfg.d_out))
        self.net = nn.Sequential(*layers)
        init_reference(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_coordinates(self, x, sequence=False)
        return self.net(x)


@register(KIND, "pinn", config=MLPConfig, paper=PINN_PAPER,
          summary="PINN baseline: tanh MLP of the coordinates (3 x 512 hidden)")
class PINNMLP(_PointMLP):
    """The plain PINN: a tanh MLP. x (..., d_in) -> u (..., d_out). Raises ValueError for input of
    another last dimension or holding NaN/inf."""


class Sine(nn.Module):
    """sin(x), element-wise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


@register(KIND, "fls", config=FLSConfig, paper=FLS_PAPER,
          summary="First-Layer-Sine baseline: sin after the first layer, tanh after the others")
class FirstLayerSine(_PointMLP):
    """First-Layer-Sine: the PINN MLP with sin as the first activation. x (..., d_in) ->
    u (..., d_out). Raises ValueError for input of another last dimension or holding NaN/inf."""

    first_act = Sine


class QResBlock(nn.Module):
    """sigmoid(H1 x * H2 x + H1 x): x (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.h1 = nn.Linear(d_in, d_out)
        self.h2 = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.h1(x)
        return torch.sigmoid(a * self.h2(x) + a)


@register(KIND, "qres", config=QResConfig, paper=QRES_PAPER,
          summary="QRes baseline: quadratic residual blocks sigma(H1 x * H2 x + H1 x)")
class QRes(nn.Module):
    """QRes: an input block (d_in -> d_hidden), n_layers - 1 blocks (d_hidden -> d_hidden), then
    Linear(d_hidden, d_out), as the reference. x (..., d_in) -> u (..., d_out). Raises ValueError
    for input of another last dimension or holding NaN/inf."""

    def __init__(self, cfg: QResConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.Sequential(QResBlock(cfg.d_in, cfg.d_hidden),
                                    *(QResBlock(cfg.d_hidden, cfg.d_hidden) for _ in range(cfg.n_layers - 1)))
        self.out = nn.Linear(cfg.d_hidden, cfg.d_out)
        init_reference(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_coordinates(self, x, sequence=False)
        return self.out(self.blocks(x))
