"""Analytic FLOPs of MemoryFormer's Memory Layer and block against the dense layers they replace
(Ding et al., arXiv 2411.12992, Table 1).

Convention (the paper's; it reproduces Table 1): one multiply-add = 1 FLOP, so a dense
d_in x d_out linear costs d_in d_out per token and attention 2 s^2 d per sequence. A Memory Layer
costs d_in (hash) + K d_out (weighted sum of K table rows) per token, K = d_in / tau. Counts come
from :mod:`formers.nn.ffn.memory`; nothing is timed (FLOPs are not wall-clock: the table gather is
memory-bound). Writes ``benchmarks/results/memoryformer_flops.json`` and prints markdown tables.

    python benchmarks/memoryformer_flops.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from formers.atomic import write_json
from formers.nn.ffn.memory import (
    dense_block_flops, dense_linear_flops, memory_block_flops, memory_block_table_entries,
    memory_layer_flops,
)

# Pythia sizes of the paper (d, layers) with MemoryFormer's K = d / 8, and Table 1's numbers.
MODELS = [
    ("tiny (Pythia-70M)", 512, 6, 10.7, 4.7),
    ("small (Pythia-160M)", 768, 12, 20.9, 7.4),
    ("base (Pythia-410M)", 1024, 24, 34.4, 10.2),
]
LAYERS = [(512, 512, 8), (512, 640, 8), (640, 512, 10), (768, 768, 8), (1024, 1024, 8),
          (1024, 4096, 8), (4096, 1024, 8)]


def git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--tau", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memoryformer_flops.json"))
    args = ap.parse_args()
    s, tau = args.seq_len, args.tau

    layers = []
    for d_in, d_out, t in LAYERS:
        dense = dense_linear_flops(d_in, d_out, s)
        mem = memory_layer_flops(d_in, d_out, t, s)
        layers.append({"d_in": d_in, "d_out": d_out, "tau": t, "K": d_in // t, "tokens": s,
                       "dense_flops": dense, "memory_flops": mem, "ratio": dense / mem,
                       "dense_params": d_in * d_out, "memory_table_entries": (d_in // t) * 2 ** t * d_out})
    blocks = []
    for name, d, n_layers, paper_dense, paper_mf in MODELS:
        db, mb = dense_block_flops(d, s), memory_block_flops(d, s, tau)
        blocks.append({
            "model": name, "d_model": d, "n_layers": n_layers, "K": d // tau, "tau": tau, "seq_len": s,
            "dense_block_flops": db["total"], "dense_projection_flops": db["projections"],
            "memory_block_flops": mb["total"], "memory_projection_flops": mb["projections"],
            "memory_block_paper_formula": mb["paper_formula"], "attention_flops": mb["attention"],
            "paper_table1_dense_gflops": paper_dense, "paper_table1_memoryformer_gflops": paper_mf,
            "memory_block_ffn_table_entries": memory_block_table_entries(d, tau),
        })
    result = {
        "benchmark": "memoryformer_flops", "kind": "analytic (no timing)", "device": "analytic",
        "torch": torch.__version__, "git_commit": git_commit(),
        "convention": "1 multiply-add = 1 FLOP (the paper's Table 1 convention)",
        "layers": layers, "blocks": blocks,
    }
    write_json(args.out, result)

    print(f"Memory Layer vs dense linear, {s} tokens (GFLOPs)\n")
    print("| d_in -> d_out | tau | K | dense | memory | dense / memory |")
    print("|---|---|---|---|---|---|")
    for r in layers:
        print(f"| {r['d_in']} -> {r['d_out']} | {r['tau']} | {r['K']} | {r['dense_flops'] / 1e9:.3f} | "
              f"{r['memory_flops'] / 1e9:.4f} | {r['ratio']:.1f}x |")
    print(f"\nOne block at seq {s} (GFLOPs; paper Table 1 in brackets)\n")
    print("| model | dense block | dense FC only | MemoryFormer block (exact) | MF paper formula "
          "2s^2d + 6Ksd | MF FC-replacements only |")
    print("|---|---|---|---|---|---|")
    for b in blocks:
        print(f"| {b['model']} | {b['dense_block_flops'] / 1e9:.2f} [{b['paper_table1_dense_gflops']}] | "
              f"{b['dense_projection_flops'] / 1e9:.2f} | {b['memory_block_flops'] / 1e9:.2f} | "
              f"{b['memory_block_paper_formula'] / 1e9:.2f} [{b['paper_table1_memoryformer_gflops']}] | "
              f"{b['memory_projection_flops'] / 1e9:.3f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
