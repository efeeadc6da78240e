"""SAMformer on ETTh1 (look-back 512): SAM vs no SAM over seeds, with DLinear and PatchTST beside it.

Every run is ``formers train forecast`` through the library's Trainer and the ``forecast`` task
(SAMformer protocol: batch 32, Adam lr 1e-3, evaluation every epoch, early stopping with patience
5 on validation MSE, test MSE/MAE on all test windows of the normalised series). Writes
``benchmarks/results/forecast-etth1.json`` atomically after every run (a killed benchmark resumes:
finished runs are only re-evaluated) and a PNG of forecasts against the truth for a few test
windows.

    .venv/bin/python benchmarks/forecast_etth1.py --threads 1
    .venv/bin/python benchmarks/forecast_etth1.py --horizon 336 --seeds 1 --arms samformer-sam

Needs ETTh1.csv (see ``formers.timeseries.data``; ``../shared/data/`` in a development checkout).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from formers.atomic import write_json  # noqa: E402
from formers.timeseries.plots import plot_forecasts  # noqa: E402
from formers.train.task import make_task  # noqa: E402
from formers.train.trainer import Trainer, git_commit  # noqa: E402

import formers.timeseries  # noqa: E402,F401

# arm -> (forecaster, SAM rho)
ARMS = {
    "samformer-sam": ("samformer", 0.7),
    "samformer-nosam": ("samformer", 0.0),
    "dlinear": ("dlinear", 0.0),
    "patchtst": ("patchtst", 0.0),
}
# SAMformer paper, Table 1 (arXiv 2402.10198), ETTh1, L = 512, test MSE (as recalled in the
# project's paper notes, ../shared/papers/sciml-timeseries.md §6(c)).
PAPER_SAMFORMER_MSE = {96: 0.381, 192: 0.409, 336: 0.423, 720: 0.427}


def _write_merged(out: Path, result: dict) -> dict:
    """Write ``result``, keeping the arms of an existing results file of the same look-back and
    horizon that this call does not run (so arms can run in separate or parallel calls)."""
    import json

    if out.is_file():
        try:
            old = json.loads(out.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("look_back") == result["look_back"] and old.get("horizon") == result["horizon"]:
            merged = {k: v for k, v in old.get("arms", {}).items() if k not in result["arms"]}
            result["arms"] = {**merged, **result["arms"]}
            result.setdefault("commands", [])
            for c in old.get("commands", [old.get("command")]):
                if c and c not in result["commands"]:
                    result["commands"].append(c)
            if result["command"] not in result["commands"]:
                result["commands"].append(result["command"])
    write_json(out, result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--horizon", type=int, default=96)
    ap.add_argument("--look-back", type=int, default=512)
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the SAMformer arms")
    ap.add_argument("--baseline-seeds", type=int, default=1, help="seeds of DLinear / PatchTST")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {list(ARMS)}")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "forecast_etth1")
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default benchmarks/results/forecast-etth1[-hH].json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suffix = "" if args.horizon == 96 else f"-h{args.horizon}"
    out = args.out or ROOT / "benchmarks" / "results" / f"forecast-etth1{suffix}.json"
    arms = [a.strip() for a in args.arms.split(",")]
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"unknown arm {a!r}; known: {list(ARMS)}")
    options = {"dataset": "ETTh1", "look_back": args.look_back, "horizon": args.horizon}
    probe = make_task("forecast", 0, options)
    result = {
        "benchmark": "forecast_etth1", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "task_options": options, "task": probe.describe(),
        "look_back": args.look_back, "horizon": args.horizon,
        "protocol": "batch 32, AdamW lr 1e-3 betas (0.9, 0.999) wd 1e-5 constant lr, eval every epoch, "
                    "early stopping patience 5 on val_mse (best-epoch weights), test MSE/MAE over all "
                    "test windows on the normalised scale",
        "persistence_test": probe.persistence_metrics(),
        "paper_samformer_test_mse": PAPER_SAMFORMER_MSE.get(args.horizon),
        "device": args.device, "device_name": platform.processor() or platform.machine(),
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "git_commit": git_commit(), "arms": {},
    }
    for arm in arms:
        model_name, rho = ARMS[arm]
        n_seeds = args.seeds if model_name == "samformer" else args.baseline_seeds
        runs = []
        for seed in range(n_seeds):
            task = make_task("forecast", seed, options)
            base = task.recipe_train("samformer")
            tcfg = base.replace(seed=seed, sam_rho=rho, device=args.device, quiet=True,
                                max_steps=args.max_epochs * task.steps_per_epoch(base.batch_size))
            run = args.runs / f"h{args.horizon}" / arm / f"seed{seed}"
            t0 = time.perf_counter()
            trainer = Trainer(task, task.model_config(model_name), tcfg, run, resume=run.exists())
            s = trainer.fit()
            spe = task.steps_per_epoch(base.batch_size)
            rec = {k: s.get(k) for k in ("test_mse", "test_mae", "val_mse", "val_mae", "test_windows",
                                         "params", "steps", "stopped_early_at", "wall_time_s")}
            rec.update({"seed": seed, "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
                        "best_epoch": (s["best"]["step"] // spe) if s.get("best") else None,
                        "epochs": s["steps"] / spe, "sam_rho": rho, "this_call_s": time.perf_counter() - t0})
            runs.append(rec)
            print(f"{arm} seed {seed}: test mse {rec['test_mse']:.4f} mae {rec['test_mae']:.4f} "
                  f"(best epoch {rec['best_epoch']}, {rec['epochs']:.0f} epochs, {rec['wall_time_s']:.0f} s)",
                  flush=True)
            if arm == "samformer-sam" and seed == 0:
                plot_forecasts({"SAMformer (SAM rho 0.7)": (task, trainer.model.cpu())}, out.with_suffix(".png"),
                               f"SAMformer (SAM rho 0.7) on ETTh1 test windows, L={args.look_back}, "
                               f"H={args.horizon}, seed 0")
            mse = [r["test_mse"] for r in runs]
            mae = [r["test_mae"] for r in runs]
            result["arms"][arm] = {
                "model": model_name, "sam_rho": rho, "runs": runs, "seeds": len(runs),
                "test_mse_mean": statistics.mean(mse), "test_mse_std": statistics.stdev(mse) if len(mse) > 1 else 0.0,
                "test_mae_mean": statistics.mean(mae), "test_mae_std": statistics.stdev(mae) if len(mae) > 1 else 0.0,
            }
            _write_merged(out, result)
    result = _write_merged(out, result)
    a = result["arms"]
    if "samformer-sam" in a and "samformer-nosam" in a:
        sam, nosam = a["samformer-sam"]["test_mse_mean"], a["samformer-nosam"]["test_mse_mean"]
        result["sam_gain_pct"] = 100 * (nosam - sam) / nosam
        pairs = list(zip([r["test_mse"] for r in a["samformer-sam"]["runs"]],
                         [r["test_mse"] for r in a["samformer-nosam"]["runs"]]))
        result["sam_better_in_seeds"] = f"{sum(s < n for s, n in pairs)}/{len(pairs)}"
    write_json(out, result)
    print(f"written {out}")


if __name__ == "__main__":
    main()
