"""The ``ode`` task: registered, deterministic batches, cross-entropy on the prefix tokens, its
evaluation, option errors, and the held-out split of the smoke family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from formers import registry
from formers.sciml.ode import codec, laws, tokens
from formers.sciml.ode.model import variant_config
from formers.sciml.ode.task import ODETask


@pytest.fixture(scope="module")
def task():
    return ODETask(seed=0, family="laws", pool_size=64, eval_size=8, eval_decode=4)


def test_registered_and_options_checked():
    import formers.sciml  # noqa: F401  (registers)

    assert registry.get("task", "ode").obj is ODETask
    with pytest.raises(ValueError, match="family"):
        ODETask(family="bogus")
    with pytest.raises(ValueError, match="pool_size"):
        ODETask(family="laws", pool_size=0)
    with pytest.raises(ValueError, match="subsample"):
        ODETask(family="laws", subsample=1.0)
    with pytest.raises(ValueError, match="not a folder"):
        ODETask(data="/nonexistent/shards")


def test_smoke_family_holds_out_whole_systems(task):
    def lead(sample):  # the leading constant a: the first float in the prefix tokens
        toks = sample["tokens"]
        i = next(i for i, w in enumerate(toks) if w in codec.SIGNS)
        return codec.decode_float(toks[i:i + 3])

    assert not any(laws.is_held_out(lead(s)) for s in task.pool)
    assert all(laws.is_held_out(lead(s)) for s in task.val)
    assert {s["tokens"][0] for s in task.val} == {"mul", "add"}  # both laws among the held-out


def test_batches_are_deterministic_and_loss_is_prefix_cross_entropy(task):
    model = task.build_model(variant_config("odeformer-tiny", max_dimension=1, max_output_len=32))
    a, b = task.train_batch(3, 0, 5), task.train_batch(3, 0, 5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(task.train_batch(4, 0, 5)["tgt"], a["tgt"]) or not torch.equal(
        task.train_batch(4, 0, 5)["points"], a["points"])
    assert a["points"].shape[-1] == 6 and a["mask"].dtype == torch.bool
    assert (a["tgt"][:, 0] == tokens.BOS).all()
    loss = task.loss(model, a)
    # by hand: mean token NLL over the non-pad targets
    logits = model(a["points"], a["tgt"][:, :-1], a["mask"])
    y = a["tgt"][:, 1:]
    nll = -torch.log_softmax(logits, -1).gather(-1, y[..., None])[..., 0]
    assert loss.item() == pytest.approx(nll[y != tokens.PAD].mean().item(), rel=1e-5)
    assert task.tokens_per_batch(a) == int((y != tokens.PAD).sum())
    out = task.evaluate(model, 1, 4, torch.device("cpu"))
    assert {"r2_acc", "parse_rate", "val_loss", "token_acc"} <= set(out) and 0 <= out["r2_acc"] <= 1


def test_model_must_fit_the_task(task):
    with pytest.raises(ValueError, match="max_output_len"):
        task.build_model(variant_config("odeformer-tiny", max_dimension=1, max_output_len=8))
    with pytest.raises(ValueError, match="vocabularies"):
        task.build_model(variant_config("odeformer-tiny", max_dimension=1).replace(max_dimension=2))


def test_data_from_several_shard_folders(tmp_path):
    from formers.sciml.ode.generate import GeneratorConfig, generate_dataset, iter_samples

    cfg = GeneratorConfig(max_dim=1)
    generate_dataset(tmp_path / "a", 4, cfg, seed=0, shard_size=4)
    generate_dataset(tmp_path / "b", 6, cfg, seed=1, shard_size=3)  # another seed and shard size
    a, b = list(iter_samples(tmp_path / "a")), list(iter_samples(tmp_path / "b"))
    both = ODETask(data=[str(tmp_path / "a"), str(tmp_path / "b")], max_dim=1, eval_size=2)
    assert [s["tokens"] for s in both.pool + both.val] == [s["tokens"] for s in a + b]
    assert [s["tokens"] for s in both.val] == [s["tokens"] for s in b[-2:]]  # the last folder's tail
    assert both.options["data"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    one = ODETask(data=[str(tmp_path / "a")], max_dim=1, eval_size=2)  # a one-folder list = the folder
    assert one.options["data"] == str(tmp_path / "a") and len(one.pool) == 2
    with pytest.raises(ValueError, match="at least one folder"):
        ODETask(data=[], max_dim=1)
    with pytest.raises(ValueError, match="not a folder"):
        ODETask(data=[str(tmp_path / "a"), str(tmp_path / "missing")], max_dim=1)


def test_shard_folders_that_repeat_samples_are_refused_and_drops_are_reported(tmp_path, capsys):
    from formers.sciml.ode.generate import GeneratorConfig, generate_dataset

    torch.set_num_threads(1)
    cfg = GeneratorConfig(max_dim=1)
    generate_dataset(tmp_path / "a", 4, cfg, seed=0, shard_size=4, progress=False)
    generate_dataset(tmp_path / "same", 4, cfg, seed=0, shard_size=4, progress=False)  # same seed: the same systems
    with pytest.raises(ValueError, match="twice"):
        ODETask(data=[str(tmp_path / "a"), str(tmp_path / "a")], max_dim=1, eval_size=2)
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="twice"):
        ODETask(data=[str(tmp_path / "a"), str(tmp_path / "x" / ".." / "a")], max_dim=1, eval_size=2)
    with pytest.raises(ValueError, match="2 of the 2 held-out samples"):
        ODETask(data=[str(tmp_path / "a"), str(tmp_path / "same")], max_dim=1, eval_size=2)
    # samples above max_dim are dropped, and the user is told how many
    generate_dataset(tmp_path / "d2", 6, GeneratorConfig(min_dim=2, max_dim=2), seed=3, shard_size=6,
                     progress=False)
    capsys.readouterr()
    task = ODETask(data=[str(tmp_path / "a"), str(tmp_path / "d2")], max_dim=1, eval_size=2)
    assert len(task.pool) + len(task.val) == 4
    err = capsys.readouterr().err
    assert "training on 4 of the 10 samples" in err and "6 have dimension > max_dim = 1" in err
    ODETask(data=str(tmp_path / "a"), max_dim=1, eval_size=2)  # nothing dropped: silent
    assert capsys.readouterr().err == ""
