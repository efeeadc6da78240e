"""WeatherFormer: a transformer encoder over continuous multivariate weather, pretrained by
reconstructing masked variables, and a fine-tuning head for downstream regression.

Paper: Hasan, Roozbehani, Dahleh, "WeatherFormer: A Pretrained Encoder Model for Learning Robust
Weather Representations from Small Datasets", arXiv 2405.17455 (method: input representation,
spatiotemporal encoding, masked-variable pretraining; fine-tuning on soybean yield and influenza).

Encoder (:class:`WeatherFormer`), for weather x: (batch, seq_len, n_vars) (standardised values),
step times ``time`` (batch, seq_len) and ``coords`` (batch, 2) = (lat, lng) degrees:

    x̃ = x with the masked variables set to 0 (the standardised mean)
    h_0 = Linear([x̃, m]) + PE(time, coords)          m: the 0/1 mask indicator per variable
    h = Stack(h_0)                                    bidirectional formers.nn encoder (softmax
                                                      attention through nn/attention/core.py)
    x̂ = Linear(h): (batch, seq_len, n_vars)          reconstruction of every variable

Pretraining (:func:`sample_variable_mask`, :func:`masked_mse`): per sample, a random subset of
``k`` variables, k uniform in [min_masked, max_masked], is hidden at *every* step of the window
(masking at the variable level, as in the paper, so the model learns to infer a missing weather
feature from the others); the loss is the MSE over the hidden entries only.

Fine-tuning (:class:`WeatherRegressor`): the encoder (pretrained or fresh), a pooling over time
(a learned softmax attention pooling, or the mean) and an MLP head to ``n_outputs`` targets;
``freeze_encoder`` trains the head only (the encoder stays in eval mode).

Deviations and choices the paper leaves open (also in docs/papers.md):
* the mask indicator m is an input (``mask_indicator``); the reference code instead multiplies the
  inputs by a learned per-variable scale that is zero for masked variables (and depends on the
  temporal granularity); with standardised inputs a plain zero would be ambiguous with the mean;
* no temporal-granularity embedding (the generated set has one granularity, weeks);
* the backbone is formers' pre-norm block (LayerNorm, GELU MLP) instead of torch's post-norm
  ``TransformerEncoderLayer`` with ReLU; dropout is one rate;
* ``time_encoding='calendar'`` (see :mod:`formers.timeseries.spatiotemporal`) is a formers option;
  ``index`` is the paper's formula;
* the number of masked variables per sample (k uniform in [1, n_vars/2] by default) is not stated
  in the notes this follows; sizes are small (d_model 64, 3 layers) for CPU runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.config import Config
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.transformer import Stack
from formers.registry import Paper, get, register
from formers.timeseries.spatiotemporal import TIME_ENCODINGS, SpatiotemporalEncoding

PAPER = Paper("WeatherFormer: A Pretrained Encoder Model for Learning Robust Weather Representations "
              "from Small Datasets", "2405.17455", "method: spatiotemporal encoding, masked-variable pretraining")
POOLINGS = ("attention", "mean")


def _positive_ints(owner: str, obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{owner}.{name} must be an int > 0, got {v!r}")


@dataclass
class WeatherFormerConfig(Config):
    """Shape of the encoder. ``model`` (registry kind ``weather`` name), ``n_vars`` weather
    variables, ``d_model`` (a multiple of 4 and of n_heads), ``n_heads``, ``n_layers``, ``d_ff``
    (None = 4 d_model), ``max_seq_len`` (longest window), ``dropout``, ``time_encoding``
    (``index`` = the paper's, ``calendar``), ``n_diurnal`` (calendar daily harmonics),
    ``mask_indicator`` (feed the 0/1 mask beside the values).

    Raises ValueError naming the field for any value outside its range."""

    model: str = "weatherformer"
    n_vars: int = 8
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    d_ff: int | None = None
    max_seq_len: int = 64
    dropout: float = 0.1
    time_encoding: str = "index"
    n_diurnal: int = 0
    mask_indicator: bool = True

    def __post_init__(self) -> None:
        o = "WeatherFormerConfig"
        if self.model != "weatherformer":
            raise ValueError(f"{o}.model must be 'weatherformer', got {self.model!r}")
        _positive_ints(o, self, ("n_vars", "d_model", "n_heads", "n_layers", "max_seq_len"))
        if self.d_ff is not None:
            _positive_ints(o, self, ("d_ff",))
        if self.d_model % 4 or self.d_model % self.n_heads:
            raise ValueError(f"{o}.d_model = {self.d_model} must be a multiple of 4 (the positional code's "
                             f"groups) and of n_heads = {self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{o}.dropout must be in [0, 1), got {self.dropout!r}")
        if self.time_encoding not in TIME_ENCODINGS:
            raise ValueError(f"{o}.time_encoding = {self.time_encoding!r} is not one of {list(TIME_ENCODINGS)}")
        if not isinstance(self.n_diurnal, int) or not 0 <= self.n_diurnal < self.d_model // 4:
            raise ValueError(f"{o}.n_diurnal must be an int in [0, d_model/4 - 1 = {self.d_model // 4 - 1}], "
                             f"got {self.n_diurnal!r}")
        if self.n_diurnal and self.time_encoding != "calendar":
            raise ValueError(f"{o}.n_diurnal = {self.n_diurnal} needs time_encoding='calendar'")


@register("weather", "weatherformer", config=WeatherFormerConfig, paper=PAPER,
          summary="WeatherFormer encoder: continuous inputs, spatiotemporal code, masked-variable reconstruction")
class WeatherFormer(nn.Module):
    """The WeatherFormer encoder with its reconstruction head (module doc).

    ``forward(x, time, coords, var_mask=None)``: x (batch, seq_len, n_vars), time (batch, seq_len),
    coords (batch, 2) lat/lng degrees, var_mask (batch, n_vars) or (batch, seq_len, n_vars) bool,
    True = hidden -> reconstruction (batch, seq_len, n_vars). ``encode`` returns the hidden states
    (batch, seq_len, d_model). Hidden inputs never reach the network (NaN there is fine).
    Raises ValueError for inputs of the wrong shape or a window longer than max_seq_len.
    """

    def __init__(self, cfg: WeatherFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.n_vars * (2 if cfg.mask_indicator else 1)
        self.in_proj = nn.Linear(width, cfg.d_model)
        self.position = SpatiotemporalEncoding(cfg.d_model, cfg.time_encoding, cfg.n_diurnal)
        self.drop = nn.Dropout(cfg.dropout)
        mcfg = ModelConfig(arch="encoder", d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                           d_ff=cfg.d_ff, max_seq_len=cfg.max_seq_len, position="none", dropout=cfg.dropout)
        self.encoder = Stack(mcfg, cfg.n_layers, causal=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.n_vars)

    def _check(self, x: torch.Tensor, time: torch.Tensor, var_mask: torch.Tensor | None) -> torch.Tensor:
        c = self.cfg
        if x.dim() != 3 or x.shape[-1] != c.n_vars or not 1 <= x.shape[1] <= c.max_seq_len:
            raise ValueError(f"WeatherFormer: x must be (batch, seq_len <= {c.max_seq_len}, n_vars = {c.n_vars}), "
                             f"got {tuple(x.shape)}")
        if time.shape != x.shape[:2]:
            raise ValueError(f"WeatherFormer: time must be (batch, seq_len) = {tuple(x.shape[:2])}, "
                             f"got {tuple(time.shape)}")
        if var_mask is None:
            return torch.zeros_like(x, dtype=torch.bool)
        if var_mask.dtype != torch.bool:
            raise ValueError(f"WeatherFormer: var_mask must be bool (True = hidden), got {var_mask.dtype}")
        if var_mask.shape == (x.shape[0], c.n_vars):
            var_mask = var_mask[:, None, :]
        if var_mask.dim() != 3 or var_mask.shape[0] != x.shape[0] or var_mask.shape[2] != c.n_vars \
                or var_mask.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"WeatherFormer: var_mask must be (batch, n_vars) or (batch, seq_len, n_vars), "
                             f"got {tuple(var_mask.shape)} for x {tuple(x.shape)}")
        return var_mask.expand_as(x)

    def encode(self, x: torch.Tensor, time: torch.Tensor, coords: torch.Tensor,
               var_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = self._check(x, time, var_mask)
        v = torch.where(m, torch.zeros((), dtype=x.dtype, device=x.device), x)
        inp = torch.cat([v, m.to(x.dtype)], -1) if self.cfg.mask_indicator else v
        h = self.drop(self.in_proj(inp) + self.position(time, coords).to(x.device))
        ctx = Context(positions=torch.arange(h.shape[1], device=h.device), causal=False)
        return self.encoder(h, ctx)

    def forward(self, x: torch.Tensor, time: torch.Tensor, coords: torch.Tensor,
                var_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_proj(self.encode(x, time, coords, var_mask))


def sample_variable_mask(batch: int, n_vars: int, min_masked: int, max_masked: int,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n_vars) bool: row b hides k_b variables, k_b uniform in [min_masked, max_masked],
    the variables chosen uniformly without replacement. Raises ValueError unless
    1 <= min_masked <= max_masked <= n_vars."""
    if not 1 <= min_masked <= max_masked <= n_vars:
        raise ValueError(f"sample_variable_mask: need 1 <= min_masked ({min_masked}) <= max_masked "
                         f"({max_masked}) <= n_vars ({n_vars})")
    k = torch.randint(min_masked, max_masked + 1, (batch, 1), generator=generator)
    rank = torch.rand(batch, n_vars, generator=generator).argsort(1).argsort(1)
    return rank < k


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked entries only.

    pred, target: (batch, seq_len, n_vars); mask: bool, (batch, n_vars) (variable level, every
    step) or (batch, seq_len, n_vars); True = hidden = scored. Unmasked entries of ``target`` do
    not enter the loss at all (not even as NaN). Raises ValueError for mismatched shapes or a
    mask with no True entry.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"masked_mse: pred and target must be one (batch, seq_len, n_vars) shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.dim() == 2:
        mask = mask[:, None, :]
    mask = mask.expand_as(pred)
    n = mask.sum()
    if int(n) == 0:
        raise ValueError("masked_mse: the mask hides no entry; nothing to score")
    err = torch.where(mask, pred.float() - target.float(), torch.zeros((), device=pred.device))
    return err.pow(2).sum() / n


@dataclass
class WeatherRegressorConfig(Config):
    """The fine-tuning model: ``encoder`` (a :class:`WeatherFormerConfig`), ``n_outputs`` targets,
    ``pooling`` (``attention``: learned softmax weights over time; ``mean``), ``hidden`` width of
    the MLP head, ``head_dropout``, ``freeze_encoder`` (train the head only).

    Raises ValueError naming the field for a bad value."""

    model: str = "weatherformer-regressor"
    encoder: WeatherFormerConfig = field(default_factory=WeatherFormerConfig)
    n_outputs: int = 1
    pooling: str = "attention"
    hidden: int = 64
    head_dropout: float = 0.0
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        o = "WeatherRegressorConfig"
        if self.model != "weatherformer-regressor":
            raise ValueError(f"{o}.model must be 'weatherformer-regressor', got {self.model!r}")
        if isinstance(self.encoder, dict):
            self.encoder = WeatherFormerConfig.from_dict(self.encoder)
        if not isinstance(self.encoder, WeatherFormerConfig):
            raise ValueError(f"{o}.encoder must be a WeatherFormerConfig, got {type(self.encoder).__name__}")
        _positive_ints(o, self, ("n_outputs", "hidden"))
        if self.pooling not in POOLINGS:
            raise ValueError(f"{o}.pooling = {self.pooling!r} is not one of {list(POOLINGS)}")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"{o}.head_dropout must be in [0, 1), got {self.head_dropout!r}")
        if not isinstance(self.freeze_encoder, bool):
            raise ValueError(f"{o}.freeze_encoder must be true or false, got {self.freeze_encoder!r}")


