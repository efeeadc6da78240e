"""The lm-matformer task: MatFormer loss (joint / sampled) and per-granularity evaluation."""

from __future__ import annotations

import pytest
import torch

import formers.text  # noqa: F401  (registers the tasks)
from formers.nn.matformer import set_granularity
from formers.nn.models import build_model
from formers.text.task import LMTask
from formers.train.config import TrainConfig
from formers.train.task import make_task
from formers.train.trainer import Trainer

OPTS = {"seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 2}


def test_joint_loss_is_sum_over_granularities_and_eval_reports_each():
    t = make_task("lm-matformer", seed=0, options=OPTS)
    assert isinstance(t, LMTask) and t.default_models[0] == "matformer"
    cfg = t.model_config()
    assert cfg.ffn == "matformer"
    torch.manual_seed(0)
    m = build_model(cfg)
    batch = t.train_batch(0, 0, 4)
    assert batch["step"].tolist() == [0] * 4
    parts = []
    for i in range(4):
        with set_granularity(m, i):
            parts.append(LMTask.loss(t, m, batch))
    assert torch.allclose(t.loss(m, batch), sum(parts), atol=1e-5)
    out = t.evaluate(m, 2, 4, torch.device("cpu"))
    assert {"val_bpb", "val_loss"} | {f"val_bpb_g{i}" for i in range(4)} <= out.keys()
    assert out["val_bpb"] == pytest.approx(out["val_bpb_g3"])
    # sampled: one granularity, chosen from (seed, step)
    s = make_task("lm-matformer", seed=0, options={**OPTS, "schedule": "sampled"})
    assert any(torch.allclose(s.loss(m, batch), p, atol=1e-6) for p in parts)
    # a dense model trains with the plain lm loss
    dense = build_model(t.model_config("baseline"))
    assert torch.allclose(t.loss(dense, batch), LMTask.loss(t, dense, batch))
    with pytest.raises(ValueError, match="schedule"):
        make_task("lm-matformer", options={"schedule": "bogus"})


def test_short_run(tmp_path):
    t = make_task("lm-matformer", seed=0, options=OPTS)
    tc = TrainConfig(max_steps=30, batch_size=8, eval_every=30, eval_batches=2, quiet=True,
                     device="cpu", lr=3e-3, warmup_steps=5)
    s = Trainer(t, t.model_config("matformer"), tc, tmp_path / "run").fit()
    assert s["val_bpb"] < 8.0 and all(f"val_bpb_g{i}" in s for i in range(4))
    assert s["val_bpb_g0"] >= s["val_bpb_g3"] - 0.2  # the smallest submodel is not much better
