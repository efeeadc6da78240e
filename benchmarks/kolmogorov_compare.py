"""FactFormer vs FNO vs full softmax attention on the generated Kolmogorov-flow set (FactFormer,
arXiv 2305.17560, §4 KM2D at reduced size): one-step and 16-frame rollout relative L2.

Runs ``formers compare kolmogorov`` (same data, budget and seeds for every model; each run in its
own process) and copies its summary, with the persistence floor (repeat the last frame), into
benchmarks/results/kolmogorov_compare-<device>.json / .md / .png.

    .venv/bin/python benchmarks/kolmogorov_compare.py --device cuda            # GPU (~4 min)
    .venv/bin/python benchmarks/kolmogorov_compare.py --smoke                  # CPU check (~1 min)
    .venv/bin/python benchmarks/kolmogorov_compare.py --steps 150 --opt grid=32 forcing_wavenumber=4  # CPU

Data: generated on first use into --data (default: the formers data directory) by the project's
pseudo-spectral solver at the task's defaults (64^2, 24/4/8 train/val/test trajectories of 80
frames at 1/16 s after a 2 s burn-in, Re 1000, forcing -8 cos 8y, drag 0.1).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml

import formers.sciml  # noqa: F401  (registers the task and the models)
from formers.bench.compare import compare, table_markdown
from formers.train.task import make_task
from formers.train.trainer import git_commit
from pde_bench import device_tag, write_all

SMOKE = {"grid": 16, "n_train": 4, "n_val": 1, "n_test": 1, "n_frames": 40, "t_in": 4, "t_out": 2,
         "rollout": 8, "burn_in": 0.5, "forcing_wavenumber": 4, "curriculum_length": 10,
         "pushforward_after": 20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="16^2 grid, 30 steps: a quick CPU check")
    p.add_argument("--models", default="factformer,fno,softmax")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1500; smoke 30)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default=None, help="data directory (default: the formers data directory)")
    p.add_argument("--opt", nargs="*", default=[], help="task options key=value (e.g. grid=32 forcing_wavenumber=4)")
    p.add_argument("--work", type=Path, default=Path("runs/kolmogorov_compare"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    options = dict(SMOKE) if args.smoke else {}
    for item in args.opt:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    if args.data:
        options["data"] = args.data
    steps = args.steps or (30 if args.smoke else 1500)
    task = make_task("kolmogorov", 0, options)
    tcfg = task.default_train().replace(
        max_steps=steps, batch_size=args.batch_size, device=args.device, quiet=True,
        eval_every=max(steps // 3, 1), checkpoint_every=max(steps // 3, 1))
    if not args.smoke:  # scale the curriculum / pushforward schedule to the budget (reference: 6.6% / 8.8%)
        options.setdefault("curriculum_length", max(steps // 5, 1))
        options.setdefault("pushforward_after", max(steps // 4, 1))
    models = [m.strip() for m in args.models.split(",")]
    tag = device_tag(args.device, args.smoke) + (f"-{options['grid']}" if "grid" in options and not args.smoke else "")
    work = args.work / tag
    result = compare("kolmogorov", models, args.seeds, tcfg, work, options)
    floor = make_task("kolmogorov", 0, options).persistence_metrics()
    result.update({"benchmark": "kolmogorov_compare", "device": tag, "torch": torch.__version__,
                   "commit": git_commit(), "persistence": floor, "task_options": options})
    base = args.out / f"kolmogorov_compare-{tag}"
    write_all(base, result, f"Kolmogorov flow ({tag}, {steps} steps, batch {args.batch_size}): relative L2 "
              f"(lower is better); persistence (repeat the last frame): one-step "
              f"{floor['test_one_step_rel_l2']:.4f}, rollout {floor['test_rollout_rel_l2']:.4f}",
              table_markdown(result),
              (lambda png: shutil.copyfile(work / "compare.png", png)) if (work / "compare.png").is_file() else None)

if __name__ == "__main__":
    main()