@register("weather", "weatherformer-regressor", config=WeatherRegressorConfig, paper=PAPER,
          summary="WeatherFormer encoder + pooling + MLP head for downstream regression (fine-tune or frozen)")
class WeatherRegressor(nn.Module):
    """Downstream regression on a WeatherFormer encoder.

    ``forward(x, time, coords, var_mask=None)``: x (batch, seq_len, n_vars), time (batch, seq_len),
    coords (batch, 2), var_mask (batch, n_vars) bool, True = a variable the downstream data lacks
    (fed as masked, as the paper feeds its 6-variable yield data to the 31-variable encoder)
    -> (batch, n_outputs). ``load_encoder(folder)`` copies the encoder weights of a
    saved WeatherFormer (or WeatherRegressor) whose encoder config equals this one's.
    With ``freeze_encoder`` the encoder has ``requires_grad = False`` and stays in eval mode.
    """

    def __init__(self, cfg: WeatherRegressorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder.d_model
        self.encoder = WeatherFormer(cfg.encoder)
        self.pool = nn.Linear(d, 1) if cfg.pooling == "attention" else None
        self.head = nn.Sequential(nn.Linear(d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.head_dropout),
                                  nn.Linear(cfg.hidden, cfg.n_outputs))
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "WeatherRegressor":
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor, time: torch.Tensor, coords: torch.Tensor,
                var_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder.encode(x, time, coords, var_mask)             # (b, n, d)
        if self.pool is None:
            z = h.mean(1)
        else:
            z = (torch.softmax(self.pool(h), dim=1) * h).sum(1)
        return self.head(z)

    def load_encoder(self, folder: str | Path) -> None:
        """Copy the encoder weights of the saved model in ``folder`` (config.json + model.safetensors).

        Raises FileNotFoundError for missing files and ValueError when its encoder config differs."""
        src = load_weather_model(folder)
        enc = src.encoder if isinstance(src, WeatherRegressor) else src
        if enc.cfg.to_dict() != self.cfg.encoder.to_dict():
            diff = {k: (v, self.cfg.encoder.to_dict()[k]) for k, v in enc.cfg.to_dict().items()
                    if self.cfg.encoder.to_dict()[k] != v}
            raise ValueError(f"{folder}: its encoder config differs from this model's (saved, here): {diff}")
        self.encoder.load_state_dict(enc.state_dict())


def weather_config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a ``weather`` model config from ``cfg.to_dict()`` (its ``model`` names the entry)."""
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"a weather model config needs a 'model' field, got {data!r:.200}")
    entry = get("weather", data["model"])
    return entry.config.from_dict(data)


def build_weather_model(cfg: Config) -> nn.Module:
    """The registered ``weather`` module of ``cfg`` (its ``model`` field names it)."""
    entry = get("weather", getattr(cfg, "model", ""))
    if not isinstance(cfg, entry.config):
        raise TypeError(f"build_weather_model: {entry.name!r} takes a {entry.config.__name__}, "
                        f"got {type(cfg).__name__}")
    return entry.obj(cfg)


def load_weather_model(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A WeatherFormer or WeatherRegressor saved with :func:`formers.nn.io.save_model`.

    Raises FileNotFoundError for missing files, ValueError for a bad config or mismatched weights."""
    from safetensors.torch import load_model as st_load

    folder = Path(folder)
    paths = [folder / "config.json", folder / "model.safetensors"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (a saved weather model holds config.json and model.safetensors)")
    try:
        model = build_weather_model(weather_config_from_dict(json.loads(paths[0].read_text())))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{paths[0]} is not a valid weather model config: {e}") from None
    try:
        st_load(model, str(paths[1]), strict=True, device=str(device))
    except Exception as e:  # safetensors raises its own types for corrupt files / shapes
        raise ValueError(f"cannot load {paths[1]}: {e}") from None
    return model.to(device)
