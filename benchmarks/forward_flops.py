"""Forward FLOPs per token of task model variants, counted from the operations a forward pass
actually runs (``torch.utils.flop_counter.FlopCounterMode``: matmuls, attention; a routed MoE
counts only the experts its tokens visit), plus MemoryFormer's table lookups, which are not
matmuls and are counted in the paper's convention (d_in for the hash + K d_out accumulations per
token; :func:`formers.nn.ffn.memory.memory_layer_flops`). Multiply-adds count 2 FLOPs. Attention
runs on its reference path for the count (the counter does not see SDPA's CPU kernels), so its
scores count as the dense seq_len^2 work (a causal flash kernel skips about half of it).

Used for the ``efficiency`` experiment of ``paper_effects.py`` (its models at its size):

    python benchmarks/forward_flops.py --out benchmarks/results/forward_flops-efficiency.json

Writes the JSON (commit, sizes, per model: params, FLOPs per token, ratio to the first model).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from formers.atomic import write_json
from formers.nn import build_model, count_params
from formers.nn.ffn.memory import MemoryLayer, memory_layer_flops
from formers.train.task import make_task
from formers.train.trainer import git_commit


def flops_per_token(model: torch.nn.Module, vocab: int, seq_len: int) -> dict[str, float]:
    ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(0))
    lookups, hashed_once = [], set()

    def hook(mod: MemoryLayer, args, out) -> None:
        x = args[0]
        tokens = x.numel() // x.shape[-1]
        key = (id(mod.shared), x.data_ptr())  # layers sharing one hash (memory Q/K/V) pay it once
        hashed = mod.shared is None or key not in hashed_once
        hashed_once.add(key)
        lookups.append(2 * memory_layer_flops(mod.in_features, mod.out_features, mod.tau, tokens, hashed))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, MemoryLayer)]
    for m in model.modules():  # the counter does not see SDPA's CPU kernels; the reference path's
        if isinstance(getattr(m, "backend", None), str):  # matmuls are the same dense n^2 work
            m.backend = "reference"
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(ids)
    for h in handles:
        h.remove()
    counted = fc.get_total_flops()
    return {"counted": counted / seq_len, "lookups": sum(lookups) / seq_len,
            "total": (counted + sum(lookups)) / seq_len}


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
    for name in a.models.split(","):
        cfg = task.model_config(name)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        f = flops_per_token(model, cfg.vocab_size, options["seq_len"])
        rows.append({"model": name, "params": count_params(model), "flops_per_token": f["total"],
                     "matmul_flops_per_token": f["counted"], "lookup_flops_per_token": f["lookups"]})
    for r in rows:
        r["ratio_to_first"] = r["flops_per_token"] / rows[0]["flops_per_token"]
    write_json(a.out, {"benchmark": "forward_flops", "task": a.task, "options": options,
                       "commit": git_commit(), "torch": torch.__version__, "rows": rows})
    print("| model | params | forward FLOPs / token | ratio |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['flops_per_token'] / 1e6:.2f} M | {r['ratio_to_first']:.2f}x |")


if __name__ == "__main__":
    main()
