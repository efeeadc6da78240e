"""PINNsFormer: the pseudo-sequence generator, the Wavelet activation and the encoder-decoder model.

Paper: Zhao, Ding, Prakash, "PINNsFormer: A Transformer-Based Framework For Physics-Informed Neural
Networks", ICLR 2024, arXiv 2307.11833, §3 (pseudo-sequence generator, spatio-temporal mixer,
encoder-decoder, Wavelet activation); reference code AdityaLab/pinnsformer (``model/pinnsformer.py``,
``util.py``), read for understanding only.

Every physics-informed model here (registry kind ``pinn``) maps coordinates to fields:
``forward(x: (batch, k, d_in)) -> (batch, k, d_out)`` with the time coordinate in the **last**
input column. PINNsFormer reads a pseudo-sequence of k points [x, t + i*dt] (i < k) and mixes them
with attention; the point-wise baselines (:mod:`formers.sciml.pde.pinn_baselines`) take k = 1.
:func:`pseudo_sequence` turns collocation points into the model's input.

Deviations from the reference (named in ``docs/papers.md``):

* attention is the project's :class:`~formers.nn.attention.softmax.SoftmaxAttention` (separate
  q/k/v/o projections with biases, the same 4 d^2 + 4 d parameters as ``nn.MultiheadAttention``),
  run on its reference path: the fused SDPA kernels have no double backward, and the PDE
  residuals differentiate the output with respect to the input before the weight gradient;
* the fused ``in_proj`` of ``nn.MultiheadAttention`` is one (3 d, d) matrix; here it is three
  (d, d) layers q, k, v, filled from one ``xavier_uniform_`` draw over a (3 d, d) matrix (zero bias).

Initialisation replays the reference's draws from the global torch RNG (:func:`reference_draws`):
the notebooks seed, build ``PINNsformer`` (each ``nn.Linear`` draws its default init,
``nn.MultiheadAttention`` draws its ``in_proj`` with xavier) and then ``apply(init_weights)``
(xavier on every ``nn.Linear``, bias 0.01). The same seed therefore gives the reference's initial
weights exactly (for a model built on the CPU, as the Trainer builds it). This matters: at the
paper's size the reaction problem falls into the trivial solution u ~ 0 (rMAE 0.98, loss 0.1975)
from some initial draws, e.g. the one this module's older layout-order init gave at seed 0, while
the reference's seed-0 draw converges (rMAE 0.07 after 3 L-BFGS steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.config import Config
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.family import build_family, family_config, family_config_from_dict, load_family
from formers.registry import Paper, register
from formers.train.distributed import unwrap

PAPER = Paper("PINNsFormer: A Transformer-Based Framework For Physics-Informed Neural Networks",
              "2307.11833", "§3 (pseudo-sequence generator, encoder-decoder, Wavelet activation)")
KIND = "pinn"


# ------------------------------------------------------------------------------------------------
# Configs and the family interface


def _check_int(owner: str, **values: Any) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{owner}.{name} must be an int > 0, got {v!r}")


@dataclass
class PINNConfig(Config):
    """Shape shared by every ``pinn`` model: ``model`` (registry name), ``d_in`` input coordinates
    (time last: (x, t) = 2, (x, y, t) = 3) and ``d_out`` output fields.

    Point-wise models read sequences of length :attr:`k` = 1. Raises ValueError (naming the
    field and the value) for an empty model name or a size that is not an int > 0."""

    model: str = ""
    d_in: int = 2
    d_out: int = 1

    def __post_init__(self) -> None:
        o = type(self).__name__
        if not self.model:
            raise ValueError(f"{o}.model must name a registered pinn model")
        _check_int(o, d_in=self.d_in, d_out=self.d_out)

    @property
    def k(self) -> int:
        """Pseudo-sequence length the model reads (1 for point-wise models)."""
        return 1

    @property
    def dt(self) -> float:
        """Pseudo time step (unused at k = 1)."""
        return 1.0


@dataclass
class PINNsFormerConfig(PINNConfig):
    """PINNsFormer's shape (defaults: the paper's 1-D config, 453,561 parameters).

    d_model: embedding width (32). n_heads: attention heads (2). d_ff: width of the Wavelet
    feed-forward inside each layer (256). d_hidden: width of the Wavelet output head (512).
    n_layers: encoder layers = decoder layers (N = 1). k: pseudo-sequence length (5). dt: pseudo
    time step Δt (1e-4 for the 1-D problems, 1e-2 for Navier-Stokes).

    Raises ValueError for a non-positive size, d_model not divisible by n_heads, or dt that is
    not a finite number > 0.
    """

    model: str = "pinnsformer"
    d_model: int = 32
    n_heads: int = 2
    d_ff: int = 256
    d_hidden: int = 512
    n_layers: int = 1
    k: int = 5  # type: ignore[assignment]
    dt: float = 1e-4  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        o = type(self).__name__
        _check_int(o, d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff,
                   d_hidden=self.d_hidden, n_layers=self.n_layers, k=self.k)
        if self.d_model % self.n_heads:
            raise ValueError(f"{o}.d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}")
        check_dt(o, self.dt)


def check_dt(owner: str, dt: Any) -> None:
    """Raise ValueError unless ``dt`` is a finite number > 0."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"{owner}.dt must be a finite number > 0, got {dt!r}")


