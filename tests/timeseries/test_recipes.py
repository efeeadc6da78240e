"""Per-model training recipes of the forecast task, and the horizon sweep of ``formers compare``."""

from __future__ import annotations

import json

import pytest
import torch

import formers.timeseries  # noqa: F401
from formers.bench.compare import sweep_table
from formers.cli import main
from formers.timeseries.forecaster import forecaster_recipe
from formers.timeseries.pathformer import etth1_config
from formers.timeseries.recipe import ForecastRecipe
from formers.train.task import make_task, make_task_for

from .helpers import write_csv

torch.set_num_threads(1)


def test_each_forecaster_declares_its_papers_recipe():
    s, p, d, t = (forecaster_recipe(m, 96) for m in ("samformer", "pathformer", "dlinear", "patchtst"))
    assert (s.sam_rho, s.batch_size, s.lr, s.patience, s.look_back) == (0.7, 32, 1e-3, 5, 512)
    assert (p.loss, p.lr, p.schedule, p.pct_start, p.epochs, p.patience, p.look_back, p.drop_last) == \
        ("mae", 5e-4, "one_cycle", 0.4, 30, 10, 96, True)
    assert p.batch_size == 128 and forecaster_recipe("pathformer", 720).batch_size == 512
    assert (d.batch_size, d.lr, d.epochs, d.patience, d.schedule, d.lr_gamma) == (8, 1e-4, 10, 3, "step", 0.5)
    assert (t.batch_size, t.lr, t.epochs, t.patience, t.lr_gamma) == (128, 1e-4, 100, 100, 0.9)
    with pytest.raises(ValueError, match="loss"):
        ForecastRecipe(source="x", batch_size=8, lr=1e-3, epochs=1, patience=1, loss="huber")


def test_task_applies_the_recipe_and_user_options_win(tmp_path):
    csv = write_csv(tmp_path / "toy.csv", n_rows=600)
    task = make_task_for("forecast", 0, {"data": str(csv), "horizon": 24}, "pathformer")
    assert (task.look_back, task.options["loss"], task.options["drop_last"]) == (96, "mae", True)
    assert task.selection_metric() == "val_mae"  # early stopping on the L1 validation loss
    cfg = task.recipe_train("pathformer")
    spe = task.steps_per_epoch(128)
    assert (cfg.batch_size, cfg.lr, cfg.max_steps, cfg.eval_every, cfg.early_stopping) == (128, 5e-4, 30 * spe, spe, 10)
    assert cfg.schedule == "one_cycle" and cfg.warmup_steps == round(0.4 * 30 * spe) and cfg.sam_rho == 0
    # user options beat the recipe's
    mine = make_task_for("forecast", 0, {"data": str(csv), "horizon": 24, "loss": "mse"}, "pathformer")
    assert mine.options["loss"] == "mse" and mine.selection_metric() == "val_mse"
    rec = mine.recipe_record(mine.model_config("pathformer"), cfg.replace(lr=1e-3))
    assert rec["changed"] == {"lr": [5e-4, 1e-3], "loss": ["mae", "mse"]}
    big_csv = str(write_csv(tmp_path / "big.csv", n_rows=4400))
    sam = make_task_for("forecast", 0, {"data": big_csv, "horizon": 36}, "samformer")
    assert sam.look_back == 512 and sam.recipe_train("samformer").sam_rho == 0.7
    # the published per-horizon model of the ETTh1 script
    big = make_task("forecast", 0, {"data": big_csv, "look_back": 96, "horizon": 336})
    got = big.model_config("pathformer")
    want = etth1_config(336, n_channels=3)
    assert (got.patch_sizes, got.k, got.residual_connection) == (want.patch_sizes, want.k, want.residual_connection)


def test_cli_train_records_the_recipe_and_overrides(tmp_path, capsys):
    csv = write_csv(tmp_path / "toy.csv", n_rows=400)
    run = tmp_path / "run"
    assert main(["train", "forecast", "--model", "dlinear", "--data", str(csv), "--opt", "look_back=48",
                 "horizon=12", "--max-steps", "2", "--device", "cpu", "--out", str(run)]) == 0
    assert "dlinear trains with its recipe: MSE, Adam 0.0001" in capsys.readouterr().err
    rec = json.loads((run / "summary.json").read_text())["recipe"]
    assert rec["name"] == "dlinear" and "LTSF-Linear" in rec["source"]
    assert rec["changed"]["max_steps"][1] == 2 and rec["changed"]["look_back"] == [512, 48]
    cfg = (run / "config.yaml").read_text()
    assert "batch_size: 8" in cfg and "schedule: step" in cfg  # DLinear's script: batch 8, lradj type1


def test_compare_horizons_writes_one_table_with_a_horizon_column(tmp_path, capsys):
    csv = write_csv(tmp_path / "toy.csv", n_rows=400)
    out = tmp_path / "cmp"
    assert main(["compare", "forecast", "--models", "dlinear", "--horizons", "12", "--data", str(csv),
                 "--opt", "look_back=48", "--max-steps", "2", "--quiet", "--device", "cpu",
                 "--out", str(out)]) == 0
    sweep = json.loads((out / "compare-horizons.json").read_text())
    assert [(r["horizon"], r["model"], r["look_back"]) for r in sweep["rows"]] == [(12, "dlinear", 48)]
    assert sweep["rows"][0]["recipe"].startswith("MSE, Adam") and sweep["rows"][0]["test_mae"] > 0
    assert "| horizon | model | test_mse" in (out / "compare-horizons.md").read_text()
    res = json.loads((out / "h12" / "compare.json").read_text())
    assert res["task_options"]["dlinear"]["horizon"] == 12
    assert (out / "h12" / "examples.png").stat().st_size > 1000  # forecasts against the truth
    # errors before any work
    assert main(["compare", "forecast", "--horizons", "12,12", "--data", str(csv)]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(["compare", "forecast", "--horizons", "12", "--opt", "horizon=24", "--data", str(csv)]) == 2
    assert main(["compare", "lm", "--horizons", "12"]) == 2
    assert "needs a task with a horizon option" in capsys.readouterr().err


def test_sweep_table_has_one_row_per_value_and_model():
    def result(mse):
        rows = [{"model": m, "params": 10, "test_mse": mse + i, "test_mse_std": 0.1, "test_mae": 1.0,
                 "test_mae_std": 0.0, "p_vs_first": None, "recipe": f"r{m}", "look_back": 8 * (i + 1)}
                for i, m in enumerate(("a", "b"))]
        return {"metric": "test_mse", "seeds": 2, "report_metrics": ["test_mae"], "rows": rows}

    sweep = sweep_table("horizon", {96: result(0.5), 192: result(0.7)})
    assert [(r["horizon"], r["model"], r["test_mse"], r["look_back"]) for r in sweep["rows"]] == \
        [(96, "a", 0.5, 8), (96, "b", 1.5, 16), (192, "a", 0.7, 8), (192, "b", 1.7, 16)]
    lines = sweep["markdown"].splitlines()
    assert lines[0].startswith("| horizon | model | test_mse (mean ± std, 2 seeds) | test_mae |")
    assert lines[4] == "| 192 | a | 0.7000 ± 0.1000 | 1.0000 ± 0.0000 | 10 | 8 | ra |"
