"""The PINNsFormer table (arXiv 2307.11833, Table 2; the reference notebooks' printed numbers):
PINN, QRes, FLS and PINNsFormer on convection, reaction and wave; rMAE and rRMSE side by side with
the paper's.

Every run is ``formers train pinn-PDE --model M`` through the library's Trainer (L-BFGS with the
strong-Wolfe line search, 500 steps; 1000 for wave; the paper's collocation and model sizes). Runs
execute in parallel worker processes (``--jobs``; one H200 holds many of these small models) and
train in chunks that end with a checkpoint, so a time limit (``--time-limit``) stops them cleanly
and the same command continues them from their checkpoints (``runs/pinn_table/PDE/MODEL``). Results
are read back from the run folders into ``benchmarks/results/pinn_table-DEVICE.json`` / ``.md`` /
``.png`` (rMAE curves) / ``-fields.png`` (predictions beside the exact solution), written atomically
after every call; unfinished runs are marked with their step count.

    # one H200, about 6 minutes (re-run the same command to continue unfinished runs):
    python benchmarks/pinn_table.py --device cuda --jobs 10 --time-limit 330
    # this CPU, the reaction pair only, resumable in chunks of under 8 minutes:
    nice .venv/bin/python benchmarks/pinn_table.py --device cpu --pdes reaction --models pinnsformer,pinn --jobs 2 --time-limit 420
    # this CPU, a reduced table (grid 21, width 64, 100 steps) that still shows the effect:
    nice .venv/bin/python benchmarks/pinn_table.py --device cpu --pdes reaction --grid 21 --width 64 --steps 100 --jobs 2 --time-limit 420
    # plumbing check: grid 9, width 16, 3 steps each, results under runs/
    .venv/bin/python benchmarks/pinn_table.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from formers.atomic import atomic_write, write_json, write_text  # noqa: E402

MODELS = ("pinn", "qres", "fls", "pinnsformer")
PDES = ("reaction", "convection", "wave")
# the reference notebooks' printed outputs (rMAE, rRMSE), as in ../shared/papers/sciml-timeseries.md §4(c)
PAPER = {
    "convection": {"pinn": (0.779, 0.840), "qres": (0.779, 0.842), "fls": (0.695, 0.771), "pinnsformer": (0.023, 0.027)},
    "reaction": {"pinn": (0.982, 0.981), "qres": (0.984, 0.985), "fls": (0.979, 0.977), "pinnsformer": (0.015, 0.030)},
    "wave": {"pinn": (0.326, 0.335), "pinnsformer": (0.270, 0.283)},
}


def model_sizes(model: str, width: int, smoke: bool) -> dict | None:
    """Config overrides of a reduced run: ``width`` for every hidden width (PINNsFormer's d_ff and
    d_hidden; d_model 8 in a smoke run); None = the paper's sizes."""
    if not width:
        return None
    if model == "pinnsformer":
        return {"d_ff": width, "d_hidden": width, **({"d_model": 8} if smoke else {})}
    return {"d_hidden": width}


def _state_step(run: Path) -> int:
    from formers.train.checkpoint import find_checkpoint

    ckpt = find_checkpoint(run)
    return json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else 0


def train_run(*args) -> dict:
    """:func:`_train_run` in a worker; an exception becomes an ``error`` entry, so one failed run
    (out of memory, diverged) leaves the others and the table."""
    try:
        return _train_run(*args)
    except Exception as e:  # reported in the table; the run folder keeps its last checkpoint
        return {"pde": args[0], "model": args[1], "steps": _state_step(Path(args[2])), "target": args[4],
                "error": f"{type(e).__name__}: {e}"}


def _train_run(pde: str, model: str, run: str, device: str, target: int, deadline: float,
               grid: int, width: int, smoke: bool, seed: int) -> dict:
    """Train (pde, model) towards ``target`` L-BFGS steps in checkpointed chunks until ``deadline``
    (time.time()); returns the last summary (or the state when no step fitted)."""
    import torch

    torch.set_num_threads(1)
    from formers.sciml.pde import pinn_task  # noqa: F401
    from formers.train.task import configure_model, make_task
    from formers.train.trainer import Trainer

    run_dir = Path(run)
    task = make_task(f"pinn-{pde}", seed, {"grid": grid} if grid else None)
    cfg = configure_model(task, model, model_sizes(model, width, smoke))
    step, summary, step_s = _state_step(run_dir), None, None
    while step < target:
        left = deadline - time.time()
        if step_s is None:  # first chunk: a few steps to measure the step time
            n = 5
        else:
            n = int(min(left, 120.0) / step_s)  # about two minutes per chunk, never past the deadline
        n = min(n, target - step)
        if n < 1 or left <= 0:
            break
        tcfg = task.default_train().replace(max_steps=step + n, eval_every=n, checkpoint_every=n, quiet=True,
                                            device=device, seed=seed)
        t0 = time.time()
        summary = Trainer(task, cfg, tcfg, run_dir, resume=run_dir.exists()).fit()
        step_s = (time.time() - t0) / n
        step = step + n
    if summary is None and (run_dir / "summary.json").is_file():  # nothing left to train: the last summary
        summary = json.loads((run_dir / "summary.json").read_text())
    return {"pde": pde, "model": model, "steps": step, "target": target, **(summary or {})}