def pinn_config(name: str, **fields: Any) -> PINNConfig:
    """The config of registered ``pinn`` model ``name`` with ``fields`` set (ValueError for an
    unknown name or field)."""
    return family_config(KIND, name, **fields)


def pinn_config_from_dict(data: dict[str, Any]) -> PINNConfig:
    """Rebuild a ``pinn`` config from its ``to_dict()``."""
    return family_config_from_dict(KIND, data)


def build_pinn(cfg: PINNConfig) -> nn.Module:
    """The ``pinn`` module of ``cfg``."""
    return build_family(KIND, cfg)


def load_pinn(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A ``pinn`` model saved as ``config.json`` + ``model.safetensors``."""
    return load_family(KIND, folder, device)


def check_coordinates(model: nn.Module, x: torch.Tensor, sequence: bool) -> None:
    """Raise ValueError unless ``x`` is (batch, k, d_in) (``sequence``) or (..., d_in) for
    ``model.cfg`` and holds no NaN or inf."""
    c: PINNConfig = model.cfg  # type: ignore[assignment]
    name = type(model).__name__
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor of coordinates, got {type(x).__name__}")
    if sequence and (x.dim() != 3 or x.shape[1] != c.k or x.shape[2] != c.d_in):
        raise ValueError(f"{name}: expected x of shape (batch, k={c.k}, d_in={c.d_in}), got {tuple(x.shape)}")
    if not sequence and (x.dim() < 1 or x.shape[-1] != c.d_in):
        raise ValueError(f"{name}: expected x of shape (..., d_in={c.d_in}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: the input coordinates hold NaN or inf values")


def init_reference(module: nn.Module) -> None:
    """The reference's ``init_weights``: ``xavier_uniform_`` on every ``nn.Linear`` weight, bias 0.01."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0.01)


@torch.no_grad()
def reference_draws(model: "PINNsFormer") -> None:
    """Initialise ``model`` with the reference's sequence of draws from the global torch RNG.

    The reference (``model/pinnsformer.py`` + the notebooks' ``model.apply(init_weights)``) draws,
    in this order:

    1. construction: ``linear_emb``'s default ``nn.Linear`` init; for the encoder, then the
       decoder, **one** layer (``get_clones`` deep-copies it N times, so every layer starts from
       the same construction draws): ``out_proj``'s default init, ``in_proj_weight`` (3 d, d) by
       ``xavier_uniform_``, the feed-forward's three ``nn.Linear`` default inits; the head's three
       ``nn.Linear`` default inits;
    2. ``apply(init_weights)`` (children first): ``xavier_uniform_`` on the weight of the embedding,
       then per encoder layer ``out_proj`` and the three feed-forward layers, the same per decoder
       layer, then the head's three layers; every ``nn.Linear`` bias is set to 0.01.

    What survives: the xavier draws of step 2 for every ``nn.Linear`` and the construction
    ``in_proj`` (split into q, k, v; bias 0). Replayed from the same RNG state, the weights equal
    the reference's bit for bit and the RNG ends in the same state. (The notebooks move the model
    to the GPU before ``apply``, so their own xavier draws come from the CUDA generator; the CPU
    stream replayed here is the reference run on the CPU, and the Trainer builds on the CPU.)

    Args:
        model: a :class:`PINNsFormer` (its parameters on the CPU for the reference's CPU stream).
    """
    d = model.cfg.d_model
    model.embed.reset_parameters()  # construction draws (values overwritten below, except in_proj)
    in_proj = {}
    for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        first = stack[0]
        first.attn.o.reset_parameters()
        w = torch.empty(3 * d, d, dtype=first.attn.q.weight.dtype, device=first.attn.q.weight.device)
        nn.init.xavier_uniform_(w)
        in_proj[name] = w
        for i in (0, 2, 4):
            first.ff[i].reset_parameters()
    for i in (0, 2, 4):
        model.head[i].reset_parameters()
    linears = [model.embed]
    for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for layer in stack:
            linears += [layer.attn.o, layer.ff[0], layer.ff[2], layer.ff[4]]
            for j, proj in enumerate((layer.attn.q, layer.attn.k, layer.attn.v)):
                proj.weight.copy_(in_proj[name][j * d:(j + 1) * d])
                proj.bias.zero_()
    linears += [model.head[0], model.head[2], model.head[4]]
    for lin in linears:  # apply(init_weights)
        nn.init.xavier_uniform_(lin.weight)
        nn.init.constant_(lin.bias, 0.01)


# ------------------------------------------------------------------------------------------------
# Pseudo-sequence generator


def make_time_sequence(points: torch.Tensor, k: int, dt: float) -> torch.Tensor:
    """The pseudo-sequence of every point: [p, p + dt e_t, ..., p + (k-1) dt e_t].

    Args:
        points: (n_points, d_in) coordinates, time in the last column.
        k: sequence length (int >= 1). dt: pseudo time step Δt (finite, > 0).
    Returns:
        (n_points, k, d_in): the spatial columns repeated, time t + i*dt at position i.
    Raises:
        TypeError: ``points`` is not a floating-point tensor.
        ValueError: ``points`` not 2-D, holding NaN/inf, ``k`` not an int >= 1, ``dt`` not > 0.

    Paper §3 (pseudo-sequence generator); reference ``util.make_time_sequence``.
    """
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise TypeError(f"make_time_sequence: points must be a floating-point tensor, got "
                        f"{type(points).__name__}")
    if points.dim() != 2 or points.shape[1] < 1:
        raise ValueError(f"make_time_sequence: points must be (n_points, d_in), got {tuple(points.shape)}")
    _check_int("make_time_sequence", k=k)
    check_dt("make_time_sequence", dt)
    if not torch.isfinite(points).all():
        raise ValueError("make_time_sequence: points hold NaN or inf values")
    seq = points[:, None, :].repeat(1, k, 1)
    steps = torch.arange(k, device=points.device, dtype=points.dtype) * dt
    seq[:, :, -1] = seq[:, :, -1] + steps
    return seq


def pseudo_sequence(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """``points`` (n_points, d_in) as the input of ``model``: (n_points, k, d_in) with the model's
    own ``cfg.k`` and ``cfg.dt`` (k = 1 for point-wise models); DDP / compile wrappers are seen through."""
    cfg = unwrap(model).cfg
    return make_time_sequence(points, cfg.k, cfg.dt)


# ------------------------------------------------------------------------------------------------
# Model


class Wavelet(nn.Module):
    """The Wavelet activation W(x) = ω1 sin(x) + ω2 cos(x) with learnable scalars ω1, ω2
    (both 1 at initialisation). Element-wise: any shape in, the same shape out.

    Paper §3 (Wavelet activation); reference ``WaveAct``. Every use is its own instance."""

    def __init__(self, omega1: float = 1.0, omega2: float = 1.0) -> None:
        super().__init__()
        self.omega1 = nn.Parameter(torch.full((1,), float(omega1)))
        self.omega2 = nn.Parameter(torch.full((1,), float(omega2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.omega1 * torch.sin(x) + self.omega2 * torch.cos(x)


class WaveletMLP(nn.Sequential):
    """Linear(d_in, width) -> Wavelet -> Linear(width, width) -> Wavelet -> Linear(width, d_out):
    the feed-forward of each layer (width d_ff) and the output head (width d_hidden).
    x: (..., d_in) -> (..., d_out)."""

    def __init__(self, d_in: int, width: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, width), Wavelet(), nn.Linear(width, width), Wavelet(),
                         nn.Linear(width, d_out))


class PINNsFormerLayer(nn.Module):
    """One encoder (self-attention) or decoder (cross-attention) layer; x: (batch, k, d_model).

    x <- x + Attn(W1(x)) ; x <- x + FF(W2(x)), with Wavelets W1, W2 in the place of pre-norms.
    A decoder layer has no self-attention: its queries W1(x) attend to the encoder output
    ``ctx.memory`` (keys and values are the encoder output itself, as in the reference)."""

    def __init__(self, attn_cfg: ModelConfig, d_ff: int, cross: bool) -> None:
        super().__init__()
        self.act1 = Wavelet()
        self.attn = SoftmaxAttention(attn_cfg, cross=cross, backend="reference")
        self.act2 = Wavelet()
        self.ff = WaveletMLP(attn_cfg.d_model, d_ff, attn_cfg.d_model)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = x + self.attn(self.act1(x), ctx)
        return x + self.ff(self.act2(x))


@register(KIND, "pinnsformer", config=PINNsFormerConfig, paper=PAPER,
          summary="PINNsFormer: encoder-decoder over the pseudo-sequence (x, t + i dt), Wavelet activations")
class PINNsFormer(nn.Module):
    """PINNsFormer: x (batch, k, d_in) -> u (batch, k, d_out), the fields at every pseudo-time point.

    Embedding Linear(d_in, d_model) of the concatenated coordinates (no positional encoding);
    encoder: n_layers self-attention layers, then a Wavelet; decoder: n_layers layers whose queries
    come from the **same embedded input** and attend to the encoder output, then a Wavelet; head:
    :class:`WaveletMLP` (d_model -> d_hidden -> d_hidden -> d_out). Attention mixes the k points of
    one sequence only, never across the batch. Predictions for a point are ``out[:, 0]``.

    Initialisation as the reference, draw for draw (:func:`reference_draws`: xavier-uniform
    weights, bias 0.01; attention q/k/v from one fused (3 d_model, d_model) xavier matrix with zero
    bias, the same in every layer of a stack as the reference's deep-copied layers); Wavelets at
    ω1 = ω2 = 1. Seed s gives the reference notebooks' initial weights of seed s (CPU stream).

    Raises ValueError (forward) for input of another shape or holding NaN/inf.
    Paper: arXiv 2307.11833 §3, Fig. 2. Deviations: see the module docstring.
    """

    def __init__(self, cfg: PINNsFormerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, PINNsFormerConfig):
            raise TypeError(f"PINNsFormer needs a PINNsFormerConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # the layers' own default init must not move the RNG:
            self._build(cfg)                     # reference_draws replays the reference's draws
        reference_draws(self)

    def _build(self, cfg: PINNsFormerConfig) -> None:
        attn_cfg = ModelConfig(arch="encoder-decoder", d_model=cfg.d_model, n_heads=cfg.n_heads,
                               n_layers=cfg.n_layers, max_seq_len=cfg.k, position="none",
                               bias=True, dropout=0.0)
        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        self.encoder = nn.ModuleList(PINNsFormerLayer(attn_cfg, cfg.d_ff, cross=False)
                                     for _ in range(cfg.n_layers))
        self.encoder_act = Wavelet()
        self.decoder = nn.ModuleList(PINNsFormerLayer(attn_cfg, cfg.d_ff, cross=True)
                                     for _ in range(cfg.n_layers))
        self.decoder_act = Wavelet()
        self.head = WaveletMLP(cfg.d_model, cfg.d_hidden, cfg.d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_coordinates(self, x, sequence=True)
        src = self.embed(x)
        positions = torch.arange(x.shape[1], device=x.device)
        e = src
        for layer in self.encoder:
            e = layer(e, Context(positions=positions, causal=False))
        e = self.encoder_act(e)
        d = src
        ctx = Context(positions=positions, causal=False, memory=e)
        for layer in self.decoder:
            d = layer(d, ctx)
        return self.head(self.decoder_act(d))
