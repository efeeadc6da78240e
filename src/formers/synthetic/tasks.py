"""Synthetic tasks: ``majority`` (LayerNorm paper), ``reverse`` and ``sort`` (Key-Value paper).

Every task follows the :class:`~formers.train.task.Task` determinism contract: the batch of
(step, micro) is drawn from ``numpy.random.default_rng([seed, step, micro])`` (or, for the
fixed-pool tasks, indexes a pool built once from the seed), and the validation set is fixed by
the seed and disjoint in generation stream from training. Metrics: ``val_acc`` (the main metric,
higher is better), ``val_seq_acc`` and ``val_loss``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.presets import apply_preset
from formers.registry import Paper, register
from formers.train.config import TrainConfig
from formers.train.task import Task

LN_PAPER = Paper("On the Expressivity Role of LayerNorm in Transformers' Attention", "2305.02582",
                 "§3 majority task (Fig. 2)")
KV_PAPER = Paper("Key-Value Transformer", "2305.19129", "§4 synthetic tasks (reverse, sort)")

_VAL_STREAM = 2**31 - 1  # the "step" index of the validation stream (training steps never reach it)


def _check_int(task: str, **values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{task} task: {name} must be an int > 0, got {v!r}")


# ================================================================================== majority
def majority_sequences(rng: np.random.Generator, n: int, seq_len: int, n_classes: int,
                       min_delta: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` majority sequences and their majority classes.

    Each sequence is built like the reference's partitions (``majority_exp.py``): a number of
    distinct classes k uniform in [2, min(n_classes, seq_len)], a composition of ``seq_len`` into
    k positive parts (uniform: k - 1 distinct cut points), a random distinct class for each part;
    kept only if the largest part exceeds the second by >= ``min_delta``. Positions are then
    shuffled (the reference keeps each class's tokens contiguous; with no positional encoding,
    as in the reference model, the two are the same input set).

    Returns:
        x: (n, seq_len) int64 tokens in [0, n_classes); y: (n,) int64 majority class.
    """
    xs, ys, have = [], [], 0
    kmax = min(n_classes, seq_len)
    while have < n:
        m = max(2 * (n - have), 64)
        k = rng.integers(2, kmax + 1, size=m)
        # k - 1 distinct cut points among 1..seq_len-1: the k-1 smallest of random keys
        ranks = np.argsort(np.argsort(rng.random((m, seq_len - 1)), axis=1), axis=1)
        cuts = ranks < (k - 1)[:, None]
        seg = np.concatenate([np.zeros((m, 1), dtype=np.int64), np.cumsum(cuts, axis=1)], axis=1)
        perm = np.argsort(rng.random((m, n_classes)), axis=1)
        x = np.take_along_axis(perm, seg, axis=1)
        counts = np.zeros((m, n_classes), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(m), seq_len), x.ravel()), 1)
        top2 = np.sort(counts, axis=1)[:, -2:]
        ok = top2[:, 1] - top2[:, 0] >= min_delta
        x, y = x[ok], counts[ok].argmax(1)
        shuffle = np.argsort(rng.random(x.shape), axis=1)
        xs.append(np.take_along_axis(x, shuffle, axis=1))
        ys.append(y)
        have += len(y)
    return np.concatenate(xs)[:n].astype(np.int64), np.concatenate(ys)[:n].astype(np.int64)


@register("task", "majority", paper=LN_PAPER,
          summary="predict the most frequent token at every position (LayerNorm paper); val_acc")