def collect(runs: Path, pdes, models, targets) -> list[dict]:
    """Read every run folder back: final metrics, steps, curves of rMAE against the step."""
    from formers.train.trainer import read_metrics

    rows = []
    for pde in pdes:
        for model in models:
            run = runs / pde / model
            summary_path = run / "summary.json"
            if not summary_path.is_file():
                continue
            s = json.loads(summary_path.read_text())
            recs = read_metrics(run / "metrics.jsonl")
            curve = [(r["step"], r["rMAE"]) for r in recs if "rMAE" in r]
            rows.append({
                "pde": pde, "model": model, "steps": _state_step(run), "target": targets[pde],
                "finished": _state_step(run) >= targets[pde], "rMAE": s.get("rMAE"), "rRMSE": s.get("rRMSE"),
                "train_loss": s.get("train_loss"), "params": s.get("params"),
                "step_time_median_s": s.get("step_time_median_s"),
                "paper_rMAE": PAPER.get(pde, {}).get(model, (None, None))[0],
                "paper_rRMSE": PAPER.get(pde, {}).get(model, (None, None))[1],
                "curve": curve,
                "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
            })
    return rows


def table_markdown(rows: list[dict]) -> str:
    def f(v):
        return "–" if v is None else f"{v:.3f}"

    lines = ["| PDE | model | params | L-BFGS steps | rMAE | rRMSE | paper rMAE | paper rRMSE |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = f"{r['steps']}" + ("" if r["finished"] else f" of {r['target']} (unfinished)")
        lines.append(f"| {r['pde']} | {r['model']} | {r['params']:,} | {steps} | {f(r['rMAE'])} | "
                     f"{f(r['rRMSE'])} | {f(r['paper_rMAE'])} | {f(r['paper_rRMSE'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pdes = list(dict.fromkeys(r["pde"] for r in rows))
    fig = Figure(figsize=(5 * max(1, len(pdes)), 4), dpi=110)
    FigureCanvasAgg(fig)
    for i, pde in enumerate(pdes):
        ax = fig.add_subplot(1, len(pdes), i + 1)
        for j, r in enumerate(x for x in rows if x["pde"] == pde):
            if r["curve"]:
                line, = ax.plot(*zip(*r["curve"]), "o-", ms=3, label=r["model"])
                if r["paper_rMAE"] is not None:
                    ax.axhline(r["paper_rMAE"], color=line.get_color(), ls="--", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{pde} (dashed: paper)")
        ax.set_xlabel("L-BFGS step")
        ax.set_ylabel("rMAE (101 x 101 test grid)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_fields(rows: list[dict], path: Path) -> None:
    """One row per PDE: the exact solution on the 101 x 101 test grid, then each model's prediction
    (its latest checkpoint), x across and t up."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from formers.sciml.pde.pinn_problems import get_problem
    from formers.sciml.pde.pinnsformer import load_pinn, pseudo_sequence
    from formers.train.checkpoint import find_checkpoint

    pdes = list(dict.fromkeys(r["pde"] for r in rows))
    cols = 1 + max(sum(r["pde"] == p for r in rows) for p in pdes)
    fig = Figure(figsize=(2.6 * cols, 2.4 * len(pdes)), dpi=100)
    FigureCanvasAgg(fig)
    for i, pde in enumerate(pdes):
        prob = get_problem(pde)
        pts = prob.test_points()
        n, ext = prob.test_grid, (prob.lower[0], prob.upper[0], prob.lower[1], prob.upper[1])
        panels = [("exact", prob.exact(pts[:, 0], pts[:, 1]))]
        for r in (x for x in rows if x["pde"] == pde):
            ckpt = find_checkpoint(ROOT / r["run"])  # relative to the repository, or absolute
            if ckpt is not None:
                model = load_pinn(ckpt)
                with torch.no_grad():
                    panels.append((f"{r['model']} ({r['rMAE']:.3f})", model(pseudo_sequence(model, pts))[:, 0, 0]))
        lo, hi = float(panels[0][1].min()), float(panels[0][1].max())
        for j, (title, u) in enumerate(panels):
            ax = fig.add_subplot(len(pdes), cols, i * cols + j + 1)
            ax.imshow(u.reshape(n, n).numpy(), origin="lower", extent=ext, aspect="auto", vmin=lo, vmax=hi,
                      cmap="viridis")
            ax.set_title(f"{pde}: {title}", fontsize=8)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--pdes", default=",".join(PDES))
    ap.add_argument("--models", default="pinn,pinnsformer,qres,fls")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (worker processes)")
    ap.add_argument("--time-limit", type=float, default=330.0, help="seconds for this call (all runs)")
    ap.add_argument("--steps", type=int, default=0, help="L-BFGS steps per run (0: the paper's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=None, help="run folders (default runs/pinn_table/TAG)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--grid", type=int, default=0, help="collocation points per side for every model (0: the paper's)")
    ap.add_argument("--width", type=int, default=0, help="hidden width of every model (0: the paper's)")
    ap.add_argument("--smoke", action="store_true", help="grid 9, width 16, 3 steps, on CPU")
    a = ap.parse_args(argv)
    pdes = [p for p in a.pdes.split(",") if p]
    models = [m for m in a.models.split(",") if m]
    bad = [p for p in pdes if p not in PDES] + [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"pinn_table: unknown PDE/model {bad}; PDEs {list(PDES)}, models {list(MODELS)}")
    if a.jobs < 1 or a.time_limit <= 0 or a.steps < 0:
        raise SystemExit("pinn_table: --jobs must be >= 1, --time-limit > 0, --steps >= 0")
    from formers.sciml.pde.pinn_problems import PROBLEMS

    device = "cpu" if a.smoke else a.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("pinn_table: --device cuda but CUDA is not available (use --device cpu)")
    if a.smoke:
        a.grid, a.width, a.steps = a.grid or 9, a.width or 16, a.steps or 3
    targets = {p: a.steps or PROBLEMS[p].steps for p in PDES}
    import torch

    tag = "smoke" if a.smoke else (torch.cuda.get_device_name(0).replace(" ", "_") if device.startswith("cuda")
                                   else "cpu")
    tag += (f"-grid{a.grid}" if a.grid else "") + (f"-width{a.width}" if a.width else "")
    runs = a.runs or ROOT / "runs" / "pinn_table" / tag
    out = a.out or (runs if a.smoke else ROOT / "benchmarks" / "results")
    deadline = time.time() + a.time_limit
    # the paper has no QRes / FLS numbers for wave: those runs are left out
    jobs = [(p, m, str(runs / p / m), device, targets[p], deadline, a.grid, a.width, a.smoke, a.seed)
            for p in pdes for m in models
            if a.smoke or m in PAPER[p]]
    t0, errors = time.time(), []
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for res in pool.starmap(train_run, jobs, chunksize=1):
            print(f"{res['pde']:>10} {res['model']:>11}: {res['steps']}/{res['target']} steps, "
                  f"rMAE {res.get('rMAE')}" + (f", ERROR {res['error']}" if "error" in res else ""), flush=True)
            errors += ["error" in res]
    # every run folder present, not only this call's: a rerun of a subset keeps the whole table
    rows = collect(runs, PDES, MODELS, targets)
    from formers.train.trainer import git_commit

    result = {"benchmark": "pinn_table", "paper": "arXiv 2307.11833 Table 2 / reference notebooks",
              "device": tag, "torch": torch.__version__, "python": platform.python_version(),
              "git_commit": git_commit(), "jobs": a.jobs, "time_limit_s": a.time_limit,
              "grid": a.grid or "paper (51 PINNsFormer, 101 baselines)", "width": a.width or "paper",
              "call_wall_s": time.time() - t0, "seed": a.seed,
              "command": " ".join(["python", "benchmarks/pinn_table.py", *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows}
    stem = f"pinn_table-{tag}"
    write_json(out / f"{stem}.json", result)
    write_text(out / f"{stem}.md", table_markdown(rows))
    plot(rows, out / f"{stem}.png")
    plot_fields(rows, out / f"{stem}-fields.png")
    print(table_markdown(rows))
    print(f"written: {out / stem}.json / .md / .png  ({time.time() - t0:.0f} s)")
    return 0 if not any(errors) and all(math.isfinite(r["rMAE"] or math.nan) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
