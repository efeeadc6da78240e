"""``formers compare odebench``: settings, result files, resume (ODEFormer, arXiv 2310.05573, §4)."""

import json

import pytest

from formers.sciml.ode import compare as C
from formers.sciml.ode import expr
from formers.sciml.ode import odebench as ob
from tests.conftest import shared_data


def test_one_at_a_time_settings():
    assert C.one_at_a_time([0, 0.05], [0.5]) == [(0.0, 0.0), (0.05, 0.0), (0.0, 0.5)]
    assert C.one_at_a_time([0], [0]) == [(0.0, 0.0)]
    with pytest.raises(ValueError, match="no setting to run"):
        C.one_at_a_time([], [])
    with pytest.raises(ValueError, match="subsample"):
        C.one_at_a_time([0], [1.0])
    with pytest.raises(ValueError, match="unknown ODEBench model"):
        C.make_fit("pysr")
    with pytest.raises(FileNotFoundError, match="model folder"):
        C.make_fit("odeformer", {"model": "/nonexistent/run"})


def test_compare_writes_resumes_and_guards(tmp_path):
    data = shared_data(ob.ODEBENCH_FILE)
    calls = []

    def growth(t, x):  # id 2 is x' = 0.23 x
        calls.append(1)
        return expr.parse("0.23*x_0")

    res = C.compare_odebench({"fixed": growth}, [(0.0, 0.0), (0.05, 0.0)], tmp_path, "t", ids=[2],
                             data_dir=str(data))
    assert [r["summary"]["all"]["acc_reconstruction"] for r in res["results"]] == [1.0, 1.0]
    md = (tmp_path / "odebench-t.md").read_text()
    assert "| fixed | 0.05 | 0% | 1 | 1.000 | 1.000 |" in md
    assert len(calls) == 2
    C.compare_odebench({"fixed": growth}, [(0.0, 0.0), (0.0, 0.5)], tmp_path, "t", ids=[2], data_dir=str(data))
    assert len(calls) == 3  # the finished (0, 0) was skipped, (0, 0.5) added
    saved = json.loads((tmp_path / "odebench-t.json").read_text())
    assert [(r["noise"], r["subsample"]) for r in saved["results"]] == [(0.0, 0.0), (0.05, 0.0), (0.0, 0.5)]
    with pytest.raises(ValueError, match=r"another seed \(0\) or other systems; write to another folder \(--out\)"):
        C.compare_odebench({"fixed": growth}, [(0.0, 0.0)], tmp_path, "t", seed=1, ids=[2], data_dir=str(data))
    # other options for a model already in the file are refused; options of other models are kept
    C.compare_odebench({"fixed": growth}, [(0.0, 0.0)], tmp_path, "o", ids=[2], data_dir=str(data),
                       options={"fixed": {"k": 1}})
    with pytest.raises(ValueError, match=r"holds fixed results made with options \{'k': 1\}, not \{'k': 2\}"):
        C.compare_odebench({"fixed": growth}, [(0.0, 0.0)], tmp_path, "o", ids=[2], data_dir=str(data),
                           options={"fixed": {"k": 2}})
    C.compare_odebench({"other": growth}, [(0.0, 0.0)], tmp_path, "o", ids=[2], data_dir=str(data),
                       options={"other": {"k": 3}})
    saved = json.loads((tmp_path / "odebench-o.json").read_text())
    assert saved["options"] == {"fixed": {"k": 1}, "other": {"k": 3}}
