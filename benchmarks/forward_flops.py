"""Forward FLOPs per token of task model variants, from the analytic counts each part declares
(:func:`formers.bench.flops.forward_flops`; conventions in that module's docstring: matmul FLOPs,
2 per multiply-add, dense attention over the full seq_len^2 square, a routed MoE counting only the
experts its tokens use, MemoryFormer's table lookups in the paper's operation count). The models
are built on the meta device: nothing is allocated or run.

Used for the ``efficiency`` experiment of ``paper_effects.py`` (its models at its size):

    python benchmarks/forward_flops.py --out benchmarks/results/forward_flops-efficiency.json

Writes the JSON (commit, sizes, per model: params, FLOPs per token, the causal-pairs count beside
it, ratio to the first model).
"""

from __future__ import annotations

import argparse
import json

import torch

from formers.atomic import write_json
from formers.bench.flops import forward_flops
from formers.nn import build_model, count_params
from formers.train.task import make_task
from formers.train.trainer import git_commit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="lm")
    p.add_argument("--models", default="baseline,memoryformer,moe,brainformer,lowrank")
    p.add_argument("--options", default='{"seq_len": 256, "d_model": 256, "n_layers": 6, "n_heads": 4}',
                   help="task options as JSON (default: the efficiency experiment's)")
    p.add_argument("--out", default="benchmarks/results/forward_flops-efficiency.json")
    a = p.parse_args()
    import formers.nn  # noqa: F401  (registers)
    import formers.text  # noqa: F401

    options = json.loads(a.options)
    task = make_task(a.task, 0, options)
    rows = []
    n = options["seq_len"]
    for name in a.models.split(","):
        cfg = task.model_config(name)
        with torch.device("meta"):
            model = build_model(cfg)
        rows.append({"model": name, "params": count_params(model),
                     "flops_per_token": forward_flops(model, n) / n,
                     "flops_per_token_causal_pairs": forward_flops(model, n, causal=True) / n})
    for r in rows:
        r["ratio_to_first"] = r["flops_per_token"] / rows[0]["flops_per_token"]
    write_json(a.out, {"benchmark": "forward_flops", "task": a.task, "options": options,
                       "method": "analytic (formers.bench.flops.forward_flops, full-square attention)",
                       "commit": git_commit(), "torch": torch.__version__, "rows": rows})
    print("| model | params | forward FLOPs / token | ratio |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['flops_per_token'] / 1e6:.2f} M | {r['ratio_to_first']:.2f}x |")


if __name__ == "__main__":
    main()
