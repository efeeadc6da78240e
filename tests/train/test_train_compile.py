"""`compile=True` compiles the model together with the task's loss (`formers.train.trainer.TaskLoss`):
the same losses as eager, and the loss op inside the captured graph (so an LM's full-vocabulary
cross-entropy is not left to run eagerly on fp32 logits)."""

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _train_synth import SynthTask, tiny_model_config, tiny_train_config  # noqa: E402

from formers.train.trainer import Trainer, read_metrics  # noqa: E402


def test_compiled_step_includes_the_loss_and_matches_eager(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    graphs = []

    def recording_backend(gm, example_inputs):  # dynamo's captured graph, run as it is
        graphs.append(gm.code)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=recording_backend))
    torch._dynamo.reset()
    mc = tiny_model_config(dropout=0.0)
    tc = tiny_train_config(max_steps=3, eval_every=3, checkpoint_every=3)
    Trainer(SynthTask(), mc, tc, tmp_path / "eager").fit()
    Trainer(SynthTask(), mc, tc.replace(compile=True), tmp_path / "compiled").fit()
    eager = [r["train_loss"] for r in read_metrics(tmp_path / "eager" / "metrics.jsonl") if "train_loss" in r]
    comp = [r["train_loss"] for r in read_metrics(tmp_path / "compiled" / "metrics.jsonl") if "train_loss" in r]
    assert len(eager) == len(comp) == 3
    assert max(abs(a - b) for a, b in zip(eager, comp)) < 1e-5
    assert graphs and any("cross_entropy" in g for g in graphs), "the task loss is not in the compiled graph"
    torch._dynamo.reset()
