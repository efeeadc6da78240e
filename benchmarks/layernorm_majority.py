"""The LayerNorm paper's majority experiment at CPU size (Brody, Alon, Yahav, "On the Expressivity
Role of LayerNorm in Transformers' Attention", arXiv 2305.02582, §3 Fig. 2 and §4 Tables 1-2).

Trains the ``majority`` task with LayerNorm (``baseline``: projection + scaling), without the
projection (``ln-no-projection``: the paper's WITHOUT_PROJ arm) and without the scaling
(``ln-no-scale``), over a few seeds, and records per evaluation: val_acc, val_loss, the query angle
to the all-ones vector and the unselectable-key count of the class keys after the attention's
norm; at the end also the count on the raw embeddings (before the norm).

    .venv/bin/python benchmarks/layernorm_majority.py [--seeds 3 --steps 600 --lr 1e-3 --batch 128]

Writes benchmarks/results/layernorm_majority.json (keyed by device, torch version, commit).
CPU: about 20 s per run with 1 thread. On a GPU pass --device cuda (and e.g. --batch 6000
--steps 5000 for the paper's budget).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import formers.synthetic  # noqa: F401
from formers.atomic import write_json
from formers.nn.layernorm_geometry import unselectable_keys
from formers.train.task import make_task
from formers.train.trainer import Trainer, git_commit, read_metrics

ARMS = ("baseline", "ln-no-projection", "ln-no-scale")


def run(arm: str, seed: int, args, tmp: Path) -> dict:
    torch.set_num_threads(args.threads)
    task = make_task("majority", seed, {"val_size": 1000})
    tc = task.default_train().replace(max_steps=args.steps, batch_size=args.batch, lr=args.lr,
                                      eval_every=args.eval_every, seed=seed, quiet=True, device=args.device)
    t0 = time.time()
    tr = Trainer(task, task.model_config(arm), tc, tmp / f"{arm}-{seed}")
    summary = tr.fit()
    with torch.no_grad():
        raw = unselectable_keys(tr.model.embed.tok.weight.float().cpu()).count
    curve = [{k: r[k] for k in ("step", "val_acc", "val_loss", "query_angle", "unselectable_keys") if k in r}
             for r in read_metrics(tmp / f"{arm}-{seed}" / "metrics.jsonl") if "val_acc" in r]
    return {"arm": arm, "seed": seed, "val_acc": summary["val_acc"], "val_loss": summary["val_loss"],
            "query_angle": summary.get("query_angle"), "unselectable_after_norm": summary.get("unselectable_keys"),
            "unselectable_raw_embeddings": raw, "wall_s": time.time() - t0, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (one per arm and seed)")
    p.add_argument("--out", default="benchmarks/results/layernorm_majority.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    jobs = [(arm, seed) for arm in args.arms.split(",") for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory() as d:
        if args.jobs > 1:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
                runs = list(pool.map(run, *zip(*jobs), [args] * len(jobs), [Path(d)] * len(jobs)))
        else:
            runs = [run(arm, seed, args, Path(d)) for arm, seed in jobs]
    for r in runs:
        print(f"{r['arm']:18s} seed {r['seed']}: acc {r['val_acc']:.3f} loss {r['val_loss']:.3f} "
              f"angle {r['query_angle']:.1f} unselectable after/raw "
              f"{r['unselectable_after_norm']}/{r['unselectable_raw_embeddings']} ({r['wall_s']:.0f}s)",
              file=sys.stderr)
    table = {}
    for arm in args.arms.split(","):
        rs = [r for r in runs if r["arm"] == arm]
        agg = {}
        for k in ("val_acc", "val_loss", "query_angle", "unselectable_after_norm", "unselectable_raw_embeddings"):
            vals = [float(r[k]) for r in rs]
            agg[k] = statistics.mean(vals)
            agg[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        # mean val_loss curve over seeds
        steps = [c["step"] for c in rs[0]["curve"]]
        agg["val_loss_curve"] = {s: statistics.mean(r["curve"][i]["val_loss"] for r in rs) for i, s in enumerate(steps)}
        agg["val_acc_curve"] = {s: statistics.mean(r["curve"][i]["val_acc"] for r in rs) for i, s in enumerate(steps)}
        table[arm] = agg
    result = {"benchmark": "layernorm_majority", "paper": "arXiv 2305.02582 §3 Fig. 2, §4",
              "device": args.device, "torch": torch.__version__, "threads": args.threads,
              "commit": git_commit(), "settings": {k: v for k, v in vars(args).items() if k != "out"}, "n_classes": 20, "summary": table, "runs": runs}
    write_json(args.out, result)
    for arm, a in table.items():
        print(f"{arm:18s} acc {a['val_acc']:.3f}±{a['val_acc_std']:.3f}  loss {a['val_loss']:.3f}  "
              f"angle {a['query_angle']:.1f}  unselectable after {a['unselectable_after_norm']:.1f} "
              f"raw {a['unselectable_raw_embeddings']:.1f}")


if __name__ == "__main__":
    main()
