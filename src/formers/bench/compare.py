"""``formers compare``: train several model variants on one task with the same data, budget and
seeds; one table (params, final metric mean ± std, tokens/s, peak memory, Welch p-value against
the first model) and one plot of validation curves. Each run trains in its own process, so the
peak memory it reports (max RSS on CPU) is its own. A killed comparison resumes: finished runs
are re-evaluated and an interrupted run continues from its last checkpoint.

A task with per-model training recipes (:meth:`~formers.train.task.Task.recipe_options` /
``recipe_train``) trains each model with its own recipe (pass one TrainConfig per model); the
table then names each model's recipe and look-back. A task with
:meth:`~formers.train.task.Task.plot_examples` also gets a plot of each model's predictions (the
first seed) on a few held-out examples. :func:`sweep_table` joins the comparisons of a sweep over
one task option (e.g. the forecasting horizon) into one table."""

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
from formers.train.task import Task, configure_model, make_task, make_task_for
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


def compare(task_name: str, models: list[str], seeds: int, train: TrainConfig | dict[str, TrainConfig],
            out: Path, task_options: dict[str, Any] | None = None,
            model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every (model, seed) pair and summarise. Returns the summary written to compare.json.

    ``train``: one TrainConfig for every model, or one per model (each model's recipe). Each model
    gets the task built with its recipe's options under ``task_options``
    (:func:`~formers.train.task.make_task_for`). Seeds are ``seed`` ... ``seed + seeds - 1`` of the
    first model's config (run folders ``out/MODEL/seedS``). A run folder that exists is resumed
    through the trainer, which refuses other settings or data than the run was started with (a
    finished run is only re-evaluated; a larger ``max_steps`` extends it).
    """
    if not models:
        raise ValueError("compare: name at least one model (--models a,b,...)")
    if len(set(models)) != len(models):
        raise ValueError(f"compare: models {models} name a model more than once")
    if seeds <= 0:
        raise ValueError(f"compare: seeds must be > 0, got {seeds}")
    trains = dict(train) if isinstance(train, dict) else {m: train for m in models}
    missing = [m for m in models if m not in trains]
    if missing:
        raise ValueError(f"compare: no TrainConfig for model(s) {missing}")
    start = trains[models[0]].seed
    if any(trains[m].seed != start for m in models):
        raise ValueError("compare: every model's TrainConfig must have the same seed")
    seed_list = list(range(start, start + seeds))
    tasks = {(m, s): make_task_for(task_name, s, task_options, m) for m in models for s in seed_list}
    configs = {}
    for m in models:  # build every config first: a bad name fails before any training
        configs[m] = configure_model(tasks[m, seed_list[0]], m, model_overrides)
    first = tasks[models[0], seed_list[0]]
    metric = first.metric
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for m in models:
        for s in seed_list:
            run = out / m / f"seed{s}"
            # each run in a fresh process: its peak memory is its own, not the maximum so far
            with mp.get_context("spawn").Pool(1) as pool:
                summary = pool.apply(_train_run, (type(first).__module__, task_name, s,
                                                  tasks[m, s].options, configs[m].to_dict(),
                                                  trains[m].replace(seed=s).to_dict(), str(run)))
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
        recipe = runs[m][0].get("recipe")
        if isinstance(recipe, dict):  # the model's own training recipe (and its input length)
            rows[-1]["recipe"] = recipe.get("summary")
            if recipe.get("look_back") is not None:
                rows[-1]["look_back"] = recipe["look_back"]
        for extra in getattr(first, "report_metrics", ()):  # e.g. test_mae beside test_mse
            xs = [r[extra] for r in runs[m] if r.get(extra) is not None]
            if xs:
                rows[-1][extra] = statistics.mean(xs)
                rows[-1][f"{extra}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    same = all(trains[m] == trains[models[0]] for m in models)
    result = {"task": task_name, "metric": metric, "lower_is_better": first.lower_is_better,
              "seeds": seeds, "seed_list": seed_list,
              "train": trains[models[0]].to_dict() if same else {m: trains[m].to_dict() for m in models},
              "task_info": first.describe(),
              "task_options": {m: tasks[m, seed_list[0]].options for m in models
                               if getattr(tasks[m, seed_list[0]], "options", None) is not None},
              "report_metrics": list(getattr(first, "report_metrics", ())), "rows": rows, "runs": runs}
    write_json(out / "compare.json", result)
    write_text(out / "compare.md", table_markdown(result))
    plot_curves(out, models, seed_list, metric)
    examples = _plot_examples(first, {m: tasks[m, seed_list[0]] for m in models},
                              {m: Path(runs[m][0]["run"]) for m in models}, out / "examples.png")
    if examples is not None:
        result["examples_png"] = str(examples)
        write_json(out / "compare.json", result)
    return result


def _plot_examples(task, tasks: dict[str, Any], runs: dict[str, Path], path: Path) -> Path | None:
    """The task's plot of each model's predictions (the weights the run reported: ``best/`` under
    early stopping, else the last checkpoint); None when the task has no such plot."""
    from formers.train.checkpoint import find_checkpoint

    if type(task).plot_examples is Task.plot_examples:
        return None
    models = {}
    for m, run in runs.items():
        folder = run / "best" if (run / "best" / "model.safetensors").is_file() else find_checkpoint(run)
        if folder is None:
            return None
        models[m] = (tasks[m], tasks[m].load_model(folder))
    return task.plot_examples(models, path)


def _mean_std(r: dict[str, Any], key: str, seeds: int) -> str:
    return f"{r[key]:.4f}" + (f" ± {r[key + '_std']:.4f}" if seeds > 1 else "")


def table_markdown(result: dict[str, Any]) -> str:
    metric, seeds = result["metric"], result["seeds"]
    what = f"mean ± std, {seeds} seeds" if seeds > 1 else "1 seed"
    head = f"| model | params | {metric} ({what}) | tokens/s | peak MB | p vs {result['rows'][0]['model']} |"
    extras = [k for k in result.get("report_metrics", []) if all(k in r for r in result["rows"])]
    head += "".join(f" {k} |" for k in extras)
    recipes = any("recipe" in r for r in result["rows"])
    head += " look-back | recipe |" if recipes else ""
    lines = [head, "|---|---:|---:|---:|---:|---:|" + "---:|" * len(extras) + ("---:|---|" if recipes else "")]
    for r in result["rows"]:
        p = "-" if r["p_vs_first"] is None else f"{r['p_vs_first']:.3g}"
        more = "".join(f" {_mean_std(r, k, seeds)} |" for k in extras)
        if recipes:
            more += f" {r.get('look_back', '-')} | {r.get('recipe', '-')} |"
        lines.append(f"| {r['model']} | {r['params']:,} | {_mean_std(r, metric, seeds)} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:,.0f} | {p} |{more}")
    return "\n".join(lines) + "\n"


def sweep_table(option: str, results: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """One table over a sweep of task option ``option`` (e.g. ``horizon``): ``results`` maps each
    value to its :func:`compare` result. Returns ``{"option", "metric", "seeds", "rows", "markdown"}``
    with one row per (value, model): the metric and report metrics (mean, std), params, and the
    recipe and look-back where recorded."""
    if not results:
        raise ValueError("sweep_table: no results")
    any_res = next(iter(results.values()))
    metric, seeds = any_res["metric"], any_res["seeds"]
    extras = [k for k in any_res.get("report_metrics", [])
              if all(k in r for res in results.values() for r in res["rows"])]
    rows = []
    for value, res in results.items():
        for r in res["rows"]:
            rows.append({option: value, **{k: v for k, v in r.items() if k != "p_vs_first"}})
    what = f"mean ± std, {seeds} seeds" if seeds > 1 else "1 seed"
    recipes = any("recipe" in r for r in rows)
    head = f"| {option} | model | {metric} ({what}) |" + "".join(f" {k} |" for k in extras)
    head += " params |" + (" look-back | recipe |" if recipes else "")
    lines = [head, "|---:|---|---:|" + "---:|" * len(extras) + "---:|" + ("---:|---|" if recipes else "")]
    for r in rows:
        line = f"| {r[option]} | {r['model']} | {_mean_std(r, metric, seeds)} |"
        line += "".join(f" {_mean_std(r, k, seeds)} |" for k in extras) + f" {r['params']:,} |"
        if recipes:
            line += f" {r.get('look_back', '-')} | {r.get('recipe', '-')} |"
        lines.append(line)
    return {"option": option, "metric": metric, "seeds": seeds, "report_metrics": extras, "rows": rows,
            "markdown": "\n".join(lines) + "\n"}


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
