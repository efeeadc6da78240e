"""The bundled default series (statsmodels' Mauna Loa co2): offline, NaN treatment, recorded source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import formers.timeseries  # noqa: F401
from formers.timeseries.bundled import fill_linear
from formers.train.task import make_task, make_task_for
from formers.train.trainer import Trainer

from .helpers import write_csv

torch.set_num_threads(1)


def test_fill_linear_by_hand():
    x = np.array([[1.0, 5.0], [np.nan, 6.0], [np.nan, 7.0], [4.0, 8.0]])
    out, n = fill_linear(x)
    assert n == 2 and np.array_equal(out[:, 0], [1.0, 2.0, 3.0, 4.0]) and np.array_equal(out[:, 1], x[:, 1])
    assert np.isnan(x[1, 0])  # the input is not modified
    with pytest.raises(ValueError, match="end of the series"):
        fill_linear(np.array([[np.nan], [1.0]]))


def test_default_forecast_task_is_the_bundled_co2_series():
    pytest.importorskip("statsmodels", reason="the bundled series needs the [data] extra")
    task = make_task("forecast", 0, {})
    info = task.describe()
    assert info["options"]["dataset"] == "co2" and (task.look_back, task.horizon) == (96, 52)
    assert info["data"]["rows"] == 2284 and info["data"]["missing_filled"] == 59
    assert info["data"]["columns"] == ["co2"] and "public domain" in info["licence"]
    assert info["source"].startswith("bundled co2") and "statsmodels" in info["data"]["package"]
    assert info["data"]["split"] == "ratio" and not np.isnan(task.data.train).any()
    # an interpolated week lies between its measured neighbours (raw row 6 is missing)
    from statsmodels.datasets import co2

    raw = co2.load_pandas().data["co2"].to_numpy()
    assert np.isnan(raw[6]) and not np.isnan(raw[5]) and not np.isnan(raw[7])
    z = task.data.train[:, 0] * task.data.std[0] + task.data.mean[0]
    assert z[6] == pytest.approx((raw[5] + raw[7]) / 2, abs=1e-3)
    # the recipes' look-backs are for the ETT benchmarks: the bundled series keeps its own
    t = make_task_for("forecast", 0, {}, "pathformer")
    assert t.look_back == 96 and t.options["loss"] == "mae"
    assert "look_back" not in t.recipe_record(t.model_config("pathformer"), t.recipe_train("pathformer"))["changed"]


def test_a_folder_with_a_bundled_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ships inside a package"):
        make_task("forecast", 0, {"dataset": "co2", "data": str(tmp_path)})
    csv = write_csv(tmp_path / "toy.csv", n_rows=300)  # a file wins over the default data set
    task = make_task("forecast", 0, {"data": str(csv), "look_back": 24, "horizon": 12})
    assert task.describe()["source"].startswith("file ") and task.n_channels == 3


def test_short_run_on_co2_beats_persistence(tmp_path):
    pytest.importorskip("statsmodels", reason="the bundled series needs the [data] extra")
    task = make_task_for("forecast", 0, {}, "dlinear")
    cfg = task.recipe_train("dlinear").replace(max_steps=400, eval_every=200, checkpoint_every=0,
                                                quiet=True, device="cpu", lr=1e-3)
    s = Trainer(task, task.model_config("dlinear"), cfg, tmp_path / "run").fit()
    naive = task.persistence_metrics()
    assert s["test_windows"] == int(0.2 * 2284) - 52 + 1  # the 70/10/20 split
    assert s["test_mse"] < 0.5 * naive["mse"], (s["test_mse"], naive["mse"])
