import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from formers.train.trainer import RunExistsError, Trainer, read_metrics

from _train_synth import SynthTask, crashing, tiny_model_config, tiny_train_config


def _strip(records):  # everything but wall-clock throughput must match exactly
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_fit_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    summary = Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=8), out).fit()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "ckpt/model.safetensors"):
        assert (out / name).is_file(), name
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert all({"step", "train_loss", "lr", "tokens_per_s"} <= r.keys() for r in recs)
    assert [r["step"] for r in recs if "val_loss" in r] == [4, 8]
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    for k in ("val_loss", "params", "tokens_per_s", "peak_mem_mb", "wall_time_s", "steps"):
        assert k in summary, k
    assert summary["steps"] == 8 and summary["val_loss"] == recs[-1]["val_loss"]
    assert summary["best"]["name"] == "val_loss" and summary["best"]["step"] in (4, 8)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["d_model"] == 16 and cfg["train"]["max_steps"] == 8
    assert cfg["seed"] == 0 and cfg["device"] == "cpu" and cfg["dtype"] == "fp32"
    assert cfg["torch"] == torch.__version__ and cfg["threads"] == 1
    assert cfg["task"]["vocab"] == 16 and cfg["task"]["task"] == "SynthTask" and "git_commit" in cfg
    assert cfg["task"]["metric"] == "val_loss" and cfg["task"]["seed"] == 0
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_exact_resume(tmp_path):
    tc = tiny_train_config(max_steps=12, grad_accum=2, eval_every=3, checkpoint_every=4)
    full = tmp_path / "full"
    Trainer(SynthTask(), tiny_model_config(), tc, full).fit()

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):  # killed during step 7 (0-based 6); last checkpoint: 4
        Trainer(crashing(SynthTask(), crash_at=6), tiny_model_config(), tc, part).fit()
    assert [r["step"] for r in read_metrics(part / "metrics.jsonl")] == list(range(1, 7))
    assert json.loads((part / "ckpt" / "state.json").read_text())["step"] == 4

    with pytest.raises(RunExistsError, match="resume"):
        Trainer(SynthTask(), tiny_model_config(), tc, part)
    with pytest.raises(ValueError, match="resume"):  # RunExistsError is also a ValueError
        Trainer(SynthTask(), tiny_model_config(), tc, part)

    summary = Trainer(SynthTask(), tiny_model_config(), tc, part, resume=True).fit()
    assert summary["resumed_from_step"] == 4
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(part / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 13))
    assert _strip(a) == _strip(b)  # losses, lr, grad norms, eval metrics: bit-identical
    wa, wb = load_file(full / "ckpt" / "model.safetensors"), load_file(part / "ckpt" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa = load_file(full / "ckpt" / "optimizer.safetensors")
    ob = load_file(part / "ckpt" / "optimizer.safetensors")
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


def test_resume_mismatched_model_config(tmp_path):
    tc = tiny_train_config(max_steps=2)
    Trainer(SynthTask(), tiny_model_config(), tc, tmp_path).fit()
    with pytest.raises(ValueError, match="different model config.*n_layers"):
        Trainer(SynthTask(), tiny_model_config(n_layers=2), tc, tmp_path, resume=True)


def test_resume_corrupt_checkpoint(tmp_path):
    tc = tiny_train_config(max_steps=2)
    Trainer(SynthTask(), tiny_model_config(), tc, tmp_path).fit()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        Trainer(SynthTask(), tiny_model_config(), tc, tmp_path, resume=True)


def test_resume_finished_and_fresh(tmp_path):
    tc = tiny_train_config(max_steps=3, eval_every=10)
    s1 = Trainer(SynthTask(), tiny_model_config(), tc, tmp_path / "a").fit()
    s2 = Trainer(SynthTask(), tiny_model_config(), tc, tmp_path / "a", resume=True).fit()
    assert s2["val_loss"] == s1["val_loss"] and s2["train_loss"] == s1["train_loss"]
    assert len(read_metrics(tmp_path / "a" / "metrics.jsonl")) == 3
    # resume=True with no checkpoint yet simply starts the run
    s3 = Trainer(SynthTask(), tiny_model_config(), tc, tmp_path / "b", resume=True).fit()
    assert s3["val_loss"] == s1["val_loss"]


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="ModelConfig"):
        Trainer(SynthTask(), {"d_model": 16}, tiny_train_config(), tmp_path)
    with pytest.raises(ValueError, match="device"):
        Trainer(SynthTask(), tiny_model_config(), tiny_train_config(device="tpu"), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Trainer(SynthTask(), tiny_model_config(), tiny_train_config(device="cuda"), tmp_path)


def test_moe_aux_loss_joins_the_training_loss(tmp_path, monkeypatch):
    """The trainer adds the MoE load-balancing loss to the task's loss (router gets its gradient)."""
    import formers.nn.ffn.moe as moe
    from formers.train import trainer as T

    seen = []
    real = moe.aux_loss

    def spy(model):
        out = real(model)
        seen.append(float(out.detach()))
        return out

    monkeypatch.setattr(T, "aux_loss", spy)
    from formers.nn import LayerSpec

    cfg = tiny_model_config().replace(layers=[LayerSpec(ffn="moe", ffn_options={"n_experts": 4})])
    Trainer(SynthTask(), cfg, tiny_train_config(max_steps=2), tmp_path / "run").fit()
    assert len(seen) == 2 and all(v > 0 for v in seen)


def test_resume_refuses_other_settings_or_data_and_corrupt_weights(tmp_path):
    tc = tiny_train_config(max_steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    Trainer(SynthTask(), tiny_model_config(), tc, run).fit()
    with pytest.raises(ValueError, match="lr: run"):
        Trainer(SynthTask(), tiny_model_config(), tc.replace(lr=tc.lr * 2, max_steps=6), run, resume=True)
    with pytest.raises(ValueError, match="different task or data"):
        Trainer(SynthTask(seed=1), tiny_model_config(), tc.replace(max_steps=6), run, resume=True)
    # a longer budget is a legitimate change
    Trainer(SynthTask(), tiny_model_config(), tc.replace(max_steps=6), run, resume=True).fit()
    weights = run / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = b"\xff" * 64  # still parses, but the values changed (NaN-like garbage)
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        Trainer(SynthTask(), tiny_model_config(), tc.replace(max_steps=8), run, resume=True)


def test_non_finite_loss_stops_training(tmp_path):
    task = SynthTask()
    real = task.loss
    task.loss = lambda model, batch: real(model, batch) * float("nan")
    from formers.train.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="diverged"):
        Trainer(task, tiny_model_config(), tiny_train_config(max_steps=3), tmp_path / "r").fit()


def test_non_finite_gradient_with_finite_loss_stops_training(tmp_path):
    """A backward that returns NaN while the loss stays finite (as cuDNN's masked SDPA backward did
    on the H200) stops at that step, naming the gradient norm."""
    from formers.train.trainer import TrainingDiverged

    torch.set_num_threads(1)
    trainer = Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=3), tmp_path / "r")
    first = next(trainer.model.parameters())
    first.register_hook(lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(TrainingDiverged, match=r"gradient norm is nan \(train loss [0-9.]+\) at step 1;"):
        trainer.fit()


def test_log_file_gets_one_line_per_evaluation(tmp_path, capsys):
    """Without a terminal (a log file, a GPU job) the live bar shows nothing: each evaluation prints a line."""
    torch.set_num_threads(1)
    tc = tiny_train_config(max_steps=4, eval_every=2, checkpoint_every=4).replace(quiet=False)
    Trainer(SynthTask(), tiny_model_config(), tc, tmp_path / "run").fit()
    err = capsys.readouterr().err
    assert "step 2/4  train_loss" in err and "step 4/4  train_loss" in err and "val_loss" in err
