"""The command line end to end on a tiny budget (main() called in-process)."""

import json

import pytest

from formers.cli import main

TINY = ["--opt", "seq_len=16", "d_model=16", "n_layers=1", "n_heads=2",
        "--max-steps", "4", "--batch-size", "4", "--eval-every", "2", "--eval-batches", "2",
        "--warmup-steps", "1", "--quiet"]


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(12):
        (d / f"f{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n" * 20)
    return d


def test_list_and_info(capsys):
    assert main(["list", "model"]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "rope" in out and "gqa" in out
    assert main(["list", "task"]) == 0  # tasks show their --opt names and defaults
    assert "horizon=None" in capsys.readouterr().out.replace(" ", "").replace("\n", "").replace("│", "")
    assert main(["info"]) == 0
    assert "sdpa/math" in capsys.readouterr().out


def test_train_eval_generate_resume(tmp_path, text_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "lm", "--model", "rope", "--data", str(text_dir), "--out", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and "val_bpb" in summary and summary["val_bpb"] > 0
    for f in ("config.yaml", "metrics.jsonl", "loss.png", "ckpt/model.safetensors", "ckpt/config.json"):
        assert (run / f).is_file(), f
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["val_bpb"] == pytest.approx(summary["val_bpb"], rel=1e-6)
    assert main(["generate", str(run), "--prompt", "def", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("def")
    # every byte id is a stop token: greedy decoding ends after exactly one new token
    greedy = ["generate", str(run), "--prompt", "def", "--temperature", "0"]
    assert main([*greedy, "--max-new-tokens", "1"]) == 0
    one = capsys.readouterr().out
    assert main([*greedy, "--max-new-tokens", "5", "--stop-tokens", *map(str, range(256))]) == 0
    assert capsys.readouterr().out == one
    # the static cache gives the same greedy text as the growing one
    assert main([*greedy, "--max-new-tokens", "12"]) == 0
    grown = capsys.readouterr().out
    assert main([*greedy, "--max-new-tokens", "12", "--static-cache"]) == 0
    assert capsys.readouterr().out == grown
    # an existing run is refused without --resume; with --resume and a larger budget it continues
    assert main(["train", "lm", "--data", str(text_dir), "--out", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    more = [*TINY, "--max-steps", "6"]  # a later flag wins: a longer budget
    assert main(["train", "lm", "--model", "rope", "--data", str(text_dir), "--out", str(run), "--resume", *more]) == 0
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 4


def test_compare_writes_table_and_plot(tmp_path, text_dir, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "lm", "--models", "baseline,gqa", "--seeds", "2", "--data", str(text_dir),
            "--out", str(out), *TINY]
    assert main(args) == 0
    res = json.loads((out / "compare.json").read_text())
    assert [r["model"] for r in res["rows"]] == ["baseline", "gqa"]
    assert res["rows"][1]["params"] < res["rows"][0]["params"]  # fewer key/value heads
    assert all(len(v) == 2 for v in res["runs"].values())
    assert (out / "compare.png").stat().st_size > 0 and "val_bpb" in (out / "compare.md").read_text()
    assert "unigram entropy" in capsys.readouterr().out
    # a re-run does not train finished runs again; changed settings are refused
    metrics = (out / "baseline" / "seed0" / "metrics.jsonl").read_text()
    assert main(args) == 0
    assert (out / "baseline" / "seed0" / "metrics.jsonl").read_text() == metrics
    assert main([*args, "--lr", "0.5"]) == 2
    assert "different training settings" in capsys.readouterr().err
    assert main([*args[:2], "--models", "gqa,gqa", *args[4:]]) == 2
    assert "more than once" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["train", "nope"], "unknown task 'nope'"),
    (["train", "lm", "--model", "nope"], "unknown model 'nope'"),
    (["train", "lm", "--set", "d_model=30", "n_heads=4"], "not divisible by n_heads"),
    (["train", "lm", "--set", "n_kv_heads=3"], "must divide n_heads"),
    (["train", "lm", "--set", "position=rope", "d_model=12", "n_heads=4"], "even head_dim"),
    (["train", "lm", "--data", "/nonexistent/path"], "does not exist"),
    (["train", "lm", "--opt", "bogus=1"], "does not take option"),
    (["train", "lm", "--max-steps", "0"], "max_steps must be > 0"),
    (["train", "lm", "--set", "nope=1"], "unknown field"),
    (["compare", "lm", "--models", "baseline,nope"], "unknown model 'nope'"),
    (["eval", "/nonexistent/run"], "not found"),
    (["train", "lm", "--seed", "-1"], "seed must be >= 0"),
    (["train", "lm", "--set", "d_model=32.0"], "d_model = 32.0 (float) is not a valid int"),
    (["train", "lm", "--set", "bias=maybe"], "bias = 'maybe' (str) is not a valid bool"),
    (["train", "lm", "--opt", "seq_len=abc"], "seq_len = 'abc' (str) is not a valid int"),
    (["train", "lm", "--data", ""], "empty or the current folder"),
    (["compare", "lm", "--models", ""], "unknown model ''"),
])
def test_bad_input_fails_before_training(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "o")] if args[0] != "eval" else args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_yaml_config_sections_and_flag_precedence(tmp_path, text_dir):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "model: {n_kv_heads: 1}\n"
        "train: {max_steps: 3, batch_size: 4, eval_every: 3, eval_batches: 1, warmup_steps: 1, lr: 0.01}\n"
        f"task: {{seq_len: 16, d_model: 16, n_layers: 1, n_heads: 2, data: ['{text_dir}']}}\n")
    run = tmp_path / "run"
    assert main(["train", "lm", "--config", str(cfg), "--max-steps", "2", "--out", str(run), "--quiet"]) == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["train"]["lr"] == 0.01  # flag beats YAML
    assert saved["model"]["n_kv_heads"] == 1 and saved["model"]["max_seq_len"] == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: {}\n")
    assert main(["train", "lm", "--config", str(bad)]) == 2


def test_more_bad_input_one_line_each(tmp_path, text_dir, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [1, 2\n")
    assert main(["train", "lm", "--config", str(bad_yaml)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["train", "lm", "--data", str(text_dir), "--out", str(a_file), *TINY]) == 2
    assert "is an existing file" in capsys.readouterr().err
    # a sort run cannot generate text; an lm run cannot sample at temperature nan
    sort_run = tmp_path / "sort"
    assert main(["train", "sort", "--out", str(sort_run), "--max-steps", "1", "--quiet",
                 "--opt", "length=4", "train_size=50", "val_size=10"]) == 0
    assert main(["generate", str(sort_run)]) == 2
    assert "byte-level LM" in capsys.readouterr().err
    run = tmp_path / "lm"
    assert main(["train", "lm", "--data", str(text_dir), "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--temperature", "nan"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["generate", str(run), "--device", "foo"]) == 2
    assert "device" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "ab"]) == 0  # default length fills the context
    assert len(capsys.readouterr().out.rstrip("\n").encode("utf-8", "replace")) >= 2
    # the data changed after training: eval refuses rather than report an incomparable number
    (text_dir / "f0.py").write_text("changed\n" * 40)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "different task or data" in err and "corpus" in err


def test_repeated_multi_value_flags_are_joined():
    from formers.cli import merge_repeated

    assert merge_repeated(["train", "lm", "--opt", "a=1", "--set", "x=1", "--opt", "b=2", "c=3",
                           "--max-steps", "5", "--set=y=2"]) == \
        ["train", "lm", "--opt", "a=1", "b=2", "c=3", "--set", "x=1", "y=2", "--max-steps", "5"]
    assert merge_repeated(["eval", "--opt", "a=-1"]) == ["eval", "--opt", "a=-1"]


def test_repeated_opt_keeps_every_option(tmp_path):
    """--opt given twice must not silently drop the first (tyro keeps only the last)."""
    out = tmp_path / "run"
    assert main(["train", "lm", "--opt", "seq_len=16", "d_model=16", "--opt", "n_layers=1", "n_heads=2",
                 "--max-steps", "1", "--batch-size", "2", "--eval-every", "1", "--eval-batches", "1",
                 "--quiet", "--out", str(out)]) == 0
    import yaml

    model = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (model["max_seq_len"], model["d_model"], model["n_layers"], model["n_heads"]) == (16, 16, 1, 2)


def test_set_depth_refused_for_a_preset_with_a_layer_pattern(tmp_path, capsys):
    """--set n_layers after a preset built its per-layer pattern would tile it wrongly."""
    assert main(["train", "lm", "--model", "masformer", "--set", "n_layers=8", "--max-steps", "1",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "built its per-layer pattern" in err and "--opt" in err


def test_every_training_flag_has_its_help(capsys):
    """Each TrainConfig field has an ``Attributes:`` entry, shown as its flag's help."""
    import dataclasses

    from formers.cli import _field_help
    from formers.train.config import TrainConfig

    helps = _field_help()
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(helps)
    assert all(helps.values()) and not any("``" in h or ":func:" in h for h in helps.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "--init-from" in out and "a run or checkpoint folder whose model weights" in out
    assert "(default: the task's)" in out