class MajorityTask(Task):
    """The majority task of Brody, Alon, Yahav (arXiv 2305.02582, §3, Fig. 2; reference
    ``tech-srl/layer_norm_expressivity_role: majority/majority_exp.py, run_with_projection.bash``).

    Input: (batch, seq_len) tokens of ``n_classes`` classes whose most frequent class leads the
    second by >= ``min_delta``; target: that class at *every* position (cross-entropy over all
    positions, logits = out . Emb^T through tied embeddings).

    Model (base config; variants via presets, e.g. ``ln-no-projection``): one pre-LN encoder
    layer, d_model 8, 1 head, d_ff 8, no positional encoding, no biases, tied embeddings,
    vocabulary = classes. Defaults follow the reference (20 classes, length 50, min_delta 6)
    except the budget (400 steps of batch 128 at lr 1e-2, about 20 s on one CPU thread, reaching
    val_acc ~0.90; the reference: batch 6000, lr 1e-3, up to 1000 epochs) and the data, which is
    drawn fresh per step instead of a fixed 100k-sample set (see :func:`majority_sequences`).

    Metrics: ``val_acc`` (per-position accuracy, as the reference), ``val_seq_acc`` (all
    positions right), ``val_loss``, and two diagnostics of the first layer over the class
    embeddings: ``unselectable_keys`` (count among the ``n_classes`` normalised embeddings, the
    attention's key inputs; needs SciPy, else omitted) and ``query_angle`` (mean angle in degrees
    between q W_Q^T W_K and the all-ones vector; the paper: about 10 deg with projection, about
    80 deg without).

    Deviations: the factorised norm (``ln-no-projection``) replaces every norm of the model, the
    reference only the attention's pre-norm (``norm1``; its ``norm2`` stays a full LayerNorm); our
    norms keep a learnable gain (init 1) where the reference's ``norm1`` has none; the reference's
    WITHOUT_PROJ norm scales to norm 1/sqrt(d) instead of sqrt(d); eps is 1e-6 (reference 0);
    AdamW with warm-up + cosine decay (the trainer's) instead of Adam with linear decay.
    """

    metric = "val_acc"
    lower_is_better = False
    default_models = ("baseline", "ln-no-projection")

    def __init__(self, seed: int = 0, n_classes: int = 20, seq_len: int = 50, min_delta: int = 6,
                 d_model: int = 8, n_layers: int = 1, n_heads: int = 1, d_ff: int = 8,
                 val_size: int = 2000) -> None:
        super().__init__(seed)
        _check_int("majority", n_classes=n_classes, seq_len=seq_len, min_delta=min_delta,
                   d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, val_size=val_size)
        if n_classes < 2:
            raise ValueError(f"majority task: n_classes must be >= 2, got {n_classes}")
        if min_delta > seq_len - 1:
            raise ValueError(f"majority task: min_delta = {min_delta} cannot exceed seq_len - 1 = "
                             f"{seq_len - 1}")
        self.options = {"n_classes": n_classes, "seq_len": seq_len, "min_delta": min_delta,
                        "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "d_ff": d_ff,
                        "val_size": val_size}
        x, y = majority_sequences(np.random.default_rng([seed, _VAL_STREAM]), val_size, seq_len,
                                  n_classes, min_delta)
        self._val_x, self._val_y = torch.from_numpy(x), torch.from_numpy(y)

    def model_config(self, variant: str = "baseline") -> ModelConfig:
        o = self.options
        base = ModelConfig(arch="encoder", vocab_size=o["n_classes"], d_model=o["d_model"],
                           n_layers=o["n_layers"], n_heads=o["n_heads"], d_ff=o["d_ff"],
                           max_seq_len=o["seq_len"], position="none", bias=False, norm_eps=1e-6,
                           tie_embeddings=True, init_std=0.3)
        return apply_preset(variant, base)

    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=400, batch_size=128, lr=1e-2, warmup_steps=50,
                           weight_decay=0.0, eval_every=50, eval_batches=8)

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        o = self.options
        x, y = majority_sequences(np.random.default_rng([self.seed, step, micro]), batch_size,
                                  o["seq_len"], o["n_classes"], o["min_delta"])
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["x"]).float()  # (batch, seq_len, n_classes)
        target = batch["y"][:, None].expand(-1, logits.shape[1])
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    @torch.no_grad()
    def diagnostics(self, model: nn.Module) -> dict[str, float]:
        """``unselectable_keys`` and ``query_angle`` of the first block over the class embeddings
        (the reference evaluates ``norm1(emb(classes))``). Empty for models without a softmax
        first layer; ``unselectable_keys`` is omitted when SciPy is missing."""
        from formers.nn.layernorm_geometry import query_angle_to_ones, unselectable_keys

        try:
            block = model.stack.blocks[0]
            emb = model.embed.tok.weight
            h = block.norm1(emb).float()
            q, k = block.mixer.q.weight.float(), block.mixer.k.weight.float()
        except AttributeError:
            return {}
        out = {"query_angle": float(query_angle_to_ones(h, q, k).mean())}
        try:
            out["unselectable_keys"] = float(unselectable_keys(h).count)
        except ImportError:
            pass
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """Metrics over the fixed validation set (all ``val_size`` sequences; ``n_batches`` is
        not used: the set is small)."""
        was = model.training
        model.eval()
        total, correct, seq_ok, count = 0.0, 0, 0, 0
        for xb, yb in zip(self._val_x.split(512), self._val_y.split(512)):
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb).float()
            target = yb[:, None].expand(-1, logits.shape[1])
            total += F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum").item()
            hit = logits.argmax(-1) == target
            correct += int(hit.sum())
            seq_ok += int(hit.all(1).sum())
            count += target.numel()
        out = {"val_loss": total / count, "val_acc": correct / count,
               "val_seq_acc": seq_ok / len(self._val_y)}
        out.update(self.diagnostics(model))
        model.train(was)
        return out

    def describe(self) -> dict[str, Any]:
        return {"task": "majority", "options": self.options,
                "chance_acc": 1.0 / self.options["n_classes"],
                "val_majority_baseline": "a model that outputs the true majority gets acc 1.0"}


