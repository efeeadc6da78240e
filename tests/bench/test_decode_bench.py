"""formers bench decode (issue 8): the weight transfer to HF GPT-2 (logits and greedy outputs equal),
the harness on a tiny CPU run (JSON/markdown fields, ratios, output matches), config checks, goals."""

from __future__ import annotations

import json

import pytest
import torch

from formers.bench.decode import DecodeBenchConfig, decode_config, first_divergence, goals, table_markdown
from formers.cli import main
from formers.nn import ModelConfig, build_model
from formers.nn.generate import SamplingConfig, generate

torch.set_num_threads(1)


def _gpt2_like(tie: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=48, tie_embeddings=tie,
                      norm_eps=1e-6)
    model = build_model(cfg).eval()
    with torch.no_grad():  # move norms and biases off their init, so a wrong mapping shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_to_hf_gpt2_logits_and_greedy_outputs_equal(tie):
    pytest.importorskip("transformers")
    from formers.bench.hf_weights import to_hf_gpt2

    model = _gpt2_like(tie)
    hf = to_hf_gpt2(model)
    assert hf.config.layer_norm_epsilon == 1e-6 and hf.config.activation_function == "gelu_pytorch_tanh"
    assert all(blk.ln_1.eps == 1e-6 for blk in hf.transformer.h)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids), atol=1e-5, rtol=1e-5)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    want = generate(model, ids, SamplingConfig(max_new_tokens=25, temperature=0))
    got = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=25, do_sample=False)
    assert torch.equal(got, want)


def test_to_hf_gpt2_refuses_other_shapes():
    pytest.importorskip("transformers")
    from formers.bench.hf_weights import to_hf_gpt2

    for bad in (dict(position="rope"), dict(n_kv_heads=2), dict(ffn="swiglu")):
        model = build_model(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, **bad))
        with pytest.raises(ValueError, match="not a GPT-2-style baseline"):
            to_hf_gpt2(model)


def test_first_divergence_hand_case():
    a = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    b = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 9, 5]])
    assert first_divergence(a, b, 2) == (1, 1)       # row 1 differs at generated position 1
    assert first_divergence(a, a, 2) == (2, None)
    with pytest.raises(ValueError, match="shapes differ"):
        first_divergence(a, b[:, :4], 2)


