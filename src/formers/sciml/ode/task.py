"""The ``ode`` task: train ODEFormer on generated (trajectory, system) pairs.

``formers train ode`` (CPU default: a 2 + 2-layer d_model-128 model, 100 steps of 16 systems from
a cached pool of 256 random systems of dimension <= 2; a few minutes, far from useful accuracy), ``formers train ode --model odeformer-gpu --opt data=DIR`` (shards
from ``formers data ode``), ``formers train ode --model odeformer-tiny --opt family=laws`` (the
1-D linear/logistic smoke family of :mod:`formers.sciml.ode.laws`).

Data. Samples are generator-format dicts (:func:`formers.sciml.ode.generate.generate_sample`).
With ``data`` (one folder, or a list of folders: data sets generated with other seeds or shard
sizes, joined in the order given) the task reads every shard and holds out the last
``eval_size`` samples (of the last folder) for validation; a folder named twice, or held-out
samples that also occur in training (folders made with the same seed and shard indices), are
refused, and the samples dropped by ``max_dim`` / ``max_tokens`` are counted on stderr; otherwise it makes ``pool_size`` samples with the paper's
generator (``GeneratorConfig(max_dim=max_dim)``) into the user cache
``$XDG_CACHE_HOME/formers/data/ode-pool-...`` (made once, reused by later runs) and the
validation set is ``eval_size`` samples from a disjoint seed stream (for ``family=laws``: the
held-out laws of :mod:`formers.sciml.ode.laws`). Samples whose prefix is longer than ``max_tokens`` are dropped.

Batches. ``train_batch(step, micro)`` draws ``batch_size`` pool samples with
``default_rng([seed, step, micro])`` and applies the paper's corruption (multiplicative noise
gamma ~ U(linspace(0, noise, 5)), a dropped fraction ~ U(linspace(0, subsample, 5)); paper
0.1 and 0.5, default here 0 and 0 for the small CPU budget). Points are tokenised in the
generated units (the paper trains without the inference-time rescaling; its times already lie
in [1, 10]).

Loss: cross-entropy on the prefix tokens (the ``<pad>`` positions ignored), paper §3.
Evaluation: ``val_loss`` and ``token_acc`` (teacher forcing) over the validation set, and
``r2_acc``: the fraction of up to ``eval_decode`` validation systems whose greedy decoding
(beam 1, at most twice the longest validation target's length), integrated from the observed initial condition, reaches R² > 0.9 on the observed
trajectory (the paper's reconstruction accuracy); ``parse_rate`` = decodings that parse.
``metric`` = ``r2_acc`` (higher is better).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from formers.registry import register
from formers.sciml.ode import tokens
from formers.sciml.ode.model import PAPER, VARIANTS, ODEFormer, ODEFormerConfig, load_odeformer, variant_config
from formers.train.config import TrainConfig
from formers.train.task import Task

FAMILIES = ("random", "laws")


def _bare(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, "module", None) or getattr(model, "_orig_mod", None), nn.Module):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _pool_dir(family: str, max_dim: int, size: int, seed: int) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "formers" / "data"
    return base / f"ode-pool-{family}-d{max_dim}-n{size}-s{seed}"


@register("task", "ode", paper=PAPER,
          summary="ODEFormer: symbolic ODE systems from one trajectory; r2_acc (R2 > 0.9, greedy)")
class ODETask(Task):
    """Symbolic regression of ODE systems from trajectories (ODEFormer, arXiv 2310.05573).

    Options:
        data: a folder of shards from ``formers data ode``, or a list of such folders (joined in
            order; None = a generated, cached pool).
        family: ``random`` (the paper's generator) or ``laws`` (1-D linear/logistic smoke family).
        max_dim: largest system dimension generated (paper 6; default 2); must not exceed the
            model's ``max_dimension``.
        pool_size: samples generated when ``data`` is None. eval_size: validation samples.
        eval_decode: validation systems decoded for ``r2_acc``.
        noise / subsample: the paper's training corruption maxima (paper 0.1 / 0.5).
        max_tokens: longest prefix sequence kept (longer samples are dropped).
        workers: processes for generating the pool.
    Raises:
        ValueError: a bad option, or a data folder without samples, before any training.
    """

    metric = "r2_acc"
    lower_is_better = False
    report_metrics = ("val_loss", "token_acc", "parse_rate")
    default_models = ("odeformer",)

    def __init__(self, seed: int = 0, data: str | list[str] | None = None, family: str = "random",
                 max_dim: int = 2, pool_size: int = 256, eval_size: int = 64, eval_decode: int = 16,
                 noise: float = 0.0, subsample: float = 0.0, max_tokens: int = 200,
                 workers: int = 1) -> None:
        super().__init__(seed)
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("ode task: data needs at least one folder of shards, got []")
            data = [str(d) for d in data] if len(data) > 1 else str(data[0])
        if family not in FAMILIES:
            raise ValueError(f"ode task: family must be one of {list(FAMILIES)}, got {family!r}")
        for name, v, lo in (("max_dim", max_dim, 1), ("pool_size", pool_size, 1), ("eval_size", eval_size, 1),
                            ("eval_decode", eval_decode, 0), ("max_tokens", max_tokens, 1),
                            ("workers", workers, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ode task: {name} must be an int >= {lo}, got {v!r}")
        if family == "laws" and max_dim != 1:
            max_dim = 1
        if not (0 <= noise and 0 <= subsample < 1):
            raise ValueError(f"ode task: need noise >= 0 and 0 <= subsample < 1, got {noise}, {subsample}")
        self.options = {"data": None if data is None else data if isinstance(data, list) else str(data),
                        "family": family, "max_dim": max_dim,
                        "pool_size": pool_size, "eval_size": eval_size, "eval_decode": eval_decode,
                        "noise": noise, "subsample": subsample, "max_tokens": max_tokens, "workers": workers}
        self.max_dim, self.noise, self.subsample, self.max_tokens = max_dim, noise, subsample, max_tokens
        self.pool, self.val = self._load(data, family, pool_size, eval_size, workers)

    # -------------------------------------------------------------------------------- data
    def _keep(self, samples) -> list[dict]:
        """Samples within max_dim / max_tokens, with t and x as float64 arrays (compact in memory)."""
        return [{**s, "t": np.asarray(s["t"], dtype=np.float64), "x": np.asarray(s["x"], dtype=np.float64)}
                for s in samples if len(s["tokens"]) <= self.max_tokens and s["dim"] <= self.max_dim]

    def _load(self, data, family, pool_size, eval_size, workers) -> tuple[list[dict], list[dict]]:
        from formers.sciml.ode import generate as G

        if family == "laws":
            from formers.sciml.ode import laws

            rng = np.random.default_rng([self.seed, 0])
            pool = [laws.law_sample(rng, held_out=False) for _ in range(pool_size)]
            rng = np.random.default_rng([self.seed, 1])
            return self._keep(pool), self._keep([laws.law_sample(rng, held_out=True) for _ in range(eval_size)])
        cfg = G.GeneratorConfig(max_dim=self.max_dim, max_prefix_len=self.max_tokens)
        if data is not None:
            folders = [Path(d) for d in (data if isinstance(data, list) else [data])]
            for folder in folders:
                if not folder.is_dir():
                    raise ValueError(f"ode task: data {folder} is not a folder of shards (make one with "
                                     f"`formers data ode --out {folder}`)")
            seen: dict[Path, Path] = {}
            for folder in folders:
                if folder.resolve() in seen:
                    raise ValueError(f"ode task: data names the folder {folder} twice ({seen[folder.resolve()]} "
                                     f"and {folder}): its samples would repeat and reach the held-out set")
                seen[folder.resolve()] = folder
            raw = [s for folder in folders for s in G.iter_samples(folder)]
            samples = self._keep(raw)
            if len(samples) <= eval_size:
                raise ValueError(f"ode task: {data} has {len(samples)} samples with dim <= {self.max_dim} "
                                 f"and at most {self.max_tokens} tokens; need more than eval_size = {eval_size}")
            pool, val = samples[:-eval_size], samples[-eval_size:]  # the last shard's tail is held out
            key = lambda s: json.dumps([s["tokens"], s["x"][0].tolist()])  # noqa: E731
            train_keys = {key(s) for s in pool}
            leaked = sum(key(s) in train_keys for s in val)
            if leaked:
                raise ValueError(f"ode task: {leaked} of the {len(val)} held-out samples (the tail of {folders[-1]}) "
                                 f"also appear among the training samples: folders {[str(f) for f in folders]} "
                                 f"hold the same systems (made with the same --seed and shard indices?); "
                                 f"make the data with distinct `formers data ode --seed` values")
            if len(samples) < len(raw):  # what _keep dropped: too high a dimension, else too long
                too_high = sum(s["dim"] > self.max_dim for s in raw)
                print(f"formers: ode task: training on {len(samples)} of the {len(raw)} samples in {data}: "
                      f"{too_high} have dimension > max_dim = {self.max_dim} (--opt "
                      f"max_dim=N keeps them, up to the model's max_dimension), "
                      f"{len(raw) - len(samples) - too_high} more than max_tokens = {self.max_tokens} "
                      f"prefix tokens", file=sys.stderr)
            return pool, val
        else:
            folder = _pool_dir(family, self.max_dim, pool_size, self.seed)
            G.generate_dataset(folder, pool_size, cfg, seed=self.seed, shard_size=min(pool_size, 256),
                               workers=workers, progress=False)
            pool = self._keep(list(G.iter_samples(folder)))[:pool_size]
        val_dir = _pool_dir(family, self.max_dim, eval_size, self.seed + 1_000_003)
        G.generate_dataset(val_dir, eval_size, cfg, seed=self.seed + 1_000_003,
                           shard_size=min(eval_size, 256), workers=workers, progress=False)
        val = self._keep(list(G.iter_samples(val_dir)))[:eval_size]
        return pool, val

    def _encode(self, samples: list[dict], rng: np.random.Generator | None, max_dimension: int
                ) -> dict[str, torch.Tensor]:
        from formers.sciml.ode.generate import corrupt

        pts, tgts = [], []
        vocab = tokens._index(max_dimension)
        for s in samples:
            t, x = np.asarray(s["t"]), np.asarray(s["x"])
            if rng is not None and (self.noise > 0 or self.subsample > 0):
                t, x = corrupt(rng, t, x, self.noise, self.subsample)
            pts.append(tokens.encode_points(t, x, max_dimension))
            tgts.append([tokens.BOS] + [vocab[w] for w in s["tokens"]] + [tokens.EOS])
        points, mask = tokens.collate_points(pts)
        return {"points": points, "mask": mask, "tgt": tokens.collate_targets(tgts)}

    @property
    def model_max_dimension(self) -> int:
        return getattr(self, "_model_dim", max(self.max_dim, 2))

    def train_batch(self, step: int, micro: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, micro])
        idx = rng.integers(len(self.pool), size=batch_size)
        return self._encode([self.pool[i] for i in idx], rng, self.model_max_dimension)

    def tokens_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["tgt"][:, 1:] != tokens.PAD).sum())

    # -------------------------------------------------------------------------------- model
    def model_config(self, variant: str = "odeformer") -> ODEFormerConfig:
        return variant_config(variant)

    def build_model(self, cfg: ODEFormerConfig) -> nn.Module:
        if not isinstance(cfg, ODEFormerConfig):
            raise TypeError(f"ode task: expected an ODEFormerConfig, got {type(cfg).__name__}")
        want = tokens.output_vocab_size(cfg.max_dimension)
        if cfg.vocab_size != want or cfg.input_vocab_size != len(tokens.INPUT_VOCAB):
            raise ValueError(f"ode task: the model's vocabularies ({cfg.input_vocab_size} input, {cfg.vocab_size} "
                             f"output) do not match max_dimension {cfg.max_dimension} ({len(tokens.INPUT_VOCAB)}, "
                             f"{want}); set max_dimension through the variant (e.g. --set max_dimension=N "
                             f"vocab_size={want})")
        if cfg.max_dimension < self.max_dim:
            raise ValueError(f"ode task: max_dim {self.max_dim} exceeds the model's max_dimension "
                             f"{cfg.max_dimension}")
        longest = max(len(s["tokens"]) for s in self.pool + self.val)
        if cfg.max_output_len < longest + 2:
            raise ValueError(f"ode task: the longest system has {longest} tokens (+ bos, eos), more than "
                             f"the model's max_output_len {cfg.max_output_len}; lower --opt max_tokens "
                             f"or raise max_output_len")
        self._model_dim = cfg.max_dimension
        return ODEFormer(cfg)

    def config_from_dict(self, data: dict[str, Any]) -> ODEFormerConfig:
        return ODEFormerConfig.from_dict(data)

    def load_model(self, folder: Any) -> nn.Module:
        model = load_odeformer(folder)
        self._model_dim = model.cfg.max_dimension
        return model

    def default_train(self) -> TrainConfig:
        """A small CPU budget (about 2.5 CPU-seconds a step for ``odeformer``: a few minutes):
        100 steps of 16 systems, AdamW lr 5e-4 with warm-up and cosine decay, clipping at 1
        (paper: Adam 2e-4, 10k warm-up steps, ~10k tokens per batch, far longer)."""
        return TrainConfig(max_steps=100, batch_size=16, lr=5e-4, warmup_steps=10, weight_decay=0.01,
                           beta1=0.9, beta2=0.99, grad_clip=1.0, eval_every=50, eval_batches=2,
                           checkpoint_every=50)

    # -------------------------------------------------------------------------------- loss, eval
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tgt = batch["tgt"]
        logits = model(batch["points"], tgt[:, :-1], batch["mask"])
        return F.cross_entropy(logits.float().flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=tokens.PAD)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n_batches: int, batch_size: int,
                 device: torch.device) -> dict[str, float]:
        from formers.sciml.ode.predict import r2_of
        from formers.sciml.ode.search import greedy

        m = _bare(model)
        was = m.training
        m.eval()
        dim = m.cfg.max_dimension
        total, correct, count = 0.0, 0, 0
        for i in range(0, len(self.val), batch_size):
            b = {k: v.to(device) for k, v in self._encode(self.val[i:i + batch_size], None, dim).items()}
            tgt = b["tgt"]
            logits = m(b["points"], tgt[:, :-1], b["mask"]).float()
            y = tgt[:, 1:]
            keep = y != tokens.PAD
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=tokens.PAD,
                                           reduction="sum"))
            correct += int(((logits.argmax(-1) == y) & keep).sum())
            count += int(keep.sum())
        solved = parsed = 0
        n_dec = min(self.options["eval_decode"], len(self.val))
        # decodings longer than twice the longest validation target cannot be what it asks for
        max_len = min(m.cfg.max_output_len - 1, 2 * max(len(s["tokens"]) for s in self.val) + 2)
        for i in range(0, n_dec, batch_size):
            part = self.val[i:min(i + batch_size, n_dec)]
            b = self._encode(part, None, dim)
            seqs = greedy(m, b["points"].to(device), b["mask"].to(device), tokens.BOS, tokens.EOS, max_len)
            for s, ids in zip(part, seqs):
                try:
                    system = tokens.decode_system(ids, dim, dim=s["x"].shape[1])
                except ValueError:
                    continue
                parsed += 1
                solved += r2_of(system, s["t"], s["x"]) > 0.9
        m.train(was)
        return {"r2_acc": solved / max(n_dec, 1), "parse_rate": parsed / max(n_dec, 1),
                "val_loss": total / max(count, 1), "token_acc": correct / max(count, 1),
                "val_systems": float(len(self.val))}

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps([s["tokens"] for s in self.pool[:64]]).encode()).hexdigest()[:16]
        return {"task": "ode", "options": self.options, "pool": len(self.pool), "val": len(self.val),
                "pool_sha256_head": digest, "variants": sorted(VARIANTS)}
