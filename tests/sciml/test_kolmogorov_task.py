"""The ``kolmogorov`` task: generated data, curriculum / pushforward, metrics, bad input, a CPU
smoke training that must cut the one-step relative L2 by 4x."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import formers.sciml  # noqa: F401  (registers the task and models)
from formers.sciml.pde.field_task import curriculum
from formers.sciml.pde.surrogate import predict, relative_l2
from formers.train.task import make_task

torch.set_num_threads(1)

TINY = dict(grid=16, n_train=4, n_val=1, n_test=1, n_frames=40, t_in=4, t_out=2, rollout=8,
            burn_in=0.5, forcing_wavenumber=4, curriculum_length=10, pushforward_after=1000, quiet=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kolmogorov-data")


@pytest.fixture(scope="module")
def task(data_dir):
    return make_task("kolmogorov", 0, {**TINY, "data": str(data_dir)})


def test_data_generated_once_and_described(task, data_dir):
    folders = list((data_dir / "fields").iterdir())
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["params"]["grid"] == 16 and meta["equation"] == "ns2d" and meta["n_samples"] == 6
    again = make_task("kolmogorov", 0, {**TINY, "data": str(data_dir)})  # read back, not regenerated
    assert again.describe() == task.describe()
    assert task.splits["train"].shape == (4, 40, 16, 16, 1)
    tr = task.splits["train"]
    assert abs(float(tr.mean())) < 1e-5 and abs(float(tr.std()) - 1) < 1e-4  # normalised by train stats
    assert task.describe()["normalisation"]["std"][0] > 0.5  # vorticity std in physical units


def test_curriculum_matches_the_reference_sampler():
    # reference CurriculumSampler(1, 4, 6000): 1 + int(3 * step / 6000)
    assert [curriculum(s, 4, 6000) for s in (0, 1999, 2000, 3999, 4000, 6000, 9000)] == [1, 1, 2, 2, 3, 4, 4]
    assert curriculum(5, 1, 100) == 1


def test_pushforward_loss_unrolls_twice_then_targets_the_third_window(task):
    torch.manual_seed(0)
    m = task.build_model(task.model_config("factformer").replace(d_model=32, n_layers=1, n_heads=2, head_dim=8))
    task.options.update(pushforward_after=0, pushforward_every=1)
    try:
        L, push = task.frames_now(30, 2)
        assert (L, push) == (2, 2)
        b = task.train_batch(30, 0, 3)
        x = b["x"]
        with torch.no_grad():
            for _ in range(2):
                x = torch.cat([x, predict(m, x, 2)], dim=1)[:, -4:]
            want = relative_l2(m(x, steps=2), b["future"][:, 4:6]).mean()
            assert torch.allclose(task.loss(m, b), want)
    finally:
        task.options.update(pushforward_after=1000, pushforward_every=3)
    assert task.frames_now(3, 2) == (1, 0)  # early: one frame, no pushforward


def test_bad_input_clear_errors(task, data_dir, tmp_path):
    with pytest.raises(ValueError, match="max_points"):
        task.build_model(task.model_config("softmax").replace(max_points=100))  # 16 x 16 = 256 points
    with pytest.raises(ValueError, match="n_frames"):
        make_task("kolmogorov", 0, {**TINY, "n_frames": 10, "data": str(data_dir)})
    with pytest.raises(ValueError, match="forcing_wavenumber"):
        make_task("kolmogorov", 0, {**TINY, "forcing_wavenumber": 8, "data": str(tmp_path)})
    with pytest.raises(ValueError, match="surrogate"):
        task.model_config("no-such-model")
    with pytest.raises(ValueError, match="grid"):  # FNO's 12 modes need >= 24 points per axis
        task.build_model(task.model_config("fno").replace(modes=12))
    # a data shard holding NaN is refused with its name
    from safetensors.torch import load_file, safe_open, save_file
    shutil.copytree(data_dir / "fields", tmp_path / "fields")
    shard = next((tmp_path / "fields").glob("*/shard-00000.safetensors"))
    with safe_open(str(shard), "pt") as f:
        meta = f.metadata()
    bad = load_file(str(shard))["data"]
    bad[2, 3, 4, 5] = float("nan")
    save_file({"data": bad}, str(shard), metadata=meta)
    with pytest.raises(ValueError, match="NaN"):
        make_task("kolmogorov", 0, {**TINY, "data": str(tmp_path)})


def test_smoke_training_cuts_one_step_error_4x(task):
    torch.manual_seed(0)
    m = task.build_model(task.model_config("factformer").replace(d_model=32, n_layers=2, n_heads=2, head_dim=16))
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    before = task.evaluate(m, 1, 8, torch.device("cpu"))
    for s in range(40):
        loss = task.loss(m, task.train_batch(s, 0, 4))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    after = task.evaluate(m, 1, 8, torch.device("cpu"))
    assert after["val_one_step_rel_l2"] < 0.25 * before["val_one_step_rel_l2"], (before, after)
    assert after["test_rollout_rel_l2"] < before["test_rollout_rel_l2"]


def test_turbulence3d_task_trains_ifactformer_on_3d_velocity(tmp_path):
    """The 3-D member of the family: velocity (3 channels) on a periodic box, per-channel z-score,
    one-step models, a rollout metric; -m and -o build from the same task."""
    t = make_task("turbulence3d", 0, dict(grid=8, n_train=2, n_val=1, n_test=1, n_frames=12, rollout=6,
                                          eval_stride=4, burn_in=0.2, forcing_k=2.0, data=str(tmp_path),
                                          quiet=True))
    assert t.splits["train"].shape == (2, 12, 8, 8, 8, 3)
    mean = t.splits["train"].mean(dim=(0, 1, 2, 3, 4))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)  # per velocity component
    for name in ("ifactformer-m", "ifactformer-o"):
        m = t.build_model(t.model_config(name).replace(d_model=24, n_heads=2, head_dim=8, n_iter=2))
        loss = t.loss(m, t.train_batch(0, 0, 2))
        loss.backward()
        scores = t.evaluate(m, 1, 4, torch.device("cpu"))
        assert torch.isfinite(loss) and scores["test_windows"] == 2 and scores["rollout_frames"] == 6
    with pytest.raises(ValueError, match="n_dims"):
        t.build_model(make_task("kolmogorov", 0, {**TINY, "data": str(tmp_path)}).model_config("fno"))
