"""The ``lm`` task: byte-level causal language modelling on a corpus, measured in bits per byte."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.presets import apply_preset
from formers.registry import register
from formers.text.corpus import load_corpus
from formers.text.tokenizer import ByteTokenizer
from formers.train.config import TrainConfig
from formers.train.task import Task


@register("task", "lm", summary="byte-level causal LM (default corpus: the Python stdlib source); val_bpb")
class LMTask(Task):
    """Next-byte prediction on random windows of the training bytes.

    Options: data (files/folders; default the stdlib corpus), seq_len (window length),
    d_model / n_layers / n_heads (the base size that model variants start from).
    Metrics: ``val_loss`` (nats per byte) and ``val_bpb`` = val_loss / ln 2 (bits per byte),
    over fixed, evenly spaced validation windows (the same for every model and seed).
    """

    metric = "val_bpb"
    lower_is_better = True
    default_models = ("baseline", "rope", "gqa", "denseformer", "value-residual")

    def __init__(self, seed: int = 0, data: list[str] | str | None = None, seq_len: int = 128,
                 d_model: int = 128, n_layers: int = 4, n_heads: int = 4) -> None:
        super().__init__(seed)
        if isinstance(data, str):  # --opt data=PATH gives one string
            data = [data]
        for name, v in (("seq_len", seq_len), ("d_model", d_model), ("n_layers", n_layers),
                        ("n_heads", n_heads)):
            if v <= 0:
                raise ValueError(f"lm task: {name} must be > 0, got {v}")
        self.options = {"data": list(data or []), "seq_len": seq_len, "d_model": d_model,
                        "n_layers": n_layers, "n_heads": n_heads}
        self.corpus = load_corpus(data)
        self.tokenizer = ByteTokenizer()
        self.seq_len = seq_len
        for split, arr in (("train", self.corpus.train), ("val", self.corpus.val)):
            if arr.size < seq_len + 1:
                raise ValueError(f"lm task: the {split} split has {arr.size} bytes, fewer than "
                                 f"seq_len + 1 = {seq_len + 1}; use a larger corpus or a smaller seq_len")
        self._train = torch.from_numpy(self.corpus.train.astype(np.int64))
        self._val = torch.from_numpy(self.corpus.val.astype(np.int64))

    def model_config(self, variant: str = "baseline") -> ModelConfig:
        o = self.options
        base = ModelConfig(vocab_size=self.tokenizer.vocab_size, d_model=o["d_model"],
                           n_layers=o["n_layers"], n_heads=o["n_heads"], max_seq_len=self.seq_len)
        return apply_preset(variant, base)

    def default_train(self) -> TrainConfig:
        # 900 steps of 16 x 128 bytes: the five default models train in about 8 minutes on
        # 2 CPU cores, and the baseline reaches about 2.4 bits per byte
        # (a checkpoint at every evaluation, so a killed run resumes mid-way)
        return TrainConfig(max_steps=900, batch_size=16, lr=3e-3, warmup_steps=50,
                           eval_every=150, eval_batches=16, checkpoint_every=150)

    def _windows(self, data: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        idx = starts[:, None] + torch.arange(self.seq_len + 1)[None, :]
        return data[idx]

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, micro])
        starts = rng.integers(0, self._train.numel() - self.seq_len - 1, size=batch_size)
        return {"ids": self._windows(self._train, torch.from_numpy(starts))}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["ids"][:, 1:].numel())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        n = n_batches * batch_size
        last = self._val.numel() - self.seq_len - 1
        starts = torch.linspace(0, last, steps=min(n, last + 1)).long()
        total, count = 0.0, 0
        was = model.training
        model.eval()
        for chunk in starts.split(batch_size):
            ids = self._windows(self._val, chunk).to(device)
            logits = model(ids[:, :-1]).float()
            total += F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
            count += ids[:, 1:].numel()
        model.train(was)
        loss = total / count
        return {"val_loss": loss, "val_bpb": loss / math.log(2)}

    def describe(self) -> dict[str, Any]:
        return {"task": "lm", "options": self.options, "corpus": self.corpus.info,
                "unigram_entropy_bpb": self.corpus.unigram_entropy()}
