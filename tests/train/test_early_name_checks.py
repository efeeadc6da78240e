"""Bad names fail before any costly work: an unknown ``--model`` of a data-generating task
(kolmogorov) before its data are generated, ``formers generate`` on a non-LM run before that
run's task (and its data) is rebuilt."""

import pytest
import torch
import yaml

import formers.sciml.pde.field_task as field_task
from formers.cli import _load_all, generate_cmd
from formers.train.task import check_variant, make_task_for

torch.set_num_threads(1)


def _no_data(*a, **k):
    raise AssertionError("data were loaded or generated before the model name was checked")


def test_unknown_surrogate_fails_before_data(monkeypatch):
    _load_all()
    monkeypatch.setattr(field_task, "load_or_generate", _no_data)
    with pytest.raises(ValueError, match=r"unknown surrogate 'pinnsformer'.*factformer"):
        make_task_for("kolmogorov", 0, {"grid": 32}, "pinnsformer")
    with pytest.raises(ValueError, match="unknown surrogate 'nope'"):
        check_variant("turbulence3d", "nope")
    check_variant("kolmogorov", "factformer")  # registered: no error
    check_variant("lm", "anything")  # no model_kind: not checked early
    # a known name goes on to build the task, which reaches the data step
    with pytest.raises(AssertionError, match="before the model name"):
        make_task_for("kolmogorov", 0, {"grid": 32}, "factformer")


def test_generate_refuses_non_lm_run_before_rebuilding_its_task(tmp_path):
    _load_all()
    run = tmp_path / "run"
    run.mkdir()
    # a forecast run whose data file no longer exists: rebuilding the task would fail on the data
    cfg = {"task": {"task": "forecast", "options": {"data": str(tmp_path / "gone.csv")}}, "train": {"seed": 0}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=r"byte-level LM; .* is a run of task 'forecast'"):
        generate_cmd(run)