# ============================================================================ reverse / sort
class _SeqToSeqLM(Task):
    """Shared base of ``reverse`` and ``sort``: a decoder-only LM over ``x SEP y``.

    Tokens: symbols 0..n_symbols-1 and SEP = n_symbols (vocabulary n_symbols + 1). A sample is
    ids = [x_1..x_n, SEP, y_1..y_n] (length 2n + 1); the model reads ids[:-1] and predicts
    ids[1:]; loss and accuracy count only the n output targets y_1..y_n (teacher forcing).
    ``val_seq_acc`` (all n outputs right under teacher forcing) equals the exact-match rate of
    greedy decoding after SEP, since greedy decoding then reproduces the teacher's prefix.

    Data as the Key-Value paper (§4; ``aliborji/kv-transformer: Reverse_sort_pos.py``): 10
    symbols, a fixed training set of 50k sequences and 1k validation sequences, batch 128,
    lr 1e-3, d 64, 2 layers, 2 heads. Deviations: lr 3e-3 and 400 steps by default (a short CPU
    budget; reverse reaches 100% in ~100 steps, sort ~99.9% in ~500); the paper trains an *encoder* that outputs
    y_t at position t; the brief asks for a decoder-only LM (which also lets the causal variants
    and the KV cache be compared); the default length is 16 (paper 64/128) so that CPU runs take
    a minute or two.
    """

    metric = "val_acc"
    lower_is_better = False
    default_models = ("baseline", "kv-attention", "kv-attention-pos")
    name = ""

    def __init__(self, seed: int = 0, length: int = 16, n_symbols: int = 10, train_size: int = 50_000,
                 val_size: int = 1000, d_model: int = 64, n_layers: int = 2, n_heads: int = 2) -> None:
        super().__init__(seed)
        _check_int(self.name, length=length, n_symbols=n_symbols, train_size=train_size,
                   val_size=val_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        if n_symbols < 2:
            raise ValueError(f"{self.name} task: n_symbols must be >= 2, got {n_symbols}")
        self.options = {"length": length, "n_symbols": n_symbols, "train_size": train_size,
                        "val_size": val_size, "d_model": d_model, "n_layers": n_layers,
                        "n_heads": n_heads}
        self.sep = n_symbols
        self._train = self._make(np.random.default_rng([seed, 0]), train_size)
        self._val = self._make(np.random.default_rng([seed, _VAL_STREAM]), val_size)

    def target(self, x: np.ndarray) -> np.ndarray:
        """y from x: (n, length) -> (n, length)."""
        raise NotImplementedError

    def _make(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        length, k = self.options["length"], self.options["n_symbols"]
        x = rng.integers(0, k, size=(n, length))
        sep = np.full((n, 1), self.sep)
        return torch.from_numpy(np.concatenate([x, sep, self.target(x)], axis=1).astype(np.int64))

    def model_config(self, variant: str = "baseline") -> ModelConfig:
        o = self.options
        base = ModelConfig(vocab_size=o["n_symbols"] + 1, d_model=o["d_model"], n_layers=o["n_layers"],
                           n_heads=o["n_heads"], max_seq_len=2 * o["length"] + 1)
        return apply_preset(variant, base)

    def default_train(self) -> TrainConfig:
        return TrainConfig(max_steps=400, batch_size=128, lr=3e-3, warmup_steps=50,
                           weight_decay=0.0, eval_every=100, eval_batches=8)

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, micro])
        idx = torch.from_numpy(rng.integers(0, len(self._train), size=batch_size))
        return {"ids": self._train[idx]}

    def _scores(self, model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.options["length"]
        logits = model(ids[:, :-1])[:, n:].float()  # (batch, n, vocab): predictions of y_1..y_n
        return logits, ids[:, n + 1:]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, y = self._scores(model, batch["ids"])
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["ids"][:, 1:].numel())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """Metrics over the whole fixed validation set (``n_batches`` unused)."""
        was = model.training
        model.eval()
        total, correct, seq_ok, count = 0.0, 0, 0, 0
        for ids in self._val.split(max(batch_size, 256)):
            logits, y = self._scores(model, ids.to(device))
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            hit = logits.argmax(-1) == y
            correct += int(hit.sum())
            seq_ok += int(hit.all(1).sum())
            count += y.numel()
        model.train(was)
        return {"val_loss": total / count, "val_acc": correct / count, "val_seq_acc": seq_ok / len(self._val)}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "options": self.options,
                "chance_acc": 1.0 / self.options["n_symbols"]}


@register("task", "reverse", paper=KV_PAPER,
          summary="decoder-only LM on 'x SEP reversed(x)', loss/accuracy on the output; val_acc")
class ReverseTask(_SeqToSeqLM):
    """Reverse the input sequence (Key-Value Transformer, arXiv 2305.19129, §4): y_t = x_{n+1-t}.
    ids: (batch, 2n + 1); see :class:`_SeqToSeqLM` for the format, data, metrics and deviations."""

    name = "reverse"

    def target(self, x: np.ndarray) -> np.ndarray:
        return x[:, ::-1]


@register("task", "sort", paper=KV_PAPER,
          summary="decoder-only LM on 'x SEP sorted(x)', loss/accuracy on the output; val_acc")
class SortTask(_SeqToSeqLM):
    """Sort the input sequence ascending (Key-Value Transformer, arXiv 2305.19129, §4).
    ids: (batch, 2n + 1); see :class:`_SeqToSeqLM` for the format, data, metrics and deviations."""

    name = "sort"

    def target(self, x: np.ndarray) -> np.ndarray:
        return np.sort(x, axis=1)


__all__ = ["MajorityTask", "ReverseTask", "SortTask", "majority_sequences"]
