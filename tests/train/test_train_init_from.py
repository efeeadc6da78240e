"""TrainConfig.init_from: a new run starts from another run's weights (same model config), with a
fresh optimiser, step count and schedule; a resumed run keeps loading its own checkpoint."""
import pytest
import torch
from safetensors.torch import load_file

from formers.train.trainer import Trainer, read_metrics

from _train_synth import SynthTask, crashing, tiny_model_config, tiny_train_config


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_init_from_starts_at_the_other_runs_weights(tmp_path):
    first = tmp_path / "first"
    Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=6), first).fit()
    done = load_file(first / "ckpt" / "model.safetensors")

    fresh = _weights(Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=4), tmp_path / "a"))
    t = Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=4, init_from=str(first)),
                tmp_path / "b")
    started = _weights(t)
    assert any(not torch.equal(fresh[k], done[k]) for k in done)  # the init is not the fresh draw
    assert all(torch.equal(started[k], done[k]) for k in done)
    assert t.start_step == 0 and not t.optimizer.state  # optimiser and schedule start fresh
    summary = t.fit()
    recs = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[0]["lr"] < recs[1]["lr"]  # warm-up again
    # the first step's loss is the trained model's, far below a fresh model's first loss
    fresh_first = read_metrics(first / "metrics.jsonl")[0]["train_loss"]
    assert recs[0]["train_loss"] < fresh_first and summary["steps"] == 4


def test_init_from_with_resume_loads_the_runs_own_checkpoint(tmp_path):
    first = tmp_path / "first"
    Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=3), first).fit()
    tc = tiny_train_config(max_steps=8, checkpoint_every=4, init_from=str(first))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # killed during step 6; its last checkpoint is step 4
        Trainer(crashing(SynthTask(), crash_at=5), tiny_model_config(), tc, run).fit()
    own = load_file(run / "ckpt" / "model.safetensors")
    assert any(not torch.equal(own[k], v) for k, v in load_file(first / "ckpt" / "model.safetensors").items())
    resumed = Trainer(SynthTask(), tiny_model_config(), tc, run, resume=True)
    assert resumed.start_step == 4
    assert all(torch.equal(_weights(resumed)[k], own[k]) for k in own)
    with pytest.raises(ValueError, match="init_from"):  # a resumed run keeps its recorded start
        Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=8, checkpoint_every=4), run,
                resume=True)


def test_init_from_bad_folder_or_other_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(SynthTask(), tiny_model_config(), tiny_train_config(init_from=str(tmp_path / "nope")),
                tmp_path / "x")
    first = tmp_path / "first"
    Trainer(SynthTask(), tiny_model_config(), tiny_train_config(max_steps=2), first).fit()
    with pytest.raises(ValueError, match="different model config"):
        Trainer(SynthTask(), tiny_model_config(d_model=32), tiny_train_config(init_from=str(first)),
                tmp_path / "y")
