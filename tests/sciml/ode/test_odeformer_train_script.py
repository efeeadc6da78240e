"""benchmarks/odeformer_train.py: merge of bench parts (seeds, overlapping ids, options of one
model name) and one-line errors for bad input (ODEFormer, arXiv 2310.05573, ODEBench harness)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("odeformer_train", ROOT / "benchmarks" / "odeformer_train.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


def part(tmp_path: Path, name: str, ids, seed=0, model="sindy", options=None, r2=1.0) -> str:
    recs = [{"id": i, "dim": 1, "r2_reconstruction": r2, "r2_generalization": r2, "fit_seconds": 0.5}
            for i in ids]
    res = {"benchmark": "ODEBench", "seed": seed, "ids": list(ids), "system": {},
           "options": {model: options or {}},
           "results": [{"model": model, "noise": 0.0, "subsample": 0.0, "seconds": 1.0, "summary": {},
                        "records": recs}]}
    path = tmp_path / f"odebench-{name}.json"
    path.write_text(json.dumps(res))
    return str(path)


def merge(tmp_path, *inputs):
    return script.main(["merge", "--inputs", *inputs, "--name", "m", "--results", str(tmp_path)])


def test_merge_pools_disjoint_parts(tmp_path):
    a = part(tmp_path, "a", [1, 2], options={"k": 1})
    b = part(tmp_path, "b", [5, 7], options={"k": 1}, r2=0.0)
    assert merge(tmp_path, a, b) == 0
    out = json.loads((tmp_path / "odebench-m.json").read_text())
    assert out["ids"] == [1, 2, 5, 7] and out["options"] == {"sindy": {"k": 1}}
    s = out["results"][0]["summary"]["all"]
    assert s["n"] == 4 and s["acc_reconstruction"] == 0.5 and s["mean_fit_seconds"] == 0.5


def test_merge_refuses_parts_that_do_not_fit_together(tmp_path, capsys):
    a = part(tmp_path, "a", [1, 2], options={"k": 1})
    with pytest.raises(SystemExit, match=r"has systems \[2\] in more than one part"):
        merge(tmp_path, a, part(tmp_path, "b", [2, 5], options={"k": 1}))
    with pytest.raises(SystemExit, match=r"one seed.*seeds \[0, 1\]"):
        merge(tmp_path, a, part(tmp_path, "c", [5], seed=1, options={"k": 1}))
    with pytest.raises(SystemExit, match=r"model 'sindy' ran with options \{'k': 1\}.*but \{'k': 2\}"):
        merge(tmp_path, a, part(tmp_path, "d", [5], options={"k": 2}))
    with pytest.raises(SystemExit, match=r"gplearn at noise 0.0, dropped 0.0: lacks systems \[1, 2\]"):
        merge(tmp_path, a, part(tmp_path, "e", [5], model="gplearn"), part(tmp_path, "f", [5], options={"k": 1}))
    with pytest.raises(SystemExit, match="cannot read --inputs"):
        merge(tmp_path, a, str(tmp_path / "missing.json"))
    assert not (tmp_path / "odebench-m.json").exists()


def test_bench_without_a_trained_run_is_one_line(tmp_path, capsys):
    assert script.main(["bench", "--run", str(tmp_path / "none"), "--models", "odeformer,sindy",
                        "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("odeformer_train.py bench: error: --run ") and len(err.strip().splitlines()) == 1
    assert script.main(["bench", "--models", "sindy,sindy", "--results", str(tmp_path)]) == 2
    assert "distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an empty --ids would silently run all 63 systems
        script.main(["bench", "--models", "sindy", "--ids", "--results", str(tmp_path)])
    assert "--ids: expected at least one argument" in capsys.readouterr().err

