"""Synthetic tasks: determinism, data rules, option errors, and a short real run above chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import formers.synthetic  # noqa: F401  (registers the tasks)
from formers.registry import get
from formers.synthetic.tasks import majority_sequences
from formers.train.config import TrainConfig
from formers.train.task import make_task
from formers.train.trainer import Trainer


@pytest.mark.parametrize("name", ["majority", "reverse", "sort"])
def test_registered_and_batches_deterministic(name):
    assert get("task", name).paper is not None
    a, b = make_task(name, seed=3), make_task(name, seed=3)
    ba, bb = a.train_batch(5, 1, 8), b.train_batch(5, 1, 8)
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)
    other = a.train_batch(6, 1, 8)
    assert any(not torch.equal(ba[k], other[k]) for k in ba)
    c = make_task(name, seed=4).train_batch(5, 1, 8)
    assert any(not torch.equal(ba[k], c[k]) for k in ba)
    cfg = a.model_config("baseline")
    assert a.model_config("rope").position == "rope" and cfg.vocab_size >= 2


def test_majority_data_rule():
    x, y = majority_sequences(np.random.default_rng(0), 500, 50, 20, 6)
    assert x.shape == (500, 50) and x.min() >= 0 and x.max() < 20
    counts = np.stack([np.bincount(r, minlength=20) for r in x])
    top2 = np.sort(counts, 1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] >= 6).all() and (counts.argmax(1) == y).all()


@pytest.mark.parametrize("name", ["reverse", "sort"])
def test_seq_format(name):
    t = make_task(name, seed=0, options={"length": 6})
    ids = t.train_batch(0, 0, 4)["ids"]
    assert ids.shape == (4, 13) and (ids[:, 6] == t.sep).all()
    x, y = ids[:, :6], ids[:, 7:]
    want = x.flip(1) if name == "reverse" else x.sort(1).values
    assert torch.equal(y, want)
    assert t.model_config("baseline").max_seq_len == 13


@pytest.mark.parametrize("name,opt", [("majority", {"n_classes": 1}), ("majority", {"seq_len": 0}),
                                      ("majority", {"min_delta": 60}), ("reverse", {"length": 0}),
                                      ("sort", {"n_symbols": 1}), ("sort", {"length": 2.5}),
                                      ("reverse", {"bogus": 1})])
def test_bad_options(name, opt):
    with pytest.raises((ValueError, TypeError)):  # TypeError: a float where an int is needed
        make_task(name, options=opt)


def _run(name, tmp_path, steps, options=None, **train):
    torch.manual_seed(0)
    t = make_task(name, seed=0, options=options)
    tc = TrainConfig(max_steps=steps, eval_every=steps, quiet=True, device="cpu", warmup_steps=10,
                     weight_decay=0.0, **train)
    return Trainer(t, t.model_config("baseline"), tc, tmp_path / name).fit()


def test_majority_learns(tmp_path):
    # chance is 1/20; 150 steps reach about 0.85
    s = _run("majority", tmp_path, 150, {"val_size": 500}, batch_size=64, lr=1e-2)
    assert s["val_acc"] > 0.6, s
    assert s["unselectable_keys"] == 0  # keys after LayerNorm's scaling are all selectable
    assert 0 <= s["query_angle"] <= 90


def test_reverse_learns(tmp_path):
    # chance is 1/10; 80 steps reach about 0.99
    s = _run("reverse", tmp_path, 80, {"length": 8, "train_size": 5000, "val_size": 200},
             batch_size=64, lr=3e-3)
    assert s["val_acc"] > 0.7, s


def test_sort_learns(tmp_path):
    s = _run("sort", tmp_path, 80, {"length": 8, "train_size": 5000, "val_size": 200},
             batch_size=64, lr=3e-3)
    assert s["val_acc"] > 0.6, s
