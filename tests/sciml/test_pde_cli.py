"""`formers data pde`: writes shards that load back; bad input is a clear error (exit code 2)."""

from __future__ import annotations

import torch

from formers.cli import main
from formers.sciml.pde.shards import load_shards

torch.set_num_threads(1)


def test_data_pde_writes_and_resumes(tmp_path, capsys):
    args = ["data", "pde", "--equation", "burgers", "--n-samples", "3", "--grid", "32", "--n-steps", "4",
            "--shard-size", "2", "--threads", "1", "--out", str(tmp_path), "--quiet", "--opt", "nu=0.05"]
    assert main(args) == 0
    assert "3 samples of shape (4, 32) in 2 shards" in capsys.readouterr().out
    data, meta = load_shards(tmp_path)
    assert data.shape == (3, 4, 32) and meta["params"]["nu"] == 0.05
    assert main(args) == 0  # complete: nothing to do, same answer
    assert main(args[:-1] + ["nu=0.06"]) == 2
    assert "params.nu: folder has 0.05, asked 0.06" in capsys.readouterr().err


def test_data_pde_bad_input(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["data", "pde", "--equation", "ns2d", "--grid", "63", "--out", out]) == 2
    assert "grid must be an even int >= 8, got 63" in capsys.readouterr().err
    assert main(["data", "pde", "--equation", "ns2d", "--nu", "-0.5", "--out", out]) == 2
    assert "nu must be a finite number >= 0, got -0.5" in capsys.readouterr().err
    assert main(["data", "pde", "--equation", "kdv", "--out", out]) == 2
    assert "unknown equation 'kdv'" in capsys.readouterr().err
    assert main(["data", "pde", "--nu", "0.1", "--opt", "nu=0.2", "--out", out]) == 2
    assert "also given as flags" in capsys.readouterr().err


def test_generation_benchmark_smoke(tmp_path):
    """benchmarks/pde_generation.py --smoke runs every equation and writes its JSON."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "pde_generation.py"
    spec = importlib.util.spec_from_file_location("pde_generation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "pde_generation-cpu-smoke.json").read_text())["rows"]
    assert [r["equation"] for r in rows] == ["ns2d", "ns3d", "burgers"]
    assert all(r["sample_steps_per_s"] > 0 for r in rows)
