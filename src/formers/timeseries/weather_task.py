"""Tasks ``weather-pretrain`` and ``weather-finetune``: WeatherFormer's masked-variable pretraining
and downstream fine-tuning on the generated seasonal weather set
(:mod:`formers.timeseries.weather_data`; the paper's NASA POWER data is not available offline).

    formers train weather-pretrain --out runs/wf-pre
    formers train weather-finetune --opt init=runs/wf-pre --opt n_labelled=64 --out runs/wf-ft
    formers train weather-finetune --opt n_labelled=64 --out runs/wf-scratch      # from scratch
    formers train weather-finetune --opt init=runs/wf-pre --opt freeze=true ...   # frozen encoder
    formers train weather-finetune --opt init=runs/wf-pre --opt observed=T2M_MAX,T2M_MIN,PRECTOT ...

``init`` takes a run folder of ``weather-pretrain`` (its ``best/`` weights if it kept any, else
its latest checkpoint) or any saved weather model folder (``config.json`` + ``model.safetensors``);
the encoder's shape then comes from that folder. Models are registry kind ``weather``
(:mod:`formers.timeseries.weatherformer`), built by the task from their own config class.

Pretraining: windows of ``seq_len`` weeks (default 52) at a random archive location and start
week (the last ``val_years`` years held out), each with its own random set of k hidden variables
(k uniform in [min_masked, max_masked]); loss and ``val_loss`` = MSE over the hidden entries
(standardised units; predicting the mean scores about 1, recorded as ``zero_mse`` in the run's
task description). Validation: ``val_windows`` fixed windows and masks from the held-out years.

Fine-tuning: one calendar year (52 weeks from Jan 1) of a crop location -> the yield proxy
(standardised); with ``observed`` only those variables are given and the others are fed as
masked (the paper fine-tunes its 31-variable encoder on 6-variable yield data this way). The
labelled training set is the first ``n_labelled`` rows of the shuffled pool;
validation (64) and test (256) rows are fixed by the data seed. Metrics: ``val_mse``, ``val_r2``,
``test_mse``, ``test_r2`` (R² = 1 - SSE/SST over the split); early stopping and the best
evaluation use ``val_mse``; ``metric`` (what compare tabulates) is ``test_mse``.

Default budgets (those of ``benchmarks/weatherformer_pretrain.py``): pretraining 600 AdamW steps
of batch 32 (lr 1e-3, 50 warm-up steps, cosine to 1e-4, weight decay 0.01, evaluation every 100
steps); fine-tuning 150 steps of batch 32 (same optimiser, 20 warm-up steps), evaluation every 15
steps and early stopping after 6 evaluations without a better ``val_mse``.

Times passed to the positional code: the day of year at mid-week (``time_encoding='calendar'``,
the default here, see :mod:`formers.timeseries.spatiotemporal`) or the step index 0..seq_len-1
(``index``, the paper's formula).
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import register
from formers.timeseries import weather_data as W
from formers.timeseries.spatiotemporal import TIME_ENCODINGS
from formers.timeseries.weatherformer import (PAPER, WeatherFormerConfig, WeatherRegressor,
                                              WeatherRegressorConfig, build_weather_model, load_weather_model,
                                              masked_mse, sample_variable_mask, weather_config_from_dict)
from formers.train.config import TrainConfig
from formers.train.task import Task

_SPLITS: dict[tuple, W.WeatherSplits] = {}


def weather_splits(cfg: W.WeatherSetConfig) -> W.WeatherSplits:
    """:func:`~formers.timeseries.weather_data.make_weather_splits`, generated once per config
    in a process (the arrays are shared: treat them as read-only)."""
    key = tuple(sorted(cfg.to_dict().items()))
    if key not in _SPLITS:
        _SPLITS[key] = W.make_weather_splits(cfg)
    return _SPLITS[key]


def small_encoder(seq_len: int, time_encoding: str) -> WeatherFormerConfig:
    """The tasks' default encoder, sized for CPU runs: d_model 32, 2 layers, 4 heads, dropout 0.1."""
    return WeatherFormerConfig(n_vars=len(W.VARIABLES), d_model=32, n_heads=4, n_layers=2,
                               max_seq_len=seq_len, dropout=0.1, time_encoding=time_encoding)


