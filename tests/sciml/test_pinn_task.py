"""The PINN tasks: configs per problem, bad input, L-BFGS and Adam training through the Trainer,
exact resume of L-BFGS, the CLI (train and compare)."""

from __future__ import annotations

import json

import pytest
import torch

from formers.sciml.pde import pinn_task  # noqa: F401  (registers the tasks)
from formers.train.checkpoint import load_checkpoint, save_checkpoint
from formers.train.task import configure_model, make_task
from formers.train.trainer import Trainer, read_metrics

torch.set_num_threads(1)

TINY = {"d_model": 8, "d_ff": 16, "d_hidden": 16}


def test_model_configs_follow_the_notebooks():
    conv = make_task("pinn-convection")
    assert conv.model_config("pinnsformer").dt == 1e-4 and conv.model_config("pinnsformer").k == 5
    q = conv.model_config("qres")
    assert (q.d_hidden, q.n_layers) == (512, 2)
    r = make_task("pinn-reaction").model_config("qres")
    assert (r.d_hidden, r.n_layers) == (256, 4)
    ns = make_task("pinn-ns")
    c = ns.model_config("pinnsformer")
    assert (c.d_in, c.d_out, c.dt) == (3, 2, 1e-2)
    assert ns.metric == "p_rMAE" and make_task("pinn-wave").metric == "rMAE"
    t = make_task("pinn-reaction").default_train()
    assert (t.optimizer, t.lr, t.max_steps, t.grad_clip, t.dtype) == ("lbfgs", 1.0, 500, 0.0, "fp32")
    assert make_task("pinn-wave").default_train().max_steps == 1000


def test_collocation_grid_per_model_as_the_paper():
    task = make_task("pinn-reaction")
    task.build_model(configure_model(task, "pinnsformer", TINY))
    assert task.train_batch(0, 0, 1)["res"].shape == (51 * 51, 2)
    task.build_model(configure_model(task, "pinn", {"d_hidden": 8}))
    assert task.train_batch(0, 0, 1)["res"].shape == (101 * 101, 2)
    fixed = make_task("pinn-reaction", options={"grid": 11})
    fixed.build_model(configure_model(fixed, "pinnsformer", TINY))
    assert fixed.train_batch(0, 0, 1)["res"].shape == (121, 2)


def test_bad_input_is_refused_before_work():
    with pytest.raises(ValueError, match="unknown PDE 'heat'"):
        make_task("pinn", options={"pde": "heat"})
    with pytest.raises(ValueError, match="unknown task 'pinn-heat'"):
        make_task("pinn-heat")
    with pytest.raises(ValueError, match="grid must be"):
        make_task("pinn-reaction", options={"grid": 1})
    with pytest.raises(ValueError, match="applies to pde 'ns' only"):
        make_task("pinn", options={"pde": "reaction", "first_derivative_bug": True})
    with pytest.raises(ValueError, match="does not take option"):
        make_task("pinn-reaction", options={"first_derivative_bug": True})
    with pytest.raises(ValueError, match="test_grid must be"):
        make_task("pinn-wave", options={"test_grid": 0})
    task = make_task("pinn-reaction")
    with pytest.raises(ValueError, match="d_in = 3"):
        task.build_model(configure_model(task, "pinn", {"d_in": 3}))
    with pytest.raises(ValueError, match="k must be"):
        configure_model(task, "pinnsformer", {"k": 0})
    with pytest.raises(ValueError, match="dt must be"):
        configure_model(task, "pinnsformer", {"dt": -1e-4})
    assert make_task("pinn-ns", options={"first_derivative_bug": True}).problem.first_derivative_bug


def _fit(tmp_path, name, steps, model="pinnsformer", resume=False, **train):
    task = make_task("pinn-reaction", options={"grid": 9, "test_grid": 21})
    cfg = configure_model(task, model, TINY if model == "pinnsformer" else {"d_hidden": 16})
    tcfg = task.default_train().replace(max_steps=steps, eval_every=steps, checkpoint_every=2,
                                        quiet=True, device="cpu", lbfgs_max_iter=8, **train)
    out = tmp_path / name
    summary = Trainer(task, cfg, tcfg, out, resume=resume).fit()
    return summary, read_metrics(out / "metrics.jsonl"), out


