"""The four-horizon ETTh1 comparison: SAMformer, Pathformer, DLinear, PatchTST, each with its recipe.

Every run is the library's ``forecast`` task and Trainer, with the model's own training recipe
(:mod:`formers.timeseries.recipe`: optimiser, schedule, batch, epochs, patience, loss and
look-back of its paper / reference script), on the same data, splits, seeds and evaluation: test
MSE and MAE on the normalised scale over **all** test windows. Look-backs: Pathformer 96 (its
paper's; its ``drop_last`` test numbers, scored as its code does, are recorded beside the full
ones), SAMformer, DLinear and PatchTST 512.

Each (model, horizon, seed) run is a job in its own process (``--jobs N`` at a time; on a GPU
machine they share the one GPU). Results go to ``--results``.json/.md, written atomically after
every finished job, and the script is resumable: a job already in the results is not run again,
and an interrupted job resumes from its last epoch checkpoint in ``--runs``. ``--time-limit``
stops starting jobs after that many seconds and ends running ones at that time (their epochs
so far are kept in ``--runs``), so a command fits a fixed slot. SAMformer runs made earlier by
``benchmarks/forecast_etth1.py`` (the same recipe and data) are reused from its results files.
A plot of forecasts against the truth on three test windows is written per horizon
(``--results``-hH.png) from the run folders present.

    .venv/bin/python benchmarks/forecast_table.py --models dlinear --device cpu --jobs 1
    .venv/bin/python benchmarks/forecast_table.py --device cuda --jobs 12 --time-limit 460 --copy-to $OUT
    .venv/bin/python benchmarks/forecast_table.py --smoke      # 2 steps per run, /tmp results

Needs ETTh1.csv (see ``formers.timeseries.data``; ``../shared/data/`` in a development checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODELS = ("samformer", "pathformer", "dlinear", "patchtst")
HORIZONS = (96, 192, 336, 720)
# Test MSE / MAE on ETTh1 published by the model's own paper at its own look-back, as recalled in
# the project's paper notes (../shared/papers/sciml-timeseries.md §5(c), §6(c); tagged
# "[paper, recalled; verify]" there). SAMformer: L 512, MSE only; Pathformer: L 96 (drop_last).
PAPER = {
    "samformer": {96: (0.381, None), 192: (0.409, None), 336: (0.423, None), 720: (0.427, None)},
    "pathformer": {96: (0.382, 0.400), 192: (0.440, 0.427), 336: (0.454, 0.432), 720: (0.479, 0.461)},
}
# SAMformer runs of benchmarks/forecast_etth1.py (arm samformer-sam: the same recipe and data)
OLD_SAMFORMER = {96: "forecast-etth1.json", 192: "forecast-etth1-h192.json",
                 336: "forecast-etth1-h336.json", 720: "forecast-etth1-h720.json"}
KEEP = ("test_mse", "test_mae", "val_mse", "val_mae", "test_windows", "test_mse_drop_last",
        "test_mae_drop_last", "test_windows_drop_last", "params", "steps", "stopped_early_at",
        "wall_time_s", "device", "look_back")


def key(model: str, horizon: int, seed: int) -> str:
    return f"{model}/h{horizon}/seed{seed}"


# ------------------------------------------------------------------------------ one job (child)
def run_job(model: str, horizon: int, seed: int, device: str, threads: int, runs: Path,
            max_steps: int | None) -> dict:
    """Train one (model, horizon, seed) with the model's recipe; returns its record."""
    import torch

    import formers.timeseries  # noqa: F401
    from formers.train.task import make_task_for
    from formers.train.trainer import Trainer

    torch.set_num_threads(threads)
    task = make_task_for("forecast", seed, {"dataset": "ETTh1", "horizon": horizon}, model)
    cfg = task.recipe_train(model).replace(seed=seed, device=device, quiet=True)
    if max_steps is not None:
        cfg = cfg.replace(max_steps=max_steps, eval_every=max_steps, checkpoint_every=max_steps)
    run = runs / f"h{horizon}" / model / f"seed{seed}"
    s = Trainer(task, task.model_config(model), cfg, run, resume=run.exists()).fit()
    spe = cfg.eval_every
    rec = {k: s.get(k) for k in KEEP if s.get(k) is not None}
    where = run.relative_to(ROOT) if run.is_relative_to(ROOT) else run  # no machine paths in results
    rec.update({"model": model, "horizon": horizon, "seed": seed, "run": str(where), "look_back": task.look_back,
                "epochs": s["steps"] / spe, "best_epoch": (s["best"]["step"] // spe) if s.get("best") else None,
                "recipe": s["recipe"]["summary"], "recipe_changed": s["recipe"]["changed"],
                "threads": threads, "device_name": (torch.cuda.get_device_name() if cfg.device.startswith("cuda")
                                                    else platform.processor() or platform.machine()),
                "source": "this benchmark"})
    return rec


# ------------------------------------------------------------------------------ results
def load(path: Path) -> dict:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    return {"benchmark": "forecast_table", "records": {}}


def reuse_samformer(result: dict, horizons: list[int], seeds: int) -> None:
    """Records of the SAM arm of benchmarks/forecast_etth1.py (same recipe, data and evaluation)."""
    for h in horizons:
        path = ROOT / "benchmarks" / "results" / OLD_SAMFORMER[h]
        if not path.is_file():
            continue
        old = json.loads(path.read_text())
        if old.get("look_back") != 512 or old.get("horizon") != h:
            continue
        for r in old.get("arms", {}).get("samformer-sam", {}).get("runs", []):
            k = key("samformer", h, r["seed"])
            if r["seed"] < seeds and k not in result["records"]:
                rec = {x: r[x] for x in KEEP if x in r}
                rec.update({"model": "samformer", "horizon": h, "seed": r["seed"], "look_back": 512,
                            "epochs": r.get("epochs"), "best_epoch": r.get("best_epoch"),
                            "device": old.get("device"), "threads": old.get("threads"),
                            "device_name": old.get("device_name"),
                            "recipe": "MSE, SAM 0.7 + Adam 0.001 constant, batch 32, 100 ep, patience 5",
                            "source": f"benchmarks/results/{path.name} (forecast_etth1.py, commit "
                                      f"{old.get('git_commit')})"})
                result["records"][k] = rec


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(result: dict, models: list[str], horizons: list[int]) -> None:
    rows = []
    for h in horizons:
        for m in models:
            recs = [r for r in result["records"].values() if r["model"] == m and r["horizon"] == h]
            if not recs:
                continue
            row = {"horizon": h, "model": m, "seeds": sorted(r["seed"] for r in recs),
                   "look_back": recs[0].get("look_back"), "recipe": recs[0].get("recipe"),
                   "devices": sorted({str(r.get("device")) for r in recs})}
            for name in ("test_mse", "test_mae", "test_mse_drop_last", "test_mae_drop_last"):
                xs = [r[name] for r in recs if r.get(name) is not None]
                if xs:
                    row[name], row[name + "_std"] = mean_std(xs)
            paper = PAPER.get(m, {}).get(h)
            if paper:
                row["paper_mse"], row["paper_mae"] = paper
            rows.append(row)
    result["rows"] = rows


def markdown(result: dict) -> str:
    def ms(r, k):
        if k not in r:
            return "-"
        return f"{r[k]:.4f}" + (f" ± {r[k + '_std']:.4f}" if len(r["seeds"]) > 1 else "")

    lines = ["ETTh1, test MSE / MAE on the normalised scale over all test windows (mean ± std over "
             "seeds); each model trained with its own recipe. `drop_last`: Pathformer's own scoring "
             "(last incomplete test batch dropped). Paper: the model's paper at its look-back "
             "(recalled in the notes; verify).", "",
             "| H | model | look-back | seeds | test MSE | test MAE | MSE drop_last | paper MSE / MAE | device | recipe |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        paper = "-"
        if "paper_mse" in r:
            paper = f"{r['paper_mse']:.3f}" + (f" / {r['paper_mae']:.3f}" if r.get("paper_mae") else "")
        lines.append(f"| {r['horizon']} | {r['model']} | {r['look_back']} | {len(r['seeds'])} | "
                     f"{ms(r, 'test_mse')} | {ms(r, 'test_mae')} | {ms(r, 'test_mse_drop_last')} | "
                     f"{paper} | {', '.join(r['devices'])} | {r['recipe']} |")
    return "\n".join(lines) + "\n"


def write(result: dict, path: Path, copy_to: Path | None) -> None:
    from formers.atomic import write_json, write_text

    write_json(path.with_suffix(".json"), result)
    write_text(path.with_suffix(".md"), markdown(result))
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".md"):
            shutil.copyfile(path.with_suffix(suffix), copy_to / (path.name + suffix))


def plot(horizon: int, models: list[str], runs: Path, path: Path) -> Path | None:
    """Forecasts on three test windows of every model with a run folder here (its lowest seed)."""
    import formers.timeseries  # noqa: F401
    from formers.timeseries.plots import plot_forecasts
    from formers.train.task import make_task_for

    entries = {}
    for m in models:
        bests = sorted((runs / f"h{horizon}" / m).glob("seed*/best/model.safetensors"),
                       key=lambda p: int(p.parent.parent.name[4:]))
        if bests:
            seed = int(bests[0].parent.parent.name[4:])
            task = make_task_for("forecast", seed, {"dataset": "ETTh1", "horizon": horizon}, m)
            entries[f"{m} (L={task.look_back}, seed {seed})"] = (task, task.load_model(bests[0].parent))
    if not entries:
        return None
    return plot_forecasts(entries, path, title=f"ETTh1 test windows, H={horizon}")


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--horizons", default=",".join(map(str, HORIZONS)))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per (model, horizon)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job")
    ap.add_argument("--time-limit", type=float, default=0, help="seconds; 0 = none")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "forecast_table")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "forecast-etth1-table")
    ap.add_argument("--copy-to", type=Path, default=None, help="also copy the results files here")
    ap.add_argument("--smoke", action="store_true", help="2 steps per run, results and runs in /tmp")
    ap.add_argument("--report-only", action="store_true", help="rewrite the table and plots, run nothing")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: MODEL:H:SEED
    ap.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.smoke:
        a.max_steps, a.runs = 2, Path("/tmp/forecast_table_smoke/runs")
        a.results = Path("/tmp/forecast_table_smoke/forecast-etth1-table")
    if a.job:  # child: one run, its record as JSON on the last stdout line
        m, h, s = a.job.split(":")
        rec = run_job(m, int(h), int(s), a.device, a.threads, a.runs, a.max_steps)
        print(json.dumps(rec))
        return
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    horizons = [int(h) for h in a.horizons.split(",") if h.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models or not horizons or a.seeds <= 0 or a.jobs <= 0 or a.threads <= 0:
        raise SystemExit(f"bad arguments: models {models} (known {list(MODELS)}), horizons {horizons}, "
                         f"seeds {a.seeds}, jobs {a.jobs}, threads {a.threads}")
    import torch

    from formers.train.trainer import git_commit

    result = load(a.results.with_suffix(".json"))
    if not a.smoke:
        reuse_samformer(result, horizons, a.seeds)
    result.update({"dataset": "ETTh1", "protocol": "forecast task; each model's recipe "
                   "(formers.timeseries.recipe); test MSE/MAE over all test windows, normalised scale",
                   "torch": torch.__version__, "python": platform.python_version(),
                   "git_commit": git_commit()})
    result.setdefault("commands", [])
    cmd = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    if cmd not in result["commands"]:
        result["commands"].append(cmd)
    # longest first: Pathformer and PatchTST, then SAMformer, then DLinear
    order = {"pathformer": 0, "patchtst": 1, "samformer": 2, "dlinear": 3}
    todo = [(m, h, s) for m in sorted(models, key=order.get) for h in sorted(horizons, reverse=True)
            for s in range(a.seeds) if key(m, h, s) not in result["records"] and not a.report_only]
    print(f"{len(todo)} runs to do, {a.jobs} at a time on {a.device}", flush=True)
    t0 = time.time()
    running: dict[subprocess.Popen, tuple] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT / "src")}
    a.runs.mkdir(parents=True, exist_ok=True)
    while todo or running:
        late = a.time_limit and time.time() - t0 > a.time_limit
        while todo and len(running) < a.jobs and not late:
            m, h, s = todo.pop(0)
            log = open(a.runs / f"{m}-h{h}-seed{s}.log", "w")
            args = [sys.executable, __file__, "--job", f"{m}:{h}:{s}", "--device", a.device,
                    "--threads", str(a.threads), "--runs", str(a.runs)]
            if a.max_steps:
                args += ["--max-steps", str(a.max_steps)]
            running[subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, text=True)] = (m, h, s, log)
        if late and running:
            for p, (m, h, s, log) in running.items():
                p.kill()  # our own child; its epochs so far stay in --runs
                p.wait()
                log.close()
                print(f"time limit: stopped {key(m, h, s)}", flush=True)
            running.clear()
            todo.clear()
            break
        time.sleep(0.5)
        for p in [p for p in running if p.poll() is not None]:
            m, h, s, log = running.pop(p)
            out = p.stdout.read()
            log.close()
            if p.returncode != 0:
                print(f"FAILED {key(m, h, s)} (exit {p.returncode}); see {log.name}", flush=True)
                continue
            rec = json.loads(out.strip().splitlines()[-1])
            result["records"][key(m, h, s)] = rec
            summarise(result, models, horizons)
            write(result, a.results, a.copy_to)
            print(f"{key(m, h, s)}: test mse {rec['test_mse']:.4f} mae {rec['test_mae']:.4f} "
                  f"({rec['epochs']:.0f} epochs, {rec['wall_time_s']:.0f} s; {time.time() - t0:.0f} s in)",
                  flush=True)
    summarise(result, [m for m in MODELS if any(r["model"] == m for r in result["records"].values())],
              sorted({r["horizon"] for r in result["records"].values()}))
    write(result, a.results, a.copy_to)
    for h in horizons:
        png = plot(h, list(MODELS), a.runs, a.results.parent / f"{a.results.name}-h{h}.png")
        if png is not None and a.copy_to is not None:
            shutil.copyfile(png, a.copy_to / png.name)
    print(f"written {a.results.with_suffix('.json')} and .md ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
