"""PDE data shards: round trip, resume after a kill, refusal of changed settings, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from formers.sciml.pde import shards
from formers.sciml.pde.navier_stokes import navier_stokes_2d

torch.set_num_threads(1)
TINY = dict(grid=16, forcing_wavenumber=4, n_steps=3, burn_in=0.0, dt=1 / 256, record_dt=1 / 64)


def test_round_trip_equals_the_generator_and_sidecar_has_the_parameters(tmp_path):
    meta = shards.generate_shards("ns2d", tmp_path, 5, seed=3, shard_size=2, quiet=True, **TINY)
    assert meta["n_shards"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    data, meta2 = shards.load_shards(tmp_path)
    assert data.shape == (5, 3, 16, 16) and meta2 == meta
    side = json.loads((tmp_path / "meta.json").read_text())
    assert side["seed"] == 3 and side["params"]["nu"] == 1e-3 and side["params"]["grid"] == 16
    direct, _ = navier_stokes_2d(5, seed=3, **TINY)  # one batch: same samples as the 3 shards
    assert torch.allclose(data, direct, atol=1e-5)


def test_resume_generates_only_missing_shards(tmp_path, monkeypatch):
    shards.generate_shards("burgers", tmp_path, 4, shard_size=2, quiet=True, grid=32, n_steps=2)
    first = shards.shard_path(tmp_path, 0).stat().st_mtime_ns
    shards.shard_path(tmp_path, 1).unlink()  # as if killed before shard 1 was renamed into place
    with pytest.raises(FileNotFoundError, match="rerun the same"):
        shards.load_shards(tmp_path)
    calls = []
    real = shards.GENERATORS["burgers"]
    monkeypatch.setitem(shards.GENERATORS, "burgers",
                        (real[0], lambda n, **kw: calls.append(kw["first_index"]) or real[1](n, **kw)))
    shards.generate_shards("burgers", tmp_path, 4, shard_size=2, quiet=True, grid=32, n_steps=2)
    assert calls == [2]  # only shard 1 (samples 2, 3) was generated again
    assert shards.shard_path(tmp_path, 0).stat().st_mtime_ns == first
    data, _ = shards.load_shards(tmp_path)
    assert data.shape == (4, 2, 32)


def test_changed_settings_are_refused(tmp_path):
    shards.generate_shards("burgers", tmp_path, 2, quiet=True, grid=32, n_steps=2)
    with pytest.raises(ValueError, match=r"params.nu: folder has 0.1, asked 0.2\)"):
        shards.generate_shards("burgers", tmp_path, 2, quiet=True, grid=32, n_steps=2, nu=0.2)


def test_bad_input_fails_before_any_work(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(ValueError, match="unknown equation 'heat'"):
        shards.generate_shards("heat", out, 2)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['viscosity'\]"):
        shards.generate_shards("ns2d", out, 2, viscosity=0.1)
    with pytest.raises(ValueError, match="NS2DConfig.nu must be a finite number >= 0, got -1"):
        shards.generate_shards("ns2d", out, 2, nu=-1.0)
    with pytest.raises(ValueError, match="grid must be an even int >= 8, got 63"):
        shards.generate_shards("ns3d", out, 2, grid=63)
    with pytest.raises(ValueError, match="n_samples must be an int >= 1, got 0"):
        shards.generate_shards("ns2d", out, 0)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="not a formers PDE data folder"):
        shards.load_shards(out)


def test_loader_refuses_nan_and_wrong_shapes(tmp_path):
    from safetensors.torch import save_file

    shards.generate_shards("burgers", tmp_path, 2, quiet=True, grid=32, n_steps=2)
    bad = torch.zeros(2, 2, 32)
    bad[1, 0, 5] = float("nan")
    save_file({"data": bad}, str(shards.shard_path(tmp_path, 0)))
    with pytest.raises(ValueError, match="shard-00000.safetensors holds NaN or inf"):
        shards.load_shards(tmp_path)
    save_file({"data": torch.zeros(2, 3, 32)}, str(shards.shard_path(tmp_path, 0)))
    with pytest.raises(ValueError, match=r"holds shape \(2, 3, 32\), the sidecar says \(2, 2, 32\)"):
        shards.load_shards(tmp_path)


def test_blow_up_names_the_setting_and_keeps_no_partial_shard(tmp_path):
    with pytest.raises(ValueError, match="blew up.*dt = 0.5"):
        shards.generate_shards("ns2d", tmp_path, 1, quiet=True, grid=16, forcing_wavenumber=4,
                               nu=0.0, drag=0.0, dt=0.5, record_dt=0.5, burn_in=0.0, n_steps=400)
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tmp"))