def step_times(n: int, time_encoding: str, start_week: np.ndarray | None = None) -> np.ndarray:
    """(batch, n) times of weekly steps: mid-week day of year (``calendar``) or 0..n-1 (``index``)."""
    start = np.zeros(1, dtype=np.int64) if start_week is None else np.asarray(start_week)
    if time_encoding == "index":
        return np.broadcast_to(np.arange(n, dtype=np.float32), (len(start), n)).copy()
    weeks = (start[:, None] + np.arange(n)[None, :]) % W.WEEKS
    return W.week_days()[weeks].astype(np.float32)


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block (its mode restored after)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((pred - y) ** 2).sum()) / max(sst, 1e-12)


class _WeatherTask(Task):
    """Shared data options: ``n_archive``, ``n_crop``, ``n_years``, ``data_seed`` (the generated
    set; see :class:`~formers.timeseries.weather_data.WeatherSetConfig`)."""

    def __init__(self, seed: int, n_archive: int, n_crop: int, n_years: int, data_seed: int) -> None:
        super().__init__(seed)
        self.set_cfg = W.WeatherSetConfig(n_archive=n_archive, n_crop=n_crop, n_years=n_years, seed=data_seed)
        self.data = weather_splits(self.set_cfg)

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        return weather_config_from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        return load_weather_model(folder)

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["x"].shape[0])  # windows / samples


def _check_time_encoding(value: str) -> None:
    if value not in TIME_ENCODINGS:
        raise ValueError(f"time_encoding must be one of {list(TIME_ENCODINGS)}, got {value!r}")


@register("task", "weather-pretrain", paper=PAPER,
          summary="WeatherFormer masked-variable pretraining on generated seasonal weather; val_loss = masked MSE")
