"""formers bench train (formers.bench.train / devices / peers): the harness on CPU, MFU arithmetic,
the device peak table, input errors, --compare, the peers' shapes and graph breaks."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import formers.nn  # noqa: F401  (registers parts and presets)
from formers.bench import devices, peers
from formers.bench.train import (PRESETS, TrainBench, TrainBenchConfig, compare_records, expand_models,
                                 goals, padded_vocab, preset_config, read_record, six_n_flops)
from formers.cli import main
from formers.nn.models import build_model, count_params


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ROW_FIELDS = {"name", "kind", "params", "step_time_ms", "tokens_per_s", "peak_mem_mb", "mfu", "mfu_6n",
              "flops_per_token", "flops_per_token_6n", "ratios", "graph_breaks", "warmup_s"}
RECORD_FIELDS = {"device", "device_name", "dtype", "torch", "threads", "commit", "batch_size", "seq_len",
                 "peak_tflops", "peak_source", "rows", "goals", "compile", "data"}


def test_tiny_cli_run_writes_json_md_png(tmp_path, capsys):
    rc = main(["bench", "train", "--preset", "tiny", "--device", "cpu", "--models", "baseline,value-residual",
               "--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--repeats", "2",
               "--no-compile", "--peak-tflops", "1.0", "--out", str(tmp_path), "--quiet", "--tag", "t1"])
    assert rc == 0
    js = tmp_path / "train_bench-cpu-tiny-t1.json"
    assert js.is_file() and (tmp_path / "train_bench-cpu-tiny-t1.md").is_file()
    assert (tmp_path / "train_bench-cpu-tiny-t1.png").stat().st_size > 0
    rec = json.loads(js.read_text())
    assert RECORD_FIELDS <= set(rec)
    assert rec["device"] == "cpu" and rec["dtype"] == "fp32" and rec["batch_size"] == 2 and rec["seq_len"] == 16
    assert rec["threads"] == 1 and rec["peak_tflops"] == 1.0 and rec["peak_source"] == "override"
    assert [r["name"] for r in rec["rows"]] == ["baseline", "value-residual"]
    for r in rec["rows"]:
        assert ROW_FIELDS <= set(r)
        assert len(r["step_time_ms_windows"]) == 2 and r["step_time_ms"] > 0
        # tokens/s from the median step; MFU from the declared FLOPs and the overridden peak
        assert r["tokens_per_s"] == pytest.approx(2 * 16 / (r["step_time_ms"] / 1e3))
        assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e12)
        assert r["flops_source"].startswith("formers.bench.flops")
    base, vr = rec["rows"]
    assert vr["ratios"]["baseline"]["tokens_per_s"] == pytest.approx(vr["tokens_per_s"] / base["tokens_per_s"])
    assert [g["goal"] for g in rec["goals"]] == ["value-residual slowdown vs baseline (step time ratio - 1)"]
    assert "| baseline |" in capsys.readouterr().out


def test_mfu_and_flops_hand_case():
    # 1e9 FLOPs/token at 500 tokens/s on a 1 TFLOP/s peak = 0.5
    assert devices.mfu(1e9, 500.0, 1.0) == pytest.approx(0.5)
    assert devices.mfu(1e9, 500.0, None) is None
    # 6 N + 12 L d T: 6*100 + 12*2*8*16 = 600 + 3072
    assert six_n_flops(100, 2, 8, 16) == 3672.0
    # the reference: HF GPT-2 at 341k tokens/s is 29.7 % of 989 TFLOP/s with N = all params
    n = 124_475_904
    assert devices.mfu(six_n_flops(n, 12, 768, 1024), 341e3, 989.0) == pytest.approx(0.297, abs=5e-4)


@pytest.mark.parametrize("name, dtype, tf32, want", [
    ("NVIDIA H200", "bf16", False, 989.0),
    ("NVIDIA H100 80GB HBM3", "bf16", False, 989.0),
    ("NVIDIA H100 PCIe", "bf16", False, 756.0),
    ("NVIDIA H100 NVL", "fp16", False, 835.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", False, 312.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", True, 156.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5),
    ("NVIDIA L4", "bf16", False, 121.0),
    ("NVIDIA L40S", "bf16", False, 362.0),
    ("NVIDIA H200", "fp32", False, 67.0),
])
def test_device_peak_table(name, dtype, tf32, want):
    peak, source = devices.peak_tflops(name, dtype, tf32=tf32)
    assert peak == want and source.startswith("table:")


def test_device_peak_unknown_and_override():
    assert devices.lookup_peak("cpu") is None
    assert devices.lookup_peak("NVIDIA GeForce GTX 1080") is None
    assert devices.peak_tflops("cpu", "fp32") [0] is None
    assert devices.peak_tflops("NVIDIA H200", "bf16", override=790.0) == (790.0, "override")
    assert devices.peak_tflops("V100", "fp32", tf32=True)[0] is None  # no TF32 on V100
    with pytest.raises(ValueError, match="override"):
        devices.peak_tflops("cpu", "bf16", override=-1.0)
    with pytest.raises(ValueError, match="dtype"):
        devices.peak_tflops("cpu", "int8")


def test_presets_and_param_counts():
    assert padded_vocab(50257) == 50304 and padded_vocab(512) == 512
    cfg = preset_config("gpt2-small")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.max_seq_len, cfg.vocab_size) == (12, 768, 12, 1024, 50304)
    with torch.device("meta"):
        n = count_params(build_model(cfg))
    # HF GPT-2 small has 124,439,808 parameters at vocab 50257; 47 padded rows of 768 more
    assert n == 124_439_808 + 47 * 768
    assert preset_config("gpt2-medium").n_layers == 24 and PRESETS["tiny"].seq_len == 128


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="gpt2-huge"), "preset"),
    (dict(peers=("nosuch",)), "unknown peer"),
    (dict(batch_size=0), "batch_size"),
    (dict(steps=0), "steps"),
    (dict(dtype="int8"), "dtype"),
    (dict(sdpa_backend="nosuch"), "sdpa_backend"),
    (dict(models=(), peers=()), "nothing to run"),
    (dict(peak_tflops=0.0), "peak_tflops"),
    (dict(tag="a/b"), "tag"),
    (dict(inductor=("no_such_setting=1",)), "no setting"),
    (dict(inductor=("coordinate_descent_tuning",)), "KEY=VALUE"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainBenchConfig(**kwargs)


def test_unknown_model_and_granularity():
    base = preset_config("tiny")
    with pytest.raises(ValueError, match="unknown model 'nosuch'"):
        expand_models(["nosuch"], base)
    with pytest.raises(ValueError, match="no MatFormer layers"):
        expand_models(["baseline@1"], base)
    with pytest.raises(ValueError, match="granularity"):
        expand_models(["matformer@9"], base)
    with pytest.raises(ValueError, match="options after '~' are unfused, fusedce, got 'fast'"):
        expand_models(["baseline~fast"], base)
    with pytest.raises(ValueError, match="given twice"):
        expand_models(["baseline~fusedce~fusedce"], base)
    assert expand_models(["baseline~unfused", "matformer@1~unfused"], base) == [
        ("baseline~unfused", "baseline", None), ("matformer@1~unfused", "matformer", 1)]
    assert expand_models(["baseline~fusedce", "baseline~unfused~fusedce", "matformer@0~fusedce"], base) == [
        ("baseline~fusedce", "baseline", None), ("baseline~unfused~fusedce", "baseline", None),
        ("matformer@0~fusedce", "matformer", 0)]
    assert [x[0] for x in expand_models(["matformer@all~fusedce"], base)] == [
        f"matformer@{i}~fusedce" for i in range(4)]
    assert expand_models(["baseline", "matformer@all"], base) == [
        ("baseline", "baseline", None)] + [(f"matformer@{i}", "matformer", i) for i in range(4)]


def test_missing_peer_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "x_transformers" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'formers\[peers\]'"):
        peers.xtransformers_lm(preset_config("tiny"))
    with pytest.raises(ValueError, match=r"pip install 'formers\[peers\]'"):
        TrainBench(TrainBenchConfig(device="cpu", peers=("xtransformers",)))
    assert main(["bench", "train", "--device", "cpu", "--peers", "xtransformers", "--quiet"]) == 2


def test_cli_errors_exit_2(tmp_path):
    assert main(["bench", "train", "--device", "cpu", "--models", "nosuch", "--quiet"]) == 2
    assert main(["bench", "train", "--device", "cpu", "--batch-size", "0", "--quiet"]) == 2
    assert main(["bench", "train", "--device", "cpu", "--compare", str(tmp_path / "none.json")]) == 2
    assert main(["bench"]) == 2
    assert main(["bench", "train", "--device", "cpu", "--compile", "--no-compile", "--quiet"]) == 2


def _rec(tps: dict[str, float]) -> dict:
    rows = [{"name": k, "tokens_per_s": v, "step_time_ms": 1e3 / v, "peak_mem_mb": 100.0, "mfu": v / 1e3}
            for k, v in tps.items()]
    return {"benchmark": "train_bench", "device_name": "dev", "commit": "c", "rows": rows}


def test_compare_prints_change(tmp_path):
    old, new = _rec({"baseline": 100.0, "hf": 50.0, "gone": 1.0}), _rec({"baseline": 150.0, "hf": 50.0, "new": 2.0})
    text = compare_records(old, new)
    lines = {ln.split()[0]: ln for ln in text.splitlines()[2:]}
    assert "+50.0%" in lines["baseline"] and "+0.0%" in lines["hf"]
    assert "(new row)" in lines["new"] and "(row gone)" in lines["gone"]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    assert read_record(p)["rows"][0]["name"] == "baseline"
    p.write_text(json.dumps({"benchmark": "other"}))
    with pytest.raises(ValueError, match="not a train_bench result"):
        read_record(p)


def test_compare_refuses_to_overwrite_its_own_reference(tmp_path, capsys, monkeypatch):
    import formers.bench.train as tb

    ref = tmp_path / "train_bench-cpu-tiny.json"
    ref.write_text(json.dumps(_rec({"baseline": 100.0})))
    monkeypatch.setattr(tb, "run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert main(["bench", "train", "--device", "cpu", "--out", str(tmp_path), "--compare", str(ref), "--quiet"]) == 2
    assert "is the file this run would write" in capsys.readouterr().err
    assert json.loads(ref.read_text())["rows"][0]["tokens_per_s"] == 100.0


def test_compare_names_differing_settings():
    old, new = _rec({"baseline": 100.0}), _rec({"baseline": 70.0})
    assert "settings differ" not in compare_records(old, new)
    old.update(threads=2, batch_size=8, torch="2.13.0+cpu")
    new.update(threads=1, batch_size=8, torch="2.13.0+cpu")
    lines = compare_records(old, new).splitlines()
    assert lines[1].startswith("settings differ: threads 2 -> 1") and "batch_size" not in lines[1]
    assert "-30.0%" in lines[-1]
    new.update(threads=2, dtype="bf16")
    assert "dtype None -> 'bf16'" in compare_records(old, new).splitlines()[1]


def test_goals_from_a_gpu_record():
    def row(name, tps, mem=10.0, mfu=None):
        return {"name": name, "tokens_per_s": tps, "step_time_ms": 1e3 / tps, "peak_mem_mb": mem, "mfu_6n": mfu}
    rows = [row("baseline", 520.0, 9.0, 0.46), row("hf", 340.0), row("xtransformers", 370.0),
            row("denseformer-4x5", 500.0), row("value-residual", 480.0)]
    by = {r["name"]: r for r in rows}
    for r in rows:
        r["ratios"] = {k: {"tokens_per_s": r["tokens_per_s"] / by[k]["tokens_per_s"],
                           "peak_mem": r["peak_mem_mb"] / by[k]["peak_mem_mb"]} for k in ("hf", "xtransformers")}
    rec = {"rows": rows, "device": "cuda", "preset": "gpt2-small", "dtype": "bf16", "compile": True}
    got = {g["goal"]: g for g in goals(rec)}
    assert got["gpt2-small bf16 compiled MFU (6N+12LdT, datasheet peak)"]["met"]
    assert got["tokens/s vs x-transformers"]["value"] == pytest.approx(520 / 370) and got["tokens/s vs x-transformers"]["met"]
    assert got["tokens/s vs HF GPT-2"]["met"] and got["peak memory vs HF GPT-2 (ratio)"]["met"]
    dense = got["denseformer-4x5 slowdown vs baseline (step time ratio - 1)"]
    assert dense["value"] == pytest.approx(520 / 500 - 1) and dense["met"]          # 4 % <= 5 %
    vr = got["value-residual slowdown vs baseline (step time ratio - 1)"]
    assert vr["value"] == pytest.approx(520 / 480 - 1) and not vr["met"]            # 8.3 % > 3 %


def test_peers_match_our_shape():
    pytest.importorskip("transformers")
    pytest.importorskip("x_transformers")
    cfg = preset_config("tiny", seq_len=32)
    ours = count_params(build_model(cfg))
    hf = peers.hf_gpt2(cfg)
    xt = peers.xtransformers_lm(cfg)
    assert sum(p.numel() for p in hf.parameters()) == ours          # one for one
    assert sum(p.numel() for p in xt.parameters()) == ours - peers.xtransformers_param_gap(cfg)
    assert peers.xtransformers_param_gap(cfg) == (6 * 2 + 1) * 128
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    for name, m in (("hf", hf), ("xtransformers", xt)):
        assert peers.peer_logits(name, m, ids).shape == (2, 32, cfg.vocab_size)
    with pytest.raises(ValueError, match="position='rope'"):
        peers.hf_gpt2(cfg.replace(position="rope"))


def test_baseline_compiles_without_graph_breaks():
    cfg = preset_config("tiny", seq_len=16)
    model = build_model(cfg)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randint(0, cfg.vocab_size, (2, 16)))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_step_traces_without_graph_breaks():
    """The harness's compiled loss (model + cross-entropy) of every entry: one graph, no break, a
    finite loss; a second entry (another variant) compiles its own graph (aot_eager: tracing and
    autograd only, so the test is fast; the benchmark uses inductor)."""
    torch._dynamo.reset()
    cfg = TrainBenchConfig(device="cpu", models=("baseline", "value-residual"), batch_size=2, seq_len=16,
                           steps=1, warmup=1, repeats=1, compile=True, compile_backend="aot_eager")
    rec = TrainBench(cfg).run()
    assert rec["compile"] is True and rec["compile_backend"] == "aot_eager"
    for r in rec["rows"]:
        assert r["graph_breaks"] == 0, r["name"]
        assert r["compiles"] == 1, r["name"]
        assert r["final_loss"] == pytest.approx(r["final_loss"]) and 0 < r["final_loss"] < 20


def test_time_limit_skips_the_rest_and_keeps_what_ran():
    cfg = TrainBenchConfig(device="cpu", models=("baseline", "value-residual"), peers=(), batch_size=1,
                           seq_len=8, steps=1, warmup=1, repeats=1, compile=False, time_limit_s=1e-9)
    rec = TrainBench(cfg).run()
    assert [r["name"] for r in rec["rows"]] == ["baseline"] and rec["skipped_time_limit"] == ["value-residual"]
    with pytest.raises(ValueError, match="time_limit_s"):
        TrainBenchConfig(time_limit_s=-1.0)


def test_matformer_scaling_rows():
    from formers.bench.train import matformer_scaling

    rows = [{"name": "baseline", "tokens_per_s": 100.0, "flops_per_token": 8.0, "granularity": None},
            {"name": "matformer@0", "tokens_per_s": 150.0, "flops_per_token": 4.0, "granularity": 0}]
    (m,) = matformer_scaling({"rows": rows})
    assert m["speedup_vs_baseline"] == 1.5 and m["flop_ratio"] == 2.0 and m["speedup_over_flop_ratio"] == 0.75
    assert matformer_scaling({"rows": rows[1:]}) == []


def test_inductor_settings_parse():
    from formers.bench.train import inductor_settings

    assert inductor_settings(("coordinate_descent_tuning=true", "triton.cudagraphs=false")) == {
        "coordinate_descent_tuning": True, "triton.cudagraphs": False}


def test_fusedce_entry_matches_baseline_loss(tmp_path, monkeypatch):
    """``baseline~fusedce`` (chunked fused head + CE) beside ``baseline``: same weights, same
    batches, same optimizer steps, so the final losses agree; --vocab and --fused-ce-chunk reach
    the run (a 1,000-token vocabulary padded to 1,024; 7-token chunks of 2 x 16 tokens)."""
    from formers.nn import linear_ce

    calls, real = [], linear_ce.linear_cross_entropy

    def counting(h, w, t, **kw):
        calls.append((tuple(h.shape), tuple(w.shape), kw["chunk_tokens"]))
        return real(h, w, t, **kw)

    monkeypatch.setattr(linear_ce, "linear_cross_entropy", counting)
    rc = main(["bench", "train", "--preset", "tiny", "--device", "cpu", "--models", "baseline,baseline~fusedce",
               "--batch-size", "2", "--seq-len", "16", "--vocab", "1000", "--fused-ce-chunk", "7", "--steps", "2",
               "--warmup", "2", "--repeats", "1", "--no-compile", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    rec = json.loads((tmp_path / "train_bench-cpu-tiny.json").read_text())
    assert rec["vocab_size"] == 1024 and rec["config"]["fused_ce_chunk"] == 7
    base, fused = rec["rows"]
    assert (base["name"], fused["name"]) == ("baseline", "baseline~fusedce")
    assert base["params"] == fused["params"]
    # only the ~fusedce entry's 4 steps went through the fused loss: (32, 128) hidden, (1024, 128) head
    assert calls == [((32, 128), (1024, 128), 7)] * 4
    # 4 AdamW steps from the same start: the losses agree to fp32 rounding (start: ln 1024 = 6.93)
    assert fused["final_loss"] == pytest.approx(base["final_loss"], rel=1e-5)
    assert 5.0 < base["final_loss"] < 7.5
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        TrainBenchConfig(vocab_size=1)
    with pytest.raises(ValueError, match="fused_ce_chunk must be an int >= 0"):
        TrainBenchConfig(fused_ce_chunk=-1)


def test_fusedce_compiled_step_has_no_graph_break():
    """The compiled loss of ``~fusedce`` entries (the autograd.Function traced by dynamo, with
    ``~unfused`` too): one graph, no break, the baseline's loss."""
    torch._dynamo.reset()
    cfg = TrainBenchConfig(device="cpu", models=("baseline", "baseline~fusedce", "baseline~unfused~fusedce"),
                           batch_size=2, seq_len=16, steps=1, warmup=1, repeats=1, compile=True,
                           compile_backend="aot_eager", fused_ce_chunk=12)
    rec = TrainBench(cfg).run()
    for r in rec["rows"]:
        assert r["graph_breaks"] == 0 and r["compiles"] == 1, r["name"]
        assert r["final_loss"] == pytest.approx(rec["rows"][0]["final_loss"], rel=1e-5), r["name"]
