"""The ``forecast`` task: long-horizon multivariate forecasting under the literature's protocol.

``formers train forecast`` (no options: the bundled Mauna Loa co2 series, SAMformer),
``formers train forecast --model pathformer --opt dataset=ETTh1 horizon=96`` and
``formers compare forecast --models samformer,pathformer,dlinear,patchtst --opt dataset=ETTh1
--horizons 96,192,336,720 --seeds 3`` (one compare per horizon, one table with a horizon column,
a plot of forecasts against the truth per horizon). Models are registered ``forecaster`` entries
(:mod:`formers.timeseries.forecaster`), not ``ModelConfig`` transformers: the task builds them
from their own config class (``config_from_dict`` / ``build_model`` / ``load_model``).

Data: ``dataset=co2`` (default; :mod:`formers.timeseries.bundled`, statsmodels' copy, public
domain, 59 missing weeks linearly interpolated, look-back 96, horizon 52, split 70/10/20), a
file-based benchmark (``ETTh1`` ..., :mod:`formers.timeseries.data`) or any CSV (``--data``). What
was used is printed by ``formers train`` and recorded (``describe()['source']``, sha256).

Training: every forecaster trains with its own paper's recipe by default
(:mod:`formers.timeseries.recipe`; :meth:`ForecastTask.recipe_options` sets its look-back, loss
and drop_last scoring, :meth:`ForecastTask.recipe_train` its optimiser, schedule, batch, epochs
and patience); user options and flags override any field, and ``summary.json['recipe']`` records
the recipe, its source and every field changed. What every model shares (so a comparison differs
only in the models and their recipes):

* training windows are shuffled once per epoch (``numpy.random.default_rng([seed, epoch])``), the
  last batch of an epoch smaller; the recipe's loss (MSE, or L1 for Pathformer) plus a
  forecaster's ``aux_loss()``;
* evaluation and a checkpoint every epoch, early stopping on the validation loss of the recipe's
  kind (``val_mse``, or ``val_mae`` with the L1 loss), the best epoch's weights reported; fp32,
  no gradient clipping, Adam betas 0.9 / 0.999 (AdamW with decay 0 = Adam);
* evaluation: MSE and MAE on the normalised scale over every validation and test window
  (``val_mse``, ``val_mae``, ``test_mse``, ``test_mae``, with ``look_back``, ``horizon`` and
  ``test_windows``); ``drop_last=true`` (Pathformer's recipe) adds ``test_mse_drop_last`` /
  ``test_mae_drop_last`` scored as the Pathformer code does (the last incomplete test batch of
  the recipe's batch size dropped), from the same pass.

``metric`` (what compare tabulates) is ``test_mse``; test numbers never select anything.
``default_train()`` is SAMformer's recipe (batch 32, SAM rho 0.7 around Adam lr 1e-3, weight decay
1e-5, 100 epochs, patience 5: SAMformer arXiv 2402.10198 §5 and its TF ``run.py``).

Deviations: SAMformer's weight decay 1e-5 is AdamW's decoupled decay on matrices only (the
reference: an L2 term on every weight), negligible at 1e-5; the reference codes of Pathformer,
DLinear and PatchTST drop the last incomplete training batch of an epoch, here it is kept; the
per-recipe deviations are in each recipe's ``choices``. The evaluation ignores ``eval_batches``
(all windows are always scored). Changing ``--batch-size`` keeps ``eval_every`` at the recipe's
epoch. Features ``MS`` (many inputs, one output) is not offered; ``S`` forecasts the target alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import register
from formers.timeseries import data as D
from formers.timeseries.forecaster import (ForecasterConfig, build_forecaster, config_from_dict,
                                           forecaster_config, forecaster_recipe, load_forecaster)
from formers.timeseries.protocol import Windows, evaluate_model, evaluate_windows, persistence
from formers.timeseries.samformer import PAPER
from formers.train.config import TrainConfig
from formers.train.task import Task


DEFAULT_LOOK_BACK = 512  # without a model recipe (SAMformer's)
DEFAULT_HORIZON = 96

# TrainConfig fields that do not belong to a recipe (how and where a run executes)
_NOT_RECIPE = ("seed", "device", "quiet", "compile", "eval_batches", "checkpoint_every")


def _bare(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _bundled(dataset: str, data: str | None):
    """The bundled series ``dataset`` when no file is given, else None."""
    from formers.timeseries.bundled import BUNDLED

    if dataset not in BUNDLED:
        return None
    if data is not None and not Path(data).is_file():
        raise ValueError(f"forecast task: dataset {dataset!r} ships inside a package; --data takes a CSV "
                         f"file, or a folder only for the file-based data sets {sorted(D.DATASETS)}")
    return None if data is not None else BUNDLED[dataset]


@register("task", "forecast", paper=PAPER,
          summary="long-horizon forecasting (bundled co2 default, ETTh1, any CSV); test_mse/test_mae, "
                  "early stop on validation")
class ForecastTask(Task):
    """Multivariate forecasting of a series with the literature's splits and metrics.

    Options:
        dataset: ``co2`` (default: the Mauna Loa weekly CO2 series bundled with statsmodels,
            :mod:`formers.timeseries.bundled`; runs on any machine without files, needs the
            ``[data]`` extra), or a file-based data set (``ETTh1``, ``ETTh2``, ``ETTm1``,
            ``ETTm2``) found as described in :mod:`formers.timeseries.data`. The data used is
            recorded in ``describe()['source']`` (and printed by ``formers train``).
        data: a CSV file (any file with an optional date column and numeric columns) or a folder
            to look for ``dataset`` in (``--data``); a list of one path is accepted.
        target: the target column (default: the data set's, ``OT`` for ETT, else the last column).
        features: ``M`` (all columns) or ``S`` (the target only).
        look_back: L input steps; default: the bundled series' own (co2: 96 weeks), else the
            model's recipe look-back when trained through ``formers train`` / ``compare``
            (:mod:`formers.timeseries.recipe`), else 512 (SAMformer's). horizon: H steps
            (default: co2 52 weeks, otherwise 96).
        split: ``auto`` (ETT rule for ETTh*/ETTm* files, else 70/10/20), ``ett_hour``,
            ``ett_minute`` or ``ratio``.
        drop_last: also score the test set as Pathformer's code does (last batch dropped).
        loss: ``mse`` (default) or ``mae``.

    Raises:
        ValueError: a bad option, bad data (missing values, non-numeric columns, unknown target,
            too few rows for look_back + horizon) before any training.
        FileNotFoundError: the data file cannot be found or downloaded.
    """

    metric = "test_mse"
    select_metric = "val_mse"
    report_metrics = ("test_mae", "val_mse")
    lower_is_better = True
    default_models = ("samformer", "dlinear", "patchtst")

    def __init__(self, seed: int = 0, dataset: str = "co2", data: str | list[str] | None = None,
                 target: str | None = None, features: str = "M", look_back: int | None = None,
                 horizon: int | None = None, split: str = "auto", drop_last: bool = False,
                 loss: str = "mse") -> None:
        super().__init__(seed)
        if isinstance(data, (list, tuple)):
            if len(data) != 1:
                raise ValueError(f"forecast task: data takes one CSV file or folder, got {list(data)}")
            data = data[0]
        bundled = _bundled(dataset, None if data is None else str(data))
        if look_back is None:
            look_back = bundled.look_back if bundled is not None else DEFAULT_LOOK_BACK
        if horizon is None:
            horizon = bundled.horizon if bundled is not None else DEFAULT_HORIZON
        if split not in ("auto",) + D.SPLITS:
            raise ValueError(f"forecast task: split must be one of {['auto', *D.SPLITS]}, got {split!r}")
        if loss not in ("mse", "mae"):
            raise ValueError(f"forecast task: loss must be 'mse' or 'mae', got {loss!r}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"forecast task: drop_last must be true or false, got {drop_last!r}")
        if bundled is not None:
            from formers.timeseries.bundled import load_bundled

            source, bundled_info = load_bundled(dataset)
            spec = None
            target = bundled.target if target is None else target
        else:
            source = D.find_dataset(dataset, data)
            spec = D.DATASETS.get(source.stem)
        if split == "auto":
            split = spec.split if spec is not None else "ratio"
        if target is None:
            target = spec.target if spec is not None else None
        self.options = {"dataset": dataset, "data": None if data is None else str(data), "target": target,
                        "features": features, "look_back": look_back, "horizon": horizon,
                        "split": split, "drop_last": drop_last, "loss": loss}
        self.data = D.prepare(source, look_back=look_back, horizon=horizon, target=target,
                              features=features, split=split)
        self.look_back, self.horizon = look_back, horizon
        self.n_channels = len(self.data.columns)
        self.bundled = bundled
        if bundled is not None:
            self.data.info.update(bundled_info)
            self.licence = bundled.licence
            self.source = (f"bundled {dataset}: {bundled.source} ({bundled_info['package']}); "
                           f"{bundled_info['missing_filled']} missing values filled by {bundled.missing}")
        else:
            self.licence = spec.licence if spec is not None else None
            self.source = f"file {self.data.info['file']} (sha256 {self.data.info['sha256'][:12]}...)"
        self.windows = {k: Windows(getattr(self.data, k), look_back, horizon)
                        for k in ("train", "val", "test")}
        self._perm_epoch, self._perm = None, None

    # -------------------------------------------------------------------------------- models
    def model_config(self, variant: str = "samformer") -> ForecasterConfig:
        """The config of forecaster ``variant`` for this data, with its recipe's model fields
        (e.g. Pathformer's published patch sizes for this horizon)."""
        fields = forecaster_recipe(variant, self.horizon).model
        return forecaster_config(variant, **{**fields, "look_back": self.look_back,
                                             "horizon": self.horizon, "n_channels": self.n_channels})

    def build_model(self, cfg: ForecasterConfig) -> nn.Module:
        if cfg.look_back != self.look_back or cfg.horizon != self.horizon or cfg.n_channels != self.n_channels:
            raise ValueError(f"forecast task: the model config has look_back {cfg.look_back}, horizon "
                             f"{cfg.horizon}, n_channels {cfg.n_channels}; the data has {self.look_back}, "
                             f"{self.horizon}, {self.n_channels}")
        return build_forecaster(cfg)

    def config_from_dict(self, data: dict[str, Any]) -> ForecasterConfig:
        return config_from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        return load_forecaster(folder)

    # -------------------------------------------------------------------------------- budget
    def steps_per_epoch(self, batch_size: int = 32) -> int:
        return math.ceil(len(self.windows["train"]) / batch_size)

    def default_train(self) -> TrainConfig:
        """SAMformer's recipe (the default model's)."""
        return self.recipe_train("samformer")

    # -------------------------------------------------------------------------------- recipes
    def selection_metric(self) -> str:
        """``val_mae`` when training with the L1 loss (Pathformer's early stopping watches its L1
        validation loss), else ``val_mse``."""
        return "val_mae" if self.options["loss"] == "mae" else "val_mse"

    @classmethod
    def recipe_options(cls, variant: str, options: dict[str, Any]) -> dict[str, Any]:
        """The recipe's look-back, loss and ``drop_last`` scoring for forecaster ``variant`` at the
        horizon of ``options`` (see :mod:`formers.timeseries.recipe`)."""
        data = options.get("data")
        data = data[0] if isinstance(data, (list, tuple)) and len(data) == 1 else data
        bundled = _bundled(options.get("dataset", "co2"), None if data is None else str(data))
        default_h = bundled.horizon if bundled is not None else DEFAULT_HORIZON
        r = forecaster_recipe(variant, options.get("horizon") or default_h)
        out = {"loss": r.loss, "drop_last": r.drop_last}
        if bundled is None:  # a bundled series keeps its own look-back
            out["look_back"] = r.look_back
        return out

    def recipe_train(self, variant: str) -> TrainConfig:
        """Forecaster ``variant``'s recipe as a TrainConfig on this task's training windows."""
        r = forecaster_recipe(variant, self.horizon)
        return r.train_config(self.steps_per_epoch(r.batch_size))

    def recipe_record(self, model_cfg: Any, train_cfg: TrainConfig) -> dict[str, Any]:
        """The recipe of ``model_cfg.model``: ``name``, ``summary``, ``source``, ``choices``, the
        declared ``recipe``, and ``changed``: every recipe setting this run used differently
        (train fields, the task's look_back / loss / drop_last, model fields) as [recipe, used]."""
        name = model_cfg.model
        r = forecaster_recipe(name, self.horizon)
        declared = self.recipe_train(name).to_dict()
        used = train_cfg.to_dict()
        changed = {k: [declared[k], used.get(k)] for k in declared
                   if k not in _NOT_RECIPE and declared[k] != used.get(k)}
        look = r.look_back if self.bundled is None else self.bundled.look_back  # a bundled series keeps its own
        for k, want in (("look_back", look), ("loss", r.loss), ("drop_last", r.drop_last)):
            if self.options[k] != want:
                changed[k] = [want, self.options[k]]
        mdict = model_cfg.to_dict()
        for k, want in r.model.items():
            if mdict.get(k) != want:
                changed[f"model.{k}"] = [want, mdict.get(k)]
        return {"name": name, "summary": r.summary(), "source": r.source, "choices": r.choices,
                "look_back": self.look_back, "look_back_note": r.look_back_note,
                "recipe": r.to_dict(), "changed": changed}

    # -------------------------------------------------------------------------------- data
    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Epoch ``step // steps_per_epoch`` of a shuffled pass over the training windows:
        ``default_rng([seed, epoch, micro]).permutation`` cut into batches (the last one smaller).
        With ``grad_accum`` > 1 each micro-batch index walks its own permutation, so the batch
        depends only on (seed, step, micro)."""
        n = len(self.windows["train"])
        epoch, i = divmod(step, math.ceil(n / batch_size))
        if (epoch, micro) != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, micro]).permutation(n)
            self._perm_epoch = (epoch, micro)
        x, y = self.windows["train"].batch(self._perm[i * batch_size:(i + 1) * batch_size])
        return {"x": x, "y": y}

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["x"].shape[0])  # windows

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = model(batch["x"]).float()
        y = batch["y"].float()
        out = F.mse_loss(pred, y) if self.options["loss"] == "mse" else F.l1_loss(pred, y)
        aux = getattr(_bare(model), "aux_loss", None)
        if callable(aux):
            out = out + aux()
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        val = evaluate_model(model, self.windows["val"], batch_size, device)
        test = evaluate_model(model, self.windows["test"], batch_size, device,
                              with_drop_last=self.options["drop_last"])
        out = {"val_mse": val["mse"], "val_mae": val["mae"], "test_mse": test["mse"],
               "test_mae": test["mae"], "test_windows": test["windows"], "val_windows": val["windows"],
               "look_back": float(self.look_back), "horizon": float(self.horizon)}
        if "mse_drop_last" in test:  # one pass scores both (drop_last needs a full batch)
            out.update({"test_mse_drop_last": test["mse_drop_last"], "test_mae_drop_last": test["mae_drop_last"],
                        "test_windows_drop_last": test["windows_drop_last"]})
        return out

    def plot_examples(self, models: dict[str, tuple[Task, nn.Module]], path: Any) -> Path:
        """Forecasts of the target against the truth on 3 test windows
        (:func:`formers.timeseries.plots.plot_forecasts`)."""
        from formers.timeseries.plots import plot_forecasts

        looks = ", ".join(f"{m} L={t.look_back}" for m, (t, _) in models.items())
        return plot_forecasts(models, path, title=f"{self.data.info['file_name']} test windows, "
                                                 f"H={self.horizon} ({looks})")

    def persistence_metrics(self) -> dict[str, float]:
        """Test MSE/MAE of repeating the last observed value (a floor any model must beat)."""
        w = self.windows["test"]
        return evaluate_windows(lambda x: persistence(x, self.horizon), w, 1024)

    def describe(self) -> dict[str, Any]:
        info = {k: v for k, v in self.data.info.items() if k != "file"}
        return {"task": "forecast", "options": self.options, "data": info, "licence": self.licence,
                "source": self.source,
                "look_back": self.look_back, "horizon": self.horizon, "n_channels": self.n_channels,
                "windows": {k: len(w) for k, w in self.windows.items()}}
