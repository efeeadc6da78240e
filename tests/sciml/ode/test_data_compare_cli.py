"""`formers data ode` and `formers compare odebench` through main() (in-process)."""

import json

from formers.cli import main
from formers.sciml.ode import expr
from formers.sciml.ode.generate import iter_samples


def test_data_ode_writes_resumable_shards(tmp_path, capsys):
    out = tmp_path / "ode"
    args = ["data", "ode", "--samples", "2", "--out", str(out), "--shard-size", "1", "--quiet",
            "--opt", "max_dim=1", "max_binary=2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["shards_written"] == 2 and summary["samples"] == 2
    samples = list(iter_samples(out))
    assert len(samples) == 2 and all(len(expr.from_prefix(s["tokens"])) == 1 for s in samples)
    assert main(args) == 0  # finished shards are skipped
    assert json.loads(capsys.readouterr().out.splitlines()[0])["shards_skipped"] == 2


def test_data_ode_writes_the_samples_asked_for(tmp_path, capsys):
    """--samples 3 without --shard-size writes 3 samples (it used to write a whole 1000-sample
    shard); a larger re-run into the same folder keeps the folder's shard size."""
    out = tmp_path / "ode"
    args = ["data", "ode", "--out", str(out), "--quiet", "--opt", "max_dim=1", "max_binary=2", "--samples"]
    assert main(args + ["3"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["samples"] == 3 and json.loads((out / "meta.json").read_text())["shard_size"] == 3
    assert main(args + ["6"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 1 and summary["samples"] == 3
    assert len(list(iter_samples(out))) == 6


def test_bad_input_is_refused_before_work(tmp_path, capsys):
    assert main(["data", "ode", "--out", str(tmp_path / "x"), "--opt", "max_dimm=2"]) == 2
    assert "max_dimm" in capsys.readouterr().err
    assert main(["compare", "odebench", "--models", "pysr"]) == 2
    assert "unknown ODEBench model" in capsys.readouterr().err
    assert main(["compare", "odebench", "--models", "sindy", "--subsample", "1.5"]) == 2
    assert "subsample" in capsys.readouterr().err
    assert main(["compare", "odebench", "--models", "sindy", "--opt", "sindy.depth=3"]) == 2
    assert "unknown option" in capsys.readouterr().err


def test_compare_odebench_on_a_subset_of_systems(tmp_path, capsys, monkeypatch):
    import pytest

    from tests.conftest import shared_data

    pytest.importorskip("pysindy")
    from formers.sciml.ode import odebench as ob

    monkeypatch.setenv("FORMERS_DATA", str(shared_data(ob.ODEBENCH_FILE).parent))
    out = tmp_path / "cmp"
    assert main(["compare", "odebench", "--models", "sindy", "--opt", "ids=1,12", "--out", str(out)]) == 0
    rec = json.loads((out / "odebench-sindy.json").read_text())
    assert rec["ids"] == [1, 12] and {r["id"] for r in rec["results"][0]["records"]} == {1, 12}
    capsys.readouterr()
    assert main(["compare", "odebench", "--models", "sindy", "--opt", "ids=1,x", "--out", str(out)]) == 2
    assert "--opt ids: expected comma-separated ODEBench ids (1..63), got '1,x'" in capsys.readouterr().err
    assert main(["compare", "odebench", "--models", "sindy", "--opt", "ids=99", "--out", str(tmp_path / "c2")]) == 2
    assert "unknown ODEBench id(s) [99]" in capsys.readouterr().err
    # --ids is the same selection (the flag users and benchmarks/odeformer_train.py reach for)
    assert main(["compare", "odebench", "--models", "sindy", "--ids", "1,12", "--out", str(out)]) == 0
    assert json.loads((out / "odebench-sindy.json").read_text())["ids"] == [1, 12]
    capsys.readouterr()
    for bad, msg in ((["--ids", ""], "--ids: expected comma-separated ODEBench ids (1..63), got ''"),
                     (["--opt", "ids="], "--opt ids: expected comma-separated ODEBench ids (1..63), got ''"),
                     (["--ids", "1", "--noise", ","], "no setting to run")):
        assert main(["compare", "odebench", "--models", "sindy", *bad, "--out", str(tmp_path / "c3")]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "c3").exists()
    assert main(["compare", "sort", "--ids", "1"]) == 2
    assert "--ids selects ODEBench systems" in capsys.readouterr().err
    # a resumed file refuses other options for a model it holds results of (they would be mislabelled)
    assert main(["compare", "odebench", "--models", "sindy", "--ids", "1,12", "--opt", "sindy.degree=3",
                 "--out", str(out)]) == 2
    assert "holds sindy results made with options {}, not {'degree': 3}" in capsys.readouterr().err


def test_init_from_a_missing_run_is_refused_before_the_data(tmp_path, capsys, monkeypatch):
    import pytest

    import formers.train.task as T

    monkeypatch.setattr(T, "make_task_for", lambda *a, **k: pytest.fail("the task was built"))
    for bad in (tmp_path / "none", tmp_path):  # missing, and a folder without a checkpoint
        assert main(["train", "ode", "--model", "odeformer-tiny", "--init-from", str(bad),
                     "--out", str(tmp_path / "run")]) == 2
        assert f"--init-from {bad}: no checkpoint there" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()
