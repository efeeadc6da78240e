"""Paper-effect experiments for the architecture parts. Each runs ``formers compare`` (same data
order, token budget and seeds for every model; mean ± std and Welch p-values against the first
model) and writes ``benchmarks/results/effect-<name>.json`` and ``.png`` with device, torch
version and commit.

    python benchmarks/paper_effects.py denseformer value-residual --device cuda --dtype bf16
    python benchmarks/paper_effects.py all --smoke          # a seconds-long CPU check of the code

Sizes follow the issue (DenseFormer: 24 blocks, d_model 256, seq_len 256; value residual:
8 layers, d_model 512; MatFormer: the notes' tiny repro, 4 layers, d_model 128, d_ff 512,
4 granularities, against independently trained models with d_ff 64/128/256/512). Budgets are
scaled to one GPU call and are far below the papers': state them beside any conclusion.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from formers.atomic import atomic_write, write_json
from formers.train.config import TrainConfig

LM_TRAIN = dict(batch_size=32, lr=1e-3, warmup_steps=50, eval_every=100, eval_batches=32)
EXPERIMENTS: dict[str, dict[str, Any]] = {
    "denseformer": dict(
        task="lm", models=["baseline", "denseformer", "denseformer-4x5"],
        options=dict(seq_len=256, d_model=256, n_layers=24, n_heads=4),
        train=dict(LM_TRAIN, max_steps=1000)),
    "value-residual": dict(
        task="lm", models=["baseline", "value-residual", "value-residual-learned", "svformer"],
        options=dict(seq_len=256, d_model=512, n_layers=8, n_heads=8),
        train=dict(LM_TRAIN, max_steps=1000)),
    "kv-reverse": dict(
        task="reverse", models=["baseline", "kv-attention", "kv-attention-pos"],
        options=dict(length=64), train=dict(max_steps=600, batch_size=128, lr=1e-3, warmup_steps=50,
                                           weight_decay=0.0, eval_every=100, eval_batches=8)),
    "kv-sort": dict(
        task="sort", models=["baseline", "kv-attention", "kv-attention-pos"],
        options=dict(length=64), train=dict(max_steps=600, batch_size=128, lr=1e-3, warmup_steps=50,
                                           weight_decay=0.0, eval_every=100, eval_batches=8)),
    "efficiency": dict(
        task="lm", models=["baseline", "memoryformer", "moe", "brainformer", "lowrank"],
        options=dict(seq_len=256, d_model=256, n_layers=6, n_heads=4),
        train=dict(LM_TRAIN, max_steps=1000)),
    "matformer": dict(
        task="lm-matformer", models=["matformer"],
        options=dict(seq_len=128, d_model=128, n_layers=4, n_heads=4),
        train=dict(LM_TRAIN, batch_size=64, lr=2e-3, max_steps=1500)),
}
SMOKE_OPTIONS = {"lm": dict(seq_len=16, d_model=16, n_heads=2), "lm-matformer": dict(seq_len=16, d_model=16, n_heads=2),
                 "reverse": dict(length=6, d_model=16, train_size=200, val_size=20),
                 "sort": dict(length=6, d_model=16, train_size=200, val_size=20)}


def _matformer_extra(exp: dict, work: Path, seeds: int, train: TrainConfig, options: dict) -> dict:
    """Independent dense models at every granularity's width, and Mix'n'Match submodels of the
    seed-0 MatFormer evaluated on the same validation windows."""
    from formers.bench.compare import compare
    from formers.cli import _run_task
    from formers.nn.matformer import count_params_at, n_granularities, set_granularity
    from formers.train.task import make_task

    task0 = make_task(exp["task"], 0, options)
    d_ff = 4 * options["d_model"]
    widths = [d_ff // 8, d_ff // 4, d_ff // 2, d_ff]
    independent = {}
    for w in widths:
        res = compare(exp["task"], ["baseline"], seeds, train, work / f"independent-dff{w}", options,
                      {"d_ff": w})
        independent[w] = res["rows"][0]
    task, model, _ = _run_task(work / "matformer" / "seed0")
    device = torch.device("cpu")
    model = model.to(device).eval()
    n = n_granularities(model)
    rng = random.Random(0)
    mixes = [[g] * model.cfg.n_layers for g in range(n)]
    mixes += [[rng.randrange(n) for _ in range(model.cfg.n_layers)] for _ in range(12)]
    points = []
    for mix in mixes:
        with set_granularity(model, mix):
            m = task.evaluate(model, train.eval_batches, train.batch_size, device)
        points.append({"granularity": mix, "params": count_params_at(model, mix), "val_bpb": m["val_bpb"]})
    return {"independent": {str(w): r for w, r in independent.items()}, "mix_n_match": points,
            "widths": widths, "params_independent": {str(w): r["params"] for w, r in independent.items()}}


def _matformer_plot(extra: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    pts = extra["mix_n_match"]
    uniform = [p for p in pts if len(set(p["granularity"])) == 1]
    mixed = [p for p in pts if len(set(p["granularity"])) > 1]
    ax.scatter([p["params"] for p in mixed], [p["val_bpb"] for p in mixed], s=14, c="tab:gray",
               label="Mix'n'Match submodels (seed 0)")
    ax.plot([p["params"] for p in uniform], [p["val_bpb"] for p in uniform], "o-", c="tab:blue",
            label="MatFormer granularities (seed 0)")
    ind = extra["independent"]
    ax.plot([ind[str(w)]["params"] for w in extra["widths"]],
            [ind[str(w)]["val_bpb"] for w in extra["widths"]], "s--", c="tab:orange",
            label="independent models (mean over seeds)")
    ax.set_xlabel("parameters")
    ax.set_ylabel("val bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiments", nargs="+", choices=sorted(EXPERIMENTS) + ["all"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default=None,
                    help="comma-separated subset of the experiment's models (the first stays the baseline)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and 2 steps: checks the code runs")
    ap.add_argument("--work", default="runs/effects", help="folder for the compare runs")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--commit", default=None)
    a = ap.parse_args()

    from formers.bench.compare import compare
    from formers.cli import _load_all
    from formers.train.trainer import git_commit

    _load_all()
    names = sorted(EXPERIMENTS) if "all" in a.experiments else a.experiments
    for name in names:
        exp = EXPERIMENTS[name]
        train = {**exp["train"], "device": a.device, "dtype": a.dtype, "quiet": True}
        options = dict(exp["options"])
        if a.smoke:
            options.update(SMOKE_OPTIONS[exp["task"]])
            options["n_layers"] = min(options.get("n_layers", 2), 6)
            train.update(max_steps=2, batch_size=4, eval_every=2, eval_batches=1, warmup_steps=1)
        tcfg = TrainConfig(**train)
        work = Path(a.work) / name
        t0 = time.perf_counter()
        models = exp["models"]
        if a.models:
            unknown = sorted(set(a.models.split(",")) - set(models))
            if unknown:
                raise SystemExit(f"--models: {unknown} not in experiment {name!r}: {models}")
            models = [m for m in models if m in a.models.split(",")]
        res = compare(exp["task"], models, a.seeds, tcfg, work, options)
        if name == "matformer":
            res["matformer"] = _matformer_extra(exp, work, a.seeds, tcfg, options)
            _matformer_plot(res["matformer"], work / "compare.png")
        res.update(experiment=name, wall_s=time.perf_counter() - t0, torch=torch.__version__,
                   device_name=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                   commit=a.commit or git_commit(), smoke=a.smoke)
        res.pop("runs", None)  # per-run folders stay in --work; the rows hold the summary
        suffix = ("-smoke" if a.smoke else "") + (f"-{'-'.join(models)}" if a.models else "")
        write_json(Path(a.out) / f"effect-{name}{suffix}.json", res)
        shutil.copyfile(work / "compare.png", Path(a.out) / f"effect-{name}{suffix}.png")
        print(json.dumps({"experiment": name, "wall_s": round(res["wall_s"], 1), "rows": res["rows"]}))
        if name == "matformer":
            summary = {w: round(r["val_bpb"], 4) for w, r in res["matformer"]["independent"].items()}
            print(json.dumps({"matformer_independent_val_bpb": summary,
                              "granularities": [round(p["val_bpb"], 4) for p in res["matformer"]["mix_n_match"][:4]]}))


if __name__ == "__main__":
    main()
