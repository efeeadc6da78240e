"""Does WeatherFormer's masked-variable pretraining help a small-data downstream regression?

On the generated seasonal weather set (:mod:`formers.timeseries.weather_data`; the paper's NASA
POWER / soybean data is not available offline), per seed:

1. ``weather-pretrain``: masked-variable pretraining on the unlabelled archive locations;
2. ``weather-finetune`` for each labelled-set size n, three arms with the same architecture, the
   same fine-tuning budget (steps, batch, lr schedule, early stopping on val_mse) and the same seed:
   ``scratch`` (fresh encoder), ``finetune`` (pretrained encoder, all weights trained) and
   ``frozen`` (pretrained encoder frozen, head only); with ``--observed`` the downstream data has
   only those variables and the others are fed as masked (the paper's setting: its soybean data
   has 6 of the 31 pretraining variables), for every arm alike;
3. a ridge regression on the flattened weekly inputs + coordinates (alpha picked on validation)
   as a non-neural reference.

Reports test MSE and R² (standardised target, 256 test location-years from crop locations that
pretraining never saw) as mean ± std over seeds, and the pretraining masked-MSE before/after.
Writes ``benchmarks/results/weatherformer-pretrain[-partial][-cuda].json`` and ``.png`` atomically
(``-partial`` with ``--observed``, ``-cuda`` off the CPU).

    # the CPU runs, in three calls (4, 6.5 and 10.5 minutes on the busy shared 2-core machine):
    nice .venv/bin/python benchmarks/weatherformer_pretrain.py --pretrain-only
    nice .venv/bin/python benchmarks/weatherformer_pretrain.py --reuse-pretrain
    nice .venv/bin/python benchmarks/weatherformer_pretrain.py --reuse-pretrain --observed T2M_MAX,T2M_MIN,PRECTOT
    .venv/bin/python benchmarks/weatherformer_pretrain.py --smoke              # a code check, ~1 min
    .venv/bin/python benchmarks/weatherformer_pretrain.py --device cuda --pretrain-steps 5000 \\
        --sizes 16,32,64,128,256 --seeds 5                                     # a longer GPU run
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from formers.atomic import atomic_write, write_json  # noqa: E402
from formers.timeseries.weather_task import WeatherFinetuneTask, WeatherPretrainTask  # noqa: E402
from formers.train.trainer import Trainer, git_commit, read_metrics  # noqa: E402

ARMS = ("scratch", "finetune", "frozen")


def ridge_baseline(task: WeatherFinetuneTask, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)) -> dict:
    """Ridge on [flattened weekly inputs, lat/90, lng/180]; alpha chosen by validation MSE."""
    keep = ~task.splits["train"]["mask"][0]  # the observed variables

    def feats(split):
        s = task.splits[split]
        return np.concatenate([s["x"][:, :, keep].reshape(len(s["y"]), -1).numpy(),
                               s["coords"].numpy() / np.array([90.0, 180.0])], 1), s["y"].numpy()

    (xt, yt), (xv, yv), (xs, ys) = feats("train"), feats("val"), feats("test")
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    xt, xv, xs = (xt - mu) / sd, (xv - mu) / sd, (xs - mu) / sd
    best = None
    for a in alphas:
        w = np.linalg.solve(xt.T @ xt + a * np.eye(xt.shape[1]), xt.T @ (yt - yt.mean()))
        val = float(((xv @ w + yt.mean() - yv) ** 2).mean())
        if best is None or val < best[0]:
            best = (val, a, w)
    pred = xs @ best[2] + yt.mean()
    mse = float(((pred - ys) ** 2).mean())
    return {"alpha": best[1], "val_mse": best[0], "test_mse": mse,
            "test_r2": 1 - mse / float(ys.var())}


def fresh(run: Path) -> Path:
    """``run`` emptied (every number here comes from a run made by this call)."""
    shutil.rmtree(run, ignore_errors=True)
    return run


def mean_std(xs: list[float]) -> dict:
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(121)
    sizes = result["sizes"]
    for arm in (*ARMS, "ridge"):
        m = [result["finetune"][str(n)][arm]["test_r2"]["mean"] for n in sizes]
        s = [result["finetune"][str(n)][arm]["test_r2"]["std"] for n in sizes]
        ax.errorbar(sizes, m, yerr=s, marker="o", capsize=3, label=arm, ls="--" if arm == "ridge" else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled training rows (location-years)")
    ax.set_ylabel("test R² (mean ± std over seeds)")
    ax.set_title(f"downstream yield proxy; inputs: {result.get('observed', 'all')} variables", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    ax2 = fig.add_subplot(122)
    for seed, curve in result["pretrain"]["curves"].items():
        ax2.plot([c[0] for c in curve], [c[1] for c in curve], "o-", ms=3, label=f"seed {seed}")
    ax2.axhline(result["pretrain"]["zero_mse"], color="gray", ls=":", label="predict the mean")
    ax2.set_xlabel("pretraining step")
    ax2.set_ylabel("validation masked MSE")
    ax2.set_title("masked-variable pretraining")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("WeatherFormer pretraining on generated seasonal weather (not the paper's data)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", default="16,64,256", help="labelled-set sizes, comma list")
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--observed", default=None,
                    help="variables the downstream data has (comma list; the rest fed as masked); default all")
    ap.add_argument("--pretrain-only", action="store_true", help="run the pretraining stage only")
    ap.add_argument("--reuse-pretrain", action="store_true",
                    help="use finished pretraining runs in --runs (same step count) instead of training again")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny data and budgets (a code check, not a result)")
    ap.add_argument("--runs", type=Path, default=Path("/tmp") / "formers-weatherformer-runs")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = {}
    if args.smoke:
        data = {"n_archive": 4, "n_crop": 20, "n_years": 20}
        sizes, args.seeds, args.pretrain_steps, args.finetune_steps = [8, 16], 2, 6, 6
    name = ("weatherformer-pretrain" + ("-partial" if args.observed else "")
            + ("" if args.device == "cpu" else f"-{args.device.split(':')[0]}") + ("-smoke" if args.smoke else ""))
    default = (args.runs if args.smoke else ROOT / "benchmarks" / "results") / f"{name}.json"
    out = args.out or default
    t_start = time.perf_counter()
    result = {
        "benchmark": "weatherformer_pretrain", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "data": "generated seasonal weather (formers.timeseries.weather_data), not NASA POWER", "data_options": data,
        "observed": args.observed or "all", "sizes": sizes, "seeds": args.seeds, "pretrain_steps": args.pretrain_steps,
        "pretrain_batch": args.pretrain_batch, "finetune_steps": args.finetune_steps,
        "device": args.device, "device_name": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(), "git_commit": git_commit(),
        "pretrain": {"curves": {}, "initial_val_loss": [], "final_val_loss": []}, "finetune": {},
    }
    pre_dirs = {}
    for seed in range(args.seeds):
        task = WeatherPretrainTask(seed=seed, **data)
        result["pretrain"]["zero_mse"] = task.zero_mse
        tcfg = task.default_train().replace(max_steps=args.pretrain_steps, batch_size=args.pretrain_batch,
                                            eval_every=max(1, args.pretrain_steps // 6), seed=seed,
                                            device=args.device, quiet=True)
        run = args.runs / f"pretrain-seed{seed}"
        done = run / "summary.json"
        if args.reuse_pretrain and done.is_file() and json.loads(done.read_text()).get("steps") == args.pretrain_steps:
            s = json.loads(done.read_text())
            init = json.loads((run / "initial_val_loss.json").read_text())["val_loss"]
            result["pretrain"]["reused"] = True
        else:
            trainer = Trainer(task, task.model_config(), tcfg, fresh(run))
            init = task.evaluate(trainer.model.eval(), 1, 256, trainer.device)["val_loss"]
            write_json(run / "initial_val_loss.json", {"val_loss": init})
            trainer.model.train()
            s = trainer.fit()

        curve = [(0, init)] + [(r["step"], r["val_loss"]) for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
        result["pretrain"]["curves"][str(seed)] = curve
        result["pretrain"]["initial_val_loss"].append(init)
        result["pretrain"]["final_val_loss"].append(s["val_loss"])
        result["pretrain"].setdefault("wall_time_s", []).append(s["wall_time_s"])
        pre_dirs[seed] = run
        print(f"pretrain seed {seed}: masked MSE {init:.4f} -> {s['val_loss']:.4f} (mean predictor "
              f"{task.zero_mse:.4f}; {s['wall_time_s']:.0f} s)", flush=True)
    if args.pretrain_only:
        write_json(args.runs / "pretrain-stage.json", result)
        print(f"pretraining runs in {args.runs}; fine-tune with --reuse-pretrain")
        return
    for n in sizes:
        rows: dict[str, dict[str, list[float]]] = {a: {"test_mse": [], "test_r2": [], "val_mse": [], "best_step": []}
                                                   for a in ARMS}
        ridge = None
        for seed in range(args.seeds):
            for arm in ARMS:
                opts = dict(data, n_labelled=n, observed=args.observed)
                if arm != "scratch":
                    opts.update(init=str(pre_dirs[seed]), freeze=arm == "frozen")
                task = WeatherFinetuneTask(seed=seed, **opts)
                tcfg = task.default_train().replace(max_steps=args.finetune_steps, seed=seed,
                                                    device=args.device, quiet=True)
                run = fresh(args.runs / f"n{n}" / arm / f"seed{seed}")
                s = Trainer(task, task.model_config(), tcfg, run).fit()
                for k in ("test_mse", "test_r2", "val_mse"):
                    rows[arm][k].append(s[k])
                rows[arm]["best_step"].append((s.get("best") or {}).get("step"))
                print(f"n={n} seed {seed} {arm:8s}: test MSE {s['test_mse']:.4f} R2 {s['test_r2']:.3f} "
                      f"(best step {rows[arm]['best_step'][-1]}, {s['wall_time_s']:.0f} s)", flush=True)
            if ridge is None:  # deterministic: one fit per size
                ridge = ridge_baseline(task)
                print(f"n={n} ridge: test MSE {ridge['test_mse']:.4f} R2 {ridge['test_r2']:.3f}", flush=True)
        entry = {a: {k: (mean_std(v) if k != "best_step" else v) for k, v in r.items()} for a, r in rows.items()}
        entry["ridge"] = {"test_mse": mean_std([ridge["test_mse"]]), "test_r2": mean_std([ridge["test_r2"]]),
                          "alpha": ridge["alpha"]}
        entry["finetune_better_than_scratch_in_seeds"] = (
            f"{sum(f < s for f, s in zip(rows['finetune']['test_mse'], rows['scratch']['test_mse']))}/{args.seeds}")
        result["finetune"][str(n)] = entry
        write_json(out, result)
    p = result["pretrain"]
    p["initial_val_loss"], p["final_val_loss"] = mean_std(p["initial_val_loss"]), mean_std(p["final_val_loss"])
    result["wall_time_s"] = time.perf_counter() - t_start
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print(f"written {out} and {out.with_suffix('.png')} ({result['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