def test_decode_config_raises_max_seq_len():
    cfg, note = decode_config("gpt2-small", 1792 + 256)
    assert cfg.max_seq_len == 2048 and cfg.vocab_size == 50304 and "1024" in note
    cfg, note = decode_config("gpt2-small", 128 + 256)
    assert cfg.max_seq_len == 1024 and note == ""


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch=()), "batch must be a non-empty"),
    (dict(prompt=(0,)), "prompt must be"),
    (dict(new_tokens=1), "new_tokens must be an int >= 2"),
    (dict(ours=("fast",)), "ours"),
    (dict(peers=("xtransformers",)), "peers"),
    (dict(ours=(), peers=()), "nothing to run"),
    (dict(warmup=0), "warmup must be >= 1"),
    (dict(preset="huge"), "unknown preset"),
    (dict(prompt=(32,), new_tokens=64, cache_len=95), "cache_len must be an int >= the longest"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeBenchConfig(**kwargs)


def test_tiny_cli_run_writes_json_and_md(tmp_path, capsys):
    pytest.importorskip("transformers")
    rc = main(["bench", "decode", "--preset", "tiny", "--device", "cpu", "--batch", "1,2", "--prompt", "6",
               "--new-tokens", "8", "--ours", "eager,static", "--repeats", "1", "--check-fp32", "True",
               "--cache-len", "20",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    rec = json.loads((tmp_path / "decode_bench-cpu-tiny.json").read_text())
    md = (tmp_path / "decode_bench-cpu-tiny.md").read_text()
    assert rec["benchmark"] == "decode_bench" and rec["dtype"] == "fp32" and rec["torch"] == torch.__version__
    assert {"device", "commit", "transformers", "threads"} <= set(rec) and rec["static_cache_len"] == 20
    assert [e["name"] for e in rec["entries"]] == ["eager", "static", "hf", "hf-static"]
    assert [(c["batch"], c["prompt"]) for c in rec["configs"]] == [(1, 6), (2, 6)]
    for c in rec["configs"]:
        res = c["results"]
        for name, r in res.items():
            assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0
            assert r["decode_tokens_per_s"] == pytest.approx(7 * c["batch"] / (r["decode_ms"] / 1e3))
        # same weights, fp32, greedy: every row equals HF's
        assert res["eager"]["match_hf"] == {"rows_equal": c["batch"], "rows": c["batch"], "first_divergence": None}
        assert res["static"]["match_hf"]["rows_equal"] == c["batch"]
        ratio = res["eager"]["ratios"]["hf"]["decode_tokens_per_s"]
        assert ratio == pytest.approx(res["eager"]["decode_tokens_per_s"] / res["hf"]["decode_tokens_per_s"])
        assert c["fp32_match_hf"] == {"skipped": "the run is already fp32"}
    assert "| 2 | 6 | static |" in md and "decode vs hf" in md
    assert "decode_bench" in capsys.readouterr().out


def test_goals_from_a_gpu_record():
    def res(tps, eq=1):
        return {"decode_tokens_per_s": tps, "ratios": {"hf": {"decode_tokens_per_s": tps / 100}},
                "match_hf": {"rows_equal": eq, "rows": 1, "first_divergence": None}}
    rec = {"device": "cuda", "dtype": "bf16", "configs": [
        {"batch": 1, "prompt": 128, "results": {"compiled": res(600)},
         "fp32_match_hf": {"rows_equal": 1, "rows": 1, "first_divergence": None}},
        {"batch": 16, "prompt": 128, "results": {"compiled": res(150)}},
    ]}
    g = goals(rec)
    assert [(x["target"], x["met"]) for x in g] == [(5.0, True), (1, True), (2.0, False), (1, True)]
    assert "fp32" in g[1]["goal"] and "bf16" in g[3]["goal"]
    assert goals({**rec, "device": "cpu"})[0]["target"] == 1  # no speed goals on CPU
    md = table_markdown({"preset": "tiny", "device_name": "x", "dtype": "bf16", "new_tokens": 2, "torch": "t",
                         "transformers": None, "threads": 1, "commit": None, "params": 1e6,
                         "model": {"max_seq_len": 8}, "configs": [], "goals": g, "entries": [],
                         "method": "m"})
    assert "| decode tok/s vs HF generate, batch 16, prompt 128 | 1.5 | >= 2.0 | no |" in md


def test_missing_peer_names_the_extra(monkeypatch):
    import formers.bench.peers as peers

    monkeypatch.setattr(peers, "peer_available", lambda name: False)
    from formers.bench.decode import DecodeBench

    with pytest.raises(ValueError, match=r"pip install 'formers\[peers\]'"):
        DecodeBench(DecodeBenchConfig(device="cpu", ours=("eager",)))
    assert main(["bench", "decode", "--device", "cpu", "--ours", "eager", "--quiet"]) == 2


def test_bf16_run_rechecks_outputs_in_fp32():
    pytest.importorskip("transformers")
    from formers.bench.decode import DecodeBench

    rec = DecodeBench(DecodeBenchConfig(preset="tiny", device="cpu", batch=(2,), prompt=(5,), new_tokens=6,
                                        ours=("eager",), peers=("hf",), dtype="bf16", repeats=1,
                                        check_fp32=True)).run()
    c = rec["configs"][0]
    assert rec["dtype"] == "bf16" and c["fp32_match_hf"] == {"rows_equal": 2, "rows": 2, "first_divergence": None}
    assert any("fp32" in g["goal"] for g in rec["goals"])


def _decode_rec(tps: dict[tuple[int, int, str], float], **settings) -> dict:
    configs: dict[tuple[int, int], dict] = {}
    for (b, t, name), v in tps.items():
        configs.setdefault((b, t), {"batch": b, "prompt": t, "results": {}})["results"][name] = {
            "decode_tokens_per_s": v, "ttft_ms": 1000.0 / v}
    return {"benchmark": "decode_bench", "device_name": "cpu", "commit": "x", "threads": 1, "dtype": "fp32",
            "configs": list(configs.values()), **settings}


def test_compare_prints_change_per_batch_prompt_entry(tmp_path):
    from formers.bench.decode import compare_records, read_record

    old = _decode_rec({(1, 8, "compiled"): 100.0, (1, 8, "hf"): 40.0, (4, 8, "eager"): 10.0})
    new = _decode_rec({(1, 8, "compiled"): 125.0, (1, 8, "hf"): 40.0, (2, 8, "eager"): 5.0}, threads=2)
    lines = compare_records(old, new).splitlines()
    assert lines[1] == "settings differ: threads 1 -> 2 (the change is not the code's alone)"
    rows = {tuple(ln.split()[:3]): ln for ln in lines[3:]}
    assert "+25.0%" in rows[("1", "8", "compiled")] and "10.00" in rows[("1", "8", "compiled")]
    assert "8.00" in rows[("1", "8", "compiled")]  # TTFT 1000 / 125
    assert "+0.0%" in rows[("1", "8", "hf")]
    assert "(new row)" in rows[("2", "8", "eager")] and "(row gone)" in rows[("4", "8", "eager")]
    p = tmp_path / "old.json"
    p.write_text(json.dumps(old))
    assert read_record(p)["configs"][0]["batch"] == 1
    p.write_text(json.dumps({"benchmark": "train_bench", "rows": []}))
    with pytest.raises(ValueError, match="not a decode_bench result"):
        read_record(p)


def test_compare_refuses_to_overwrite_its_own_reference(tmp_path, capsys, monkeypatch):
    import formers.bench.decode as db

    ref = tmp_path / "decode_bench-cpu-tiny.json"
    ref.write_text(json.dumps(_decode_rec({(1, 8, "eager"): 10.0})))
    monkeypatch.setattr(db, "run_bench", lambda *a, **k: pytest.fail("the benchmark ran"))
    assert main(["bench", "decode", "--device", "cpu", "--out", str(tmp_path), "--compare", str(ref), "--quiet"]) == 2
    assert "is the file this run would write" in capsys.readouterr().err
    assert main(["bench", "decode", "--device", "cpu", "--compare", str(tmp_path / "none.json"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