class WeatherPretrainTask(_WeatherTask):
    """Masked-variable pretraining (module doc).

    Options: ``seq_len`` (weeks per window, <= 52 * (n_years - val_years)), ``time_encoding``,
    ``min_masked``/``max_masked`` (hidden variables per window), ``val_windows``, and the data
    options of the generated set. Raises ValueError for a bad option before any work.
    """

    metric = "val_loss"
    default_models = ("weatherformer",)

    def __init__(self, seed: int = 0, seq_len: int = 52, time_encoding: str = "calendar", min_masked: int = 1,
                 max_masked: int = 4, val_windows: int = 256, n_archive: int = 48, n_crop: int = 32,
                 n_years: int = 20, data_seed: int = 0) -> None:
        _check_time_encoding(time_encoding)
        n_vars = len(W.VARIABLES)
        if not 1 <= min_masked <= max_masked <= n_vars:
            raise ValueError(f"weather-pretrain: need 1 <= min_masked ({min_masked}) <= max_masked "
                             f"({max_masked}) <= {n_vars} variables")
        if val_windows <= 0:
            raise ValueError(f"weather-pretrain: val_windows must be > 0, got {val_windows}")
        super().__init__(seed, n_archive, n_crop, n_years, data_seed)
        self.train_weeks = (n_years - self.set_cfg.val_years) * W.WEEKS
        if not 1 <= seq_len <= min(self.train_weeks, self.set_cfg.val_years * W.WEEKS):
            raise ValueError(f"weather-pretrain: seq_len must be in [1, {min(self.train_weeks, self.set_cfg.val_years * W.WEEKS)}] "
                             f"weeks (training and validation years), got {seq_len}")
        self.options = {"seq_len": seq_len, "time_encoding": time_encoding, "min_masked": min_masked,
                        "max_masked": max_masked, "val_windows": val_windows, "n_archive": n_archive,
                        "n_crop": n_crop, "n_years": n_years, "data_seed": data_seed}
        self.seq_len, self.time_encoding = seq_len, time_encoding
        a = self.data.archive
        self.series = torch.from_numpy(a.reshape(a.shape[0], -1, a.shape[-1]))  # (A, n_years*52, V)
        self.coords = torch.from_numpy(self.data.archive_coords)
        rng = np.random.default_rng([data_seed, 17])
        loc = rng.integers(0, a.shape[0], val_windows)
        start = rng.integers(self.train_weeks, self.series.shape[1] - seq_len + 1, val_windows)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        self.val = self._windows(loc, start)
        self.val["mask"] = sample_variable_mask(val_windows, n_vars, min_masked, max_masked, g)
        self.zero_mse = float(masked_mse(torch.zeros_like(self.val["x"]), self.val["x"], self.val["mask"]))

    def _windows(self, loc: np.ndarray, start: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(start)[:, None] + torch.arange(self.seq_len)[None, :]
        x = self.series[torch.from_numpy(loc)[:, None], idx]                  # (b, seq_len, V)
        t = torch.from_numpy(step_times(self.seq_len, self.time_encoding, start))
        return {"x": x, "time": t, "coords": self.coords[torch.from_numpy(loc)]}

    def model_config(self, variant: str = "weatherformer") -> WeatherFormerConfig:
        if variant != "weatherformer":
            raise ValueError(f"weather-pretrain: model must be 'weatherformer', got {variant!r}")
        return small_encoder(self.seq_len, self.time_encoding)

    def build_model(self, cfg: WeatherFormerConfig) -> nn.Module:
        if not isinstance(cfg, WeatherFormerConfig):
            raise ValueError(f"weather-pretrain trains a WeatherFormerConfig model, got {type(cfg).__name__}")
        if cfg.n_vars != len(W.VARIABLES) or cfg.max_seq_len < self.seq_len or cfg.time_encoding != self.time_encoding:
            raise ValueError(f"weather-pretrain: the model has n_vars {cfg.n_vars}, max_seq_len {cfg.max_seq_len}, "
                             f"time_encoding {cfg.time_encoding!r}; the task needs {len(W.VARIABLES)}, >= "
                             f"{self.seq_len}, {self.time_encoding!r}")
        return build_weather_model(cfg)

    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, min_lr_ratio=0.1,
                           weight_decay=0.01, grad_clip=1.0, eval_every=100, eval_batches=1, dtype="fp32")

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Random windows and masks drawn from ``default_rng([seed, step, micro])``."""
        rng = np.random.default_rng([self.seed, step, micro])
        loc = rng.integers(0, self.series.shape[0], batch_size)
        start = rng.integers(0, self.train_weeks - self.seq_len + 1, batch_size)
        out = self._windows(loc, start)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        o = self.options
        out["mask"] = sample_variable_mask(batch_size, len(W.VARIABLES), o["min_masked"], o["max_masked"], g)
        return out

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = model(batch["x"], batch["time"], batch["coords"], batch["mask"])
        return masked_mse(pred, batch["x"], batch["mask"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """Masked MSE over every validation window in eval mode (``n_batches`` is ignored)."""
        sse, count = 0.0, 0
        with eval_mode(model):
            for i in range(0, self.val["x"].shape[0], batch_size):
                b = {k: v[i:i + batch_size].to(device) for k, v in self.val.items()}
                pred = model(b["x"], b["time"], b["coords"], b["mask"])
                k = int(b["mask"].sum()) * self.seq_len
                sse += float(masked_mse(pred, b["x"], b["mask"])) * k
                count += k
        return {"val_loss": sse / count}

    def describe(self) -> dict[str, Any]:
        return {"task": "weather-pretrain", "options": self.options, "data": self.set_cfg.to_dict(),
                "variables": list(W.VARIABLES), "zero_mse": self.zero_mse,
                "origin": "generated (formers.timeseries.weather_data); NASA POWER not available offline"}


def resolve_init(path: str | Path) -> Path:
    """The saved-model folder ``init`` points at: the folder itself when it holds config.json and
    model.safetensors, else a run folder's ``best/``, else its latest checkpoint.
    Raises FileNotFoundError when none exists."""
    from formers.train.checkpoint import find_checkpoint

    path = Path(path)
    for cand in (path, path / "best"):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    ckpt = find_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"init={path}: no saved model there (expected a folder with config.json and "
                                f"model.safetensors, or a run folder with best/ or ckpt/)")
    return ckpt


@register("task", "weather-finetune", paper=PAPER,
          summary="WeatherFormer fine-tuning: yield proxy from one season's weather; test_mse/test_r2, early stop on val_mse")
class WeatherFinetuneTask(_WeatherTask):
    """Downstream regression on the generated crop locations (module doc).

    Options: ``n_labelled`` labelled training rows (<= the pool), ``init`` (pretrained weights,
    None = from scratch), ``freeze`` (train the head only), ``time_encoding`` (None = the init
    model's, else ``calendar``), ``observed`` (the variables the downstream data has, a list or
    comma string of :data:`~formers.timeseries.weather_data.VARIABLES` names; the others are fed
    as masked, the paper's setting of a few-variable downstream set; None = all), and the data
    options. Raises ValueError / FileNotFoundError for a
    bad option or a missing/mismatched init before any training.
    """

    metric = "test_mse"
    select_metric = "val_mse"
    report_metrics = ("test_r2", "val_mse")
    default_models = ("weatherformer-regressor",)

    def __init__(self, seed: int = 0, n_labelled: int = 64, init: str | None = None, freeze: bool = False,
                 time_encoding: str | None = None, observed: str | list[str] | None = None, n_archive: int = 48,
                 n_crop: int = 32, n_years: int = 20, data_seed: int = 0) -> None:
        if observed is not None:
            if isinstance(observed, str):
                observed = [v.strip() for v in observed.split(",")]
            bad = [v for v in observed if v not in W.VARIABLES]
            if bad or not observed:
                raise ValueError(f"weather-finetune: observed must name some of {list(W.VARIABLES)}, got {observed!r}")
            observed = [v for v in W.VARIABLES if v in observed]
        if not isinstance(freeze, bool):
            raise ValueError(f"weather-finetune: freeze must be true or false, got {freeze!r}")
        if freeze and init is None:
            raise ValueError("weather-finetune: freeze=true needs init=<pretrained run or model folder>")
        self.init_dir = None if init is None else resolve_init(init)
        self.encoder_cfg = None
        if self.init_dir is not None:
            saved = load_weather_model(self.init_dir)
            self.encoder_cfg = saved.encoder.cfg if isinstance(saved, WeatherRegressor) else saved.cfg
            if time_encoding is not None and time_encoding != self.encoder_cfg.time_encoding:
                raise ValueError(f"weather-finetune: time_encoding={time_encoding!r} but the init model uses "
                                 f"{self.encoder_cfg.time_encoding!r}")
            time_encoding = self.encoder_cfg.time_encoding
        time_encoding = time_encoding or "calendar"
        _check_time_encoding(time_encoding)
        super().__init__(seed, n_archive, n_crop, n_years, data_seed)
        pool = self.set_cfg.n_pool
        if isinstance(n_labelled, bool) or not isinstance(n_labelled, int) or not 1 <= n_labelled <= pool:
            raise ValueError(f"weather-finetune: n_labelled must be an int in [1, {pool}] (the labelled pool), "
                             f"got {n_labelled!r}")
        if self.encoder_cfg is not None and (self.encoder_cfg.n_vars != len(W.VARIABLES)
                                             or self.encoder_cfg.max_seq_len < W.WEEKS):
            raise ValueError(f"weather-finetune: the init encoder has n_vars {self.encoder_cfg.n_vars}, "
                             f"max_seq_len {self.encoder_cfg.max_seq_len}; the task needs {len(W.VARIABLES)} "
                             f"and >= {W.WEEKS}")
        self.options = {"n_labelled": n_labelled, "init": None if init is None else str(init), "freeze": freeze,
                        "time_encoding": time_encoding, "observed": observed, "n_archive": n_archive, "n_crop": n_crop,
                        "n_years": n_years, "data_seed": data_seed}
        self.time_encoding = time_encoding
        t = torch.from_numpy(step_times(W.WEEKS, time_encoding))
        hidden = torch.tensor([observed is not None and v not in observed for v in W.VARIABLES])
        self.splits = {}
        for name, part in self.data.labelled.items():
            rows = slice(0, n_labelled) if name == "train" else slice(None)
            x = torch.from_numpy(part["x"][rows])
            self.splits[name] = {"x": x, "time": t.expand(x.shape[0], -1), "coords": torch.from_numpy(part["coords"][rows]),
                                 "mask": hidden.expand(x.shape[0], -1), "y": torch.from_numpy(part["y"][rows])}
        self._perm_key, self._perm = None, None

    def model_config(self, variant: str = "weatherformer-regressor") -> WeatherRegressorConfig:
        if variant != "weatherformer-regressor":
            raise ValueError(f"weather-finetune: model must be 'weatherformer-regressor', got {variant!r}")
        enc = self.encoder_cfg or small_encoder(W.WEEKS, self.time_encoding)
        return WeatherRegressorConfig(encoder=enc, freeze_encoder=self.options["freeze"])

    def build_model(self, cfg: WeatherRegressorConfig) -> nn.Module:
        if not isinstance(cfg, WeatherRegressorConfig):
            raise ValueError(f"weather-finetune trains a WeatherRegressorConfig model, got {type(cfg).__name__}")
        if cfg.encoder.time_encoding != self.time_encoding or cfg.n_outputs != 1:
            raise ValueError(f"weather-finetune: the model has time_encoding {cfg.encoder.time_encoding!r} and "
                             f"n_outputs {cfg.n_outputs}; the task needs {self.time_encoding!r} and 1")
        model = build_weather_model(cfg)
        if self.init_dir is not None:
            model.load_encoder(self.init_dir)
        return model

    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=150, batch_size=32, lr=1e-3, warmup_steps=20, min_lr_ratio=0.1,
                           weight_decay=0.01, grad_clip=1.0, eval_every=15, eval_batches=1, dtype="fp32",
                           early_stopping=6)

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Shuffled passes over the labelled rows: epoch ``step // ceil(n / batch_size)`` uses
        ``default_rng([seed, epoch, micro]).permutation`` (a batch larger than n takes all rows)."""
        n = self.splits["train"]["y"].shape[0]
        epoch, i = divmod(step, math.ceil(n / batch_size))
        if (epoch, micro) != self._perm_key:
            self._perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, micro]).permutation(n))
            self._perm_key = (epoch, micro)
        rows = self._perm[i * batch_size:(i + 1) * batch_size]
        return {k: v[rows] for k, v in self.splits["train"].items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = model(batch["x"], batch["time"], batch["coords"], batch["mask"])[:, 0]
        return F.mse_loss(pred.float(), batch["y"].float())

    @torch.no_grad()
    def predict(self, model: nn.Module, split: str, batch_size: int, device: torch.device) -> torch.Tensor:
        """Predictions (n,) of ``model`` (in eval mode) on ``split`` (``train``, ``val``, ``test``), on CPU."""
        s = self.splits[split]
        out = []
        with eval_mode(model):
            for i in range(0, s["y"].shape[0], batch_size):
                out.append(model(*(s[k][i:i + batch_size].to(device)
                                   for k in ("x", "time", "coords", "mask")))[:, 0].float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """MSE and R² of the standardised target on every validation and test row."""
        out = {}
        for split in ("val", "test"):
            pred, y = self.predict(model, split, max(batch_size, 64), device), self.splits[split]["y"]
            out[f"{split}_mse"] = float(((pred - y) ** 2).mean())
            out[f"{split}_r2"] = _r2(pred, y)
        return out

    def describe(self) -> dict[str, Any]:
        sha = None
        if self.init_dir is not None:
            sha = hashlib.sha256((self.init_dir / "model.safetensors").read_bytes()).hexdigest()
        return {"task": "weather-finetune", "options": self.options, "data": self.set_cfg.to_dict(),
                "variables": list(W.VARIABLES), "init_sha256": sha,
                "rows": {k: int(v["y"].shape[0]) for k, v in self.splits.items()},
                "origin": "generated (formers.timeseries.weather_data); NASA POWER and yield data not available offline"}
