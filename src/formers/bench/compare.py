"""``formers compare``: train several model variants on one task with the same data, budget and
seeds; one table (params, final metric mean ± std, tokens/s, peak memory, Welch p-value against
the first model) and one plot of validation curves. Each run trains in its own process, so the
peak memory it reports (max RSS on CPU) is its own. A killed comparison resumes: finished runs
are re-evaluated and an interrupted run continues from its last checkpoint."""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing as mp
import statistics
from pathlib import Path
from typing import Any

from formers.atomic import atomic_write, write_json, write_text
from formers.train.config import TrainConfig
from formers.train.task import configure_model, make_task
from formers.train.trainer import Trainer


def _read_curve(run: Path, metric: str) -> list[tuple[int, float]]:
    pts = []
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if metric in rec:
                pts.append((int(rec["step"]), float(rec[metric])))
    return pts


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value (scipy), or None with fewer than 2 runs per side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _train_run(task_module: str, task_name: str, seed: int, options: dict[str, Any] | None,
               model_cfg: dict[str, Any], train: dict[str, Any], run: str) -> dict[str, Any]:
    """One (model, seed) training in a child process; resumes the run folder if it exists."""
    import formers.nn  # noqa: F401  (registers every part the config may name)

    importlib.import_module(task_module)  # registers the task
    task = make_task(task_name, seed, options)
    return Trainer(task, task.config_from_dict(model_cfg), TrainConfig.from_dict(train), Path(run),
                   resume=Path(run).exists()).fit()


def compare(task_name: str, models: list[str], seeds: int, train: TrainConfig, out: Path,
            task_options: dict[str, Any] | None = None,
            model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every (model, seed) pair and summarise. Returns the summary written to compare.json.

    Seeds are ``train.seed`` ... ``train.seed + seeds - 1`` (run folders ``out/MODEL/seedS``). A run
    folder that exists is resumed through the trainer, which refuses other settings or data than
    the run was started with (a finished run is only re-evaluated; a larger ``max_steps`` extends
    it).
    """
    if not models:
        raise ValueError("compare: name at least one model (--models a,b,...)")
    if len(set(models)) != len(models):
        raise ValueError(f"compare: models {models} name a model more than once")
    if seeds <= 0:
        raise ValueError(f"compare: seeds must be > 0, got {seeds}")
    seed_list = list(range(train.seed, train.seed + seeds))
    tasks = {s: make_task(task_name, s, task_options) for s in seed_list}
    configs = {}
    for m in models:  # build every config first: a bad name fails before any training
        configs[m] = configure_model(tasks[seed_list[0]], m, model_overrides)
    metric = tasks[seed_list[0]].metric
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for m in models:
        for s in seed_list:
            run = out / m / f"seed{s}"
            # each run in a fresh process: its peak memory is its own, not the maximum so far
            with mp.get_context("spawn").Pool(1) as pool:
                summary = pool.apply(_train_run, (type(tasks[s]).__module__, task_name, s,
                                                  task_options, configs[m].to_dict(),
                                                  train.replace(seed=s).to_dict(), str(run)))
            runs[m].append({"seed": s, "run": str(run), **summary})
    rows = []
    base = [r[metric] for r in runs[models[0]]]
    for m in models:
        vals = [r[metric] for r in runs[m]]
        rows.append({
            "model": m,
            "params": runs[m][0].get("params"),
            metric: statistics.mean(vals),
            f"{metric}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "tokens_per_s": statistics.mean(r.get("tokens_per_s", math.nan) for r in runs[m]),
            "peak_mem_mb": statistics.mean(r.get("peak_mem_mb", math.nan) for r in runs[m]),
            "p_vs_first": None if m == models[0] else welch_p(vals, base),
        })
        for extra in getattr(tasks[seed_list[0]], "report_metrics", ()):  # e.g. test_mae beside test_mse
            xs = [r[extra] for r in runs[m] if r.get(extra) is not None]
            if xs:
                rows[-1][extra] = statistics.mean(xs)
                rows[-1][f"{extra}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    first = tasks[seed_list[0]]
    result = {"task": task_name, "metric": metric, "lower_is_better": first.lower_is_better,
              "seeds": seeds, "seed_list": seed_list, "train": train.to_dict(), "task_info": first.describe(),
              "report_metrics": list(getattr(first, "report_metrics", ())), "rows": rows, "runs": runs}
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", table_markdown(result))
    plot_curves(out, models, seed_list, metric)
    return result


def table_markdown(result: dict[str, Any]) -> str:
    metric, seeds = result["metric"], result["seeds"]
    what = f"mean ± std, {seeds} seeds" if seeds > 1 else "1 seed"
    head = f"| model | params | {metric} ({what}) | tokens/s | peak MB | p vs {result['rows'][0]['model']} |"
    extras = [k for k in result.get("report_metrics", []) if all(k in r for r in result["rows"])]
    head += "".join(f" {k} |" for k in extras)
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extras)]
    for r in result["rows"]:
        p = "-" if r["p_vs_first"] is None else f"{r['p_vs_first']:.3g}"
        value = f"{r[metric]:.4f}" + (f" ± {r[metric + '_std']:.4f}" if seeds > 1 else "")
        more = "".join(f" {r[k]:.4f}" + (f" ± {r[k + '_std']:.4f}" if seeds > 1 else "") + " |"
                       for k in extras)
        lines.append(f"| {r['model']} | {r['params']:,} | {value} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:,.0f} | {p} |{more}")
    return "\n".join(lines) + "\n"


def plot_curves(out: Path, models: list[str], seeds: list[int], metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in models:
        curves = [_read_curve(out / m / f"seed{s}", metric) for s in seeds]
        steps = sorted({st for c in curves for st, _ in c})
        means = []
        for st in steps:
            vals = [v for c in curves for s2, v in c if s2 == st]
            means.append(statistics.mean(vals))
        ax.plot(steps, means, marker="o", ms=3, label=m)
    ax.set_xlabel("step")
    ax.set_ylabel(metric + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "compare.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path
