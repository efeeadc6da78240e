"""formers bench attention: slope fit and crossover on synthetic timings computed by hand, mixer
discovery from the registry, and the CLI end to end at a tiny size on CPU."""

import json
import math

import pytest

import formers.nn  # noqa: F401
from formers.bench.attention import (
    AttentionBenchConfig, crossover, eligible_mixers, loglog_slope, summarise, table_markdown)
from formers.registry import entries


def test_loglog_slope_by_hand():
    n = [256, 512, 1024, 2048]
    assert loglog_slope(n, [3 * x**2 for x in n]) == pytest.approx(2.0)
    assert loglog_slope(n, [0.5 * x for x in n]) == pytest.approx(1.0)
    assert loglog_slope(n, [7.0] * 4) == pytest.approx(0.0)
    # two points: slope = log(40/10) / log(1024/256) = log 4 / log 4 = 1
    assert loglog_slope([256, 1024], [10.0, 40.0]) == pytest.approx(1.0)
    # t = n^2 at 256, 512 and 1024 then n at 2048 (times 1, 4, 16, 16 in units of 256^2):
    # least squares of y = (0, 2, 4, 4) * ln 2 on x = (0, 1, 2, 3) * ln 2: slope 1.4
    assert loglog_slope(n, [1.0, 4.0, 16.0, 16.0]) == pytest.approx(1.4)
    assert loglog_slope([256], [1.0]) is None and loglog_slope([256, 512], [0.0, 1.0]) is None


def test_crossover_by_hand():
    n = [256, 512, 1024, 2048]
    # quadratic baseline t = (n/256)^2, linear mixer t = 2 n/256: equal where (n/256) = 2, n = 512
    base = [(x / 256) ** 2 for x in n]
    lin = [2 * x / 256 for x in n]
    # at 512 both are 4 (not faster), at 1024 the mixer is faster: the ratio crosses 1 at 512
    assert crossover(n, lin, base) == (pytest.approx(512.0), "at")
    # a mixer 3x slower at 256 and 3x faster at 512 crosses at the geometric mean, 362.04
    x, kind = crossover([256, 512], [3.0, 1.0], [1.0, 3.0])
    assert kind == "at" and x == pytest.approx(math.sqrt(256 * 512))
    assert crossover(n, [0.5 * b for b in base], base) == (256.0, "below")
    assert crossover(n, [2 * b for b in base], base) == (None, "never")
    # the baseline runs out of memory at 2048 while the mixer runs: faster from 2048
    assert crossover(n, [2 * b for b in base], base[:3] + [None]) == (2048.0, "at")
    # the mixer runs out of memory at 2048: it is not faster at the largest length
    assert crossover(n, lin[:3] + [None], base) == (None, "never")
    assert crossover([], [], []) == (None, "none")


def _case(m, mode, n, t, mem=1.0, status="ok"):
    return {"mixer": m, "mode": mode, "length": n, "status": status, "time_ms": t, "mem_mb": mem}


def test_summary_and_table_from_synthetic_sweep():
    n = [256, 512, 1024, 2048]
    cases = []
    for x in n:
        cases.append(_case("sdpa", "fwd", x, (x / 256) ** 2, mem=x / 256))
        cases.append(_case("lin", "fwd", x, 2 * x / 256, mem=x / 256))
    cases[-1] = _case("lin", "fwd", 2048, None, None, status="oom")
    result = {"lengths": n, "cases": cases, "mixers": ["sdpa", "lin"], "device_name": "synthetic",
              "device": "cpu", "dtype": "float32", "torch": "-", "commit": "-", "causal": False,
              "settings": {"batch": 1, "n_heads": 2, "head_dim": 8}}
    result["summary"] = summarise(result)
    rows = {(r["mixer"], r["mode"]): r for r in result["summary"]}
    assert rows[("sdpa", "fwd")]["time_slope"] == pytest.approx(2.0)
    assert rows[("sdpa", "fwd")]["mem_slope"] == pytest.approx(1.0)
    lin = rows[("lin", "fwd")]
    assert lin["time_slope"] == pytest.approx(1.0) and lin["max_len_ok"] == 1024
    assert lin["crossover"] == "never"  # out of memory at the largest length
    md = table_markdown(result)
    assert "| lin | fwd | > 2048 (never) | 1 / 1 |" in md and "OOM" in md