def test_lbfgs_smoke_training_reduces_the_loss(tmp_path):
    torch.manual_seed(0)
    summary, recs, _ = _fit(tmp_path, "lbfgs", 6)
    first, last = recs[0]["train_loss"], recs[-1]["train_loss"]
    assert last < first / 20, (first, last)  # stated factor: 20x in 6 L-BFGS steps of 8 iterations (tiny grid)
    assert summary["rMAE"] < 1.0 and "rRMSE" in summary


def test_adam_smoke_training_reduces_the_loss(tmp_path):
    summary, recs, _ = _fit(tmp_path, "adam", 40, model="pinn", optimizer="adamw", lr=1e-3)
    assert recs[-1]["train_loss"] < recs[0]["train_loss"] / 3


def test_lbfgs_resume_is_exact(tmp_path):
    full, _, out_full = _fit(tmp_path, "full", 4)
    _fit(tmp_path, "split", 2)
    split, _, out_split = _fit(tmp_path, "split", 4, resume=True)
    assert json.loads((out_split / "ckpt" / "state.json").read_text())["step"] == 4
    assert split["rMAE"] == full["rMAE"]
    assert (out_split / "ckpt" / "model.safetensors").read_bytes() == (out_full / "ckpt" / "model.safetensors").read_bytes()


def test_lbfgs_resumed_after_every_step_is_exact(tmp_path):
    # 4 steps in one call == 4 calls of one step each (3 resumes): weights, the whole L-BFGS state
    # (history tensors, d, H_diag, prev_flat_grad; n_iter, func_evals, t, prev_loss) and the losses
    from safetensors.torch import load_file

    _, recs_full, out_full = _fit(tmp_path, "full", 4)
    for s in range(1, 5):
        _, recs_split, out_split = _fit(tmp_path, "split", s, resume=s > 1)
    assert [r["train_loss"] for r in recs_split] == [r["train_loss"] for r in recs_full]
    a, b = (load_file(str(o / "ckpt" / "optimizer.safetensors")) for o in (out_full, out_split))
    assert sorted(a) == sorted(b) and len(a) > 10 and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((o / "ckpt" / "state.json").read_text())["optimizer"]["scalars"] for o in (out_full, out_split))
    assert sa == sb and sa["0"]["n_iter"] > 4
    assert (out_split / "ckpt" / "model.safetensors").read_bytes() == (out_full / "ckpt" / "model.safetensors").read_bytes()


def test_lbfgs_history_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    task = make_task("pinn-reaction", options={"grid": 5})
    model = task.build_model(configure_model(task, "pinnsformer", TINY))
    opt = torch.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe", max_iter=3)
    batch = task.train_batch(0, 0, 1)

    def closure():
        opt.zero_grad()
        loss = task.loss(model, batch)
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    save_checkpoint(tmp_path, model, opt, step=2)
    opt2 = torch.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe", max_iter=3)
    load_checkpoint(tmp_path, model, opt2, restore_rng=False)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert len(s1["old_dirs"]) == len(s2["old_dirs"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(s1["old_dirs"], s2["old_dirs"]))
    assert s1["n_iter"] == s2["n_iter"] and torch.equal(s1["d"], s2["d"])


def test_cli_train_and_compare(tmp_path, capsys, monkeypatch):
    from formers.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # compare's worker processes: one thread each

    out = tmp_path / "run"
    rc = main(["train", "pinn-reaction", "--model", "pinnsformer", "--opt", "grid=7", "test_grid=11", "--set", "d_model=8",
               "d_ff=8", "d_hidden=8", "--max-steps", "1", "--quiet", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "pinn-reaction" and 0 < summary["rMAE"]
    assert (out / "ckpt" / "config.json").is_file() and (out / "config.yaml").is_file()
    rc = main(["train", "pinn-heat", "--quiet", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "unknown task 'pinn-heat'" in capsys.readouterr().err
    rc = main(["compare", "pinn-reaction", "--models", "pinn,pinnsformer", "--opt", "grid=5", "test_grid=5",
               "--set", "d_hidden=8", "--max-steps", "1", "--quiet", "--device", "cpu",
               "--out", str(tmp_path / "cmp")])
    assert rc == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| pinn |" in table and "| pinnsformer |" in table and "rRMSE" in table
