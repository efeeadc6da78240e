"""The ``forecast`` task: trainer integration (SAM, early stopping, resume), CLI, real data."""

from __future__ import annotations

import json

import pytest
import torch

import formers.timeseries  # noqa: F401
from formers.cli import main
from formers.timeseries.task import ForecastTask
from formers.train.config import TrainConfig
from formers.train.optim import SAM, build_optimizer
from formers.train.task import make_task
from formers.train.trainer import Trainer, seed_everything

from .helpers import SHARED, write_csv


def _task(tmp_path, **opts):
    p = write_csv(tmp_path / "toy.csv", n_rows=400, n_cols=3)
    return make_task("forecast", 0, {"data": str(p), "look_back": 48, "horizon": 12, **opts})


def _cfg(**kw):
    base = dict(max_steps=1, batch_size=16, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0, grad_clip=0.0,
                eval_every=1, eval_batches=1, quiet=True, device="cpu", dtype="fp32")
    return TrainConfig(**{**base, **kw})


def test_trainer_sam_step_equals_a_hand_rolled_sam_adamw_step(tmp_path):
    task = _task(tmp_path)
    mcfg = task.model_config("dlinear")
    cfg = _cfg(sam_rho=0.5)
    tr = Trainer(task, mcfg, cfg, tmp_path / "run")
    tr.fit()
    seed_everything(cfg.seed)
    model = task.build_model(mcfg)
    opt = SAM(build_optimizer(model, cfg), rho=0.5)
    batch = task.train_batch(0, 0, cfg.batch_size)
    opt.step(lambda: task.loss(model, batch).backward())
    for p, q in zip(tr.model.parameters(), model.parameters()):
        assert torch.equal(p, q)
    # and SAM moved the weights elsewhere than plain AdamW would
    seed_everything(cfg.seed)
    plain = task.build_model(mcfg)
    o = build_optimizer(plain, cfg)
    task.loss(plain, batch).backward()
    o.step()
    assert not all(torch.equal(p, q) for p, q in zip(plain.parameters(), model.parameters()))


class _Scripted(ForecastTask):
    """The forecast task with a scripted validation curve (val_mse 1.0, 0.5, 0.6, 0.7, ...)."""

    curve = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9]

    def evaluate(self, model, n_batches, batch_size, device):
        out = super().evaluate(model, n_batches, batch_size, device)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls <= len(self.curve):
            out["val_mse"] = self.curve[self.calls - 1]
        return out


def test_early_stopping_reports_the_best_evaluations_weights(tmp_path):
    p = write_csv(tmp_path / "toy.csv", n_rows=400)
    task = _Scripted(seed=0, data=str(p), look_back=48, horizon=12)
    cfg = _cfg(max_steps=30, eval_every=2, early_stopping=2)
    tr = Trainer(task, task.model_config("samformer"), cfg, tmp_path / "run")
    s = tr.fit()
    assert s["stopped_early_at"] == 8 and s["steps"] == 8  # best at eval 2 (step 4), no gain at evals 3, 4
    assert s["best"] == {"name": "val_mse", "value": 0.5, "step": 4}
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, best[k])  # the reported metrics are of the step-4 weights
    # a finished, early-stopped run resumes as finished (no more training)
    task2 = _Scripted(seed=0, data=str(p), look_back=48, horizon=12)
    task2.calls = 99
    s2 = Trainer(task2, task2.model_config("samformer"), cfg, tmp_path / "run", resume=True).fit()
    assert s2["steps"] == 8 and s2["test_mse"] == pytest.approx(s["test_mse"])


def test_cli_train_resume_eval_and_compare(tmp_path, capsys):
    csv = write_csv(tmp_path / "toy.csv", n_rows=400)
    run = tmp_path / "run"
    common = ["--data", str(csv), "--opt", "look_back=48", "horizon=12", "--quiet",
              "--device", "cpu", "--batch-size", "16", "--eval-every", "3"]
    assert main(["train", "forecast", "--model", "samformer", "--max-steps", "3", "--sam-rho", "0.5",
                 "--out", str(run), *common]) == 0
    assert main(["train", "forecast", "--model", "samformer", "--max-steps", "6", "--sam-rho", "0.5",
                 "--out", str(run), "--resume", *common]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["look_back"] == 48 and summary["horizon"] == 12
    # changing the optimiser on resume is refused
    assert main(["train", "forecast", "--model", "samformer", "--max-steps", "9", "--sam-rho", "0.1",
                 "--out", str(run), "--resume", *common]) == 2
    assert "sam_rho" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_mse"] == pytest.approx(summary["test_mse"], rel=1e-6)
    out = tmp_path / "cmp"
    assert main(["compare", "forecast", "--models", "samformer,dlinear", "--seeds", "1",
                 "--max-steps", "3", "--out", str(out), *common]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["metric"] == "test_mse" and [r["model"] for r in res["rows"]] == ["samformer", "dlinear"]
    assert all(r["test_mae"] > 0 for r in res["rows"])  # MAE beside MSE in the table
    assert "test_mae" in (out / "compare.md").read_text()
    # a bad target fails before any training, with the columns named
    bad = ["--data", str(csv), "--opt", "look_back=48", "horizon=12", "target=nope", "--quiet"]
    assert main(["train", "forecast", "--out", str(tmp_path / "x"), *bad]) == 2
    assert "unknown target column 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_file(), reason=f"{SHARED} not present")
def test_short_samformer_run_on_etth1_beats_persistence(tmp_path):
    task = make_task("forecast", 0, {"data": str(SHARED), "look_back": 96, "horizon": 24})
    cfg = task.default_train().replace(max_steps=160, eval_every=40, checkpoint_every=0,
                                       early_stopping=2, quiet=True, device="cpu")
    s = Trainer(task, task.model_config("samformer"), cfg, tmp_path / "run").fit()
    naive = task.persistence_metrics()
    assert s["test_windows"] == 2880 - 24 + 1
    assert s["test_mse"] < 0.7 * naive["mse"], (s["test_mse"], naive["mse"])
    assert s["test_mae"] < naive["mae"]


def test_runs_saved_before_sam_and_early_stopping_existed_still_resume(tmp_path):
    task = _task(tmp_path)
    cfg = _cfg(max_steps=2)
    Trainer(task, task.model_config("dlinear"), cfg, tmp_path / "run").fit()
    state_path = tmp_path / "run" / "ckpt" / "state.json"
    state = json.loads(state_path.read_text())
    for k in ("sam_rho", "early_stopping"):  # as an older formers wrote it
        del state["train_config"][k]
    state_path.write_text(json.dumps(state))
    s = Trainer(task, task.model_config("dlinear"), cfg.replace(max_steps=3), tmp_path / "run",
                resume=True).fit()
    assert s["steps"] == 3 and s["resumed_from_step"] == 2
