import json
import random

import numpy as np
import pytest
import torch

import formers.train.checkpoint as ck
from formers.nn.models import build_model
from formers.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from formers.train.optim import build_optimizer

from _train_synth import SynthTask, tiny_model_config, tiny_train_config


def _trained(seed=0, steps=2):
    torch.manual_seed(seed)
    cfg = tiny_model_config()
    task = SynthTask()
    model = build_model(cfg)
    opt = build_optimizer(model, tiny_train_config())
    for s in range(steps):
        task.loss(model, task.train_batch(s, 0, 4)).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _draws():
    return torch.rand(3), np.random.rand(3), random.random()


def test_round_trip(tmp_path):
    model, opt = _trained()
    tc = tiny_train_config()
    path = save_checkpoint(tmp_path, model, opt, step=2, train_cfg=tc, best={"name": "val_loss", "value": 1.5, "step": 2})
    assert path == tmp_path / "ckpt"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    after = _draws()

    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    model2 = build_model(tiny_model_config())
    opt2 = build_optimizer(model2, tc)
    state = load_checkpoint(tmp_path, model2, opt2)
    assert state["step"] == 2 and state["best"]["value"] == 1.5
    assert state["train_config"] == tc.to_dict()
    _same_state(model.state_dict(), model2.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        _same_state(s1["state"][i], s2["state"][i])
    assert [{k: v for k, v in g.items()} for g in s1["param_groups"]] == s2["param_groups"]
    again = _draws()  # RNG states restored: the same draws as right after saving
    assert torch.equal(after[0], again[0]) and np.array_equal(after[1], again[1]) and after[2] == again[2]


def test_atomic_swap_crash_keeps_previous(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=1)
    w1 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real = ck._rename

    def crash_on_final(src, dst):  # the old ckpt has been moved aside; die before the new one lands
        if str(dst).endswith("/ckpt"):
            raise KeyboardInterrupt("killed mid-swap")
        real(src, dst)

    monkeypatch.setattr(ck, "_rename", crash_on_final)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, opt, step=2)
    assert not (tmp_path / "ckpt").exists()
    found = find_checkpoint(tmp_path)
    assert found is not None and found.name.startswith("ckpt.old-")
    fresh = build_model(tiny_model_config())
    assert load_checkpoint(tmp_path, fresh, build_optimizer(fresh, tiny_train_config()))["step"] == 1
    _same_state(w1, fresh.state_dict())

    monkeypatch.setattr(ck, "_rename", real)  # the next save succeeds and clears the leftovers
    save_checkpoint(tmp_path, model, opt, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 3


def test_crash_while_writing_keeps_previous(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=1)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck, "_optimizer_to_flat", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, opt, step=2)
    assert find_checkpoint(tmp_path) == tmp_path / "ckpt"
    fresh = build_model(tiny_model_config())
    assert load_checkpoint(tmp_path, fresh, build_optimizer(fresh, tiny_train_config()))["step"] == 1


def test_mismatched_config_raises(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=2)
    other = build_model(tiny_model_config(d_model=32))
    with pytest.raises(ValueError, match="d_model"):
        load_checkpoint(tmp_path, other, build_optimizer(other, tiny_train_config()))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"])
def test_corrupt_file_raises(tmp_path, name):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=2)
    f = tmp_path / "ckpt" / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3] + b"\x00garbage")
    fresh = build_model(tiny_model_config())
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path, fresh, build_optimizer(fresh, tiny_train_config()))


def test_missing_file_raises(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, step=2)
    (tmp_path / "ckpt" / "optimizer.safetensors").unlink()
    fresh = build_model(tiny_model_config())
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path, fresh, build_optimizer(fresh, tiny_train_config()))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nowhere", fresh)


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from formers.atomic import write_json

    path = write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
