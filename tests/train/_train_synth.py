"""A tiny synthetic Task for the trainer tests: arithmetic token sequences, next-token CE loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from formers.nn.config import ModelConfig
from formers.train.config import TrainConfig
from formers.train.task import Task

VOCAB, SEQ = 16, 9


def tiny_model_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, dropout=0.1)
    base.update(kw)
    return ModelConfig(**base)


def tiny_train_config(**kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=2, eval_every=4,
                eval_batches=2, device="cpu", quiet=True, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _sequences(seed: int, key: tuple[int, int], n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash((seed, *key)) & 0x7FFF_FFFF)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    noise = (torch.rand(n, SEQ, generator=g) < 0.1) * torch.randint(0, VOCAB, (n, SEQ), generator=g)
    return (start + stride * torch.arange(SEQ) + noise) % VOCAB


class SynthTask(Task):
    """Rows: (start + stride * t + sparse noise) mod 16, keyed by (seed, step, micro)."""

    metric = "val_loss"

    def model_config(self, variant: str = "baseline") -> ModelConfig:
        return tiny_model_config()

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        return {"ids": _sequences(self.seed, (step, micro), batch_size)}

    def loss(self, model, batch):
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model, n_batches, batch_size, device):
        total = 0.0
        for i in range(n_batches):
            ids = _sequences(self.seed, (-1, i), batch_size).to(device)
            logits = model(ids[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))
        return {"val_loss": total / n_batches, "val_ppl_proxy": 2.0 ** (total / n_batches)}

    def describe(self):
        return {"kind": "synthetic arithmetic sequences", "vocab": VOCAB, "seq_len": SEQ}


def crashing(task: SynthTask, crash_at: int = 5) -> SynthTask:
    """``task`` itself (same class, so the run records the same task), raising like a killed
    process when asked for the batch of step ``crash_at``."""
    real = task.train_batch

    def train_batch(step, micro, batch_size):
        if step == crash_at:
            raise KeyboardInterrupt(f"simulated kill at step {step}")
        return real(step, micro, batch_size)

    task.train_batch = train_batch
    return task