def test_mixers_discovered_from_registry():
    names = [e.name for e in entries("attention")]
    bi = eligible_mixers(causal=False)
    ca = eligible_mixers(causal=True)
    assert "softmax" not in bi and "none" not in bi  # the baseline and the no-op mixer
    for e in entries("attention"):
        if e.name in ("softmax", "none") or not e.caps.mixes_tokens:
            continue
        assert (e.name in bi) == e.caps.bidirectional and (e.name in ca) == e.caps.causal
    assert set(bi) | set(ca) <= set(names)
    with pytest.raises(ValueError, match="unknown mixer"):
        eligible_mixers(False, ("no-such-mixer",))
    with pytest.raises(ValueError, match="lengths"):
        AttentionBenchConfig(lengths=(0,))


def test_cli_tiny_cpu_sweep(tmp_path, capsys):
    """The whole command on CPU at two tiny lengths, the baseline only (each case in its own
    forked process; the fork server's start is most of the time)."""
    from formers.cli import main

    rc = main(["bench", "attention", "--device", "cpu", "--lengths", "32", "64", "--mixers", "sdpa",
               "--n-heads", "2", "--head-dim", "8", "--warmup", "1", "--repeats", "2", "--threads", "1",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    res = json.loads((tmp_path / "attention_scaling-cpu.json").read_text())
    assert (tmp_path / "attention_scaling-cpu.png").stat().st_size > 0
    assert (tmp_path / "attention_scaling-cpu.md").read_text().startswith("Attention scaling")
    assert res["device"] == "cpu" and res["torch"] and "commit" in res and res["lengths"] == [32, 64]
    assert res["mixers"] == ["sdpa"] and res["dtype"] == "float32"
    assert {(c["mode"], c["length"]) for c in res["cases"]} == {
        (mode, n) for mode in ("fwd", "fwd+bwd") for n in (32, 64)}
    for c in res["cases"]:
        assert c["status"] == "ok", c
        assert c["time_ms"] > 0 and c["mem_mb"] is not None and c["mem_method"] == "VmHWM-rise"
    assert len(res["summary"]) == 2
    assert "written:" in capsys.readouterr().out
    assert main(["bench", "attention", "--device", "cpu", "--opt", "nosuch.k=1", "--quiet",
                 "--out", str(tmp_path)]) == 2  # options for a mixer outside the sweep: refused


def test_bad_mixer_options_fail_before_the_sweep(tmp_path, capsys):
    from formers.cli import main

    assert main(["bench", "attention", "--device", "cpu", "--lengths", "32", "--mixers", "linear",
                 "--opt", "linear.foo=3", "--quiet", "--out", str(tmp_path)]) == 2
    assert "foo" in capsys.readouterr().err
    assert not (tmp_path / "attention_scaling-cpu.json").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compile_counts_per_length_on_cpu():
    """With the flex path forced and compiled on CPU (dynamo's ``eager`` backend: tracing without
    code generation), in one process: the first length compiles, the second recompiles once for
    the new size (then the length is dynamic), the third compiles nothing; SDPA never compiles."""
    import torch

    from formers.bench.attention import sweep
    from formers.nn.attention import core

    torch._dynamo.reset()
    cfg = AttentionBenchConfig(device="cpu", lengths=(128, 256, 512), mixers=("local",), n_heads=2,
                               head_dim=8, modes=("fwd",), force_flex=True, cpu_flex_compile="eager",
                               isolate=False, warmup=2, repeats=1, threads=1)
    before = dict(core.CALLS)
    res = sweep(cfg)
    assert core.CALLS["flex"] > before.get("flex", 0) and core.FLEX_CPU_COMPILE == ""  # restored
    rows = {r["mixer"]: r for r in res["summary"]}
    assert rows["sdpa"]["compiles_by_length"] == [0, 0, 0]
    comp = rows["local"]["compiles_by_length"]
    assert comp[0] >= 1 and comp[1:] == [1, 0] and rows["local"]["compiles_later"] == 1, comp
    case = next(c for c in res["cases"] if c["mixer"] == "local" and c["length"] == 256)
    assert any("size mismatch" in r for r in case["recompile_reasons"]), case["recompile_reasons"]
    md = table_markdown(res)
    assert "torch.compile graphs by length" in md and f"| {comp[0]}, 1, 0 |" in md
    with pytest.raises(ValueError, match="forward only"):
        AttentionBenchConfig(cpu_flex_compile="eager")
    with pytest.raises(ValueError, match="modes"):
        AttentionBenchConfig(modes=("bwd",))
