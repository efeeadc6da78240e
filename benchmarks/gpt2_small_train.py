"""Training throughput of a GPT-2-small-sized model on the ``lm`` task (the issue-2 record).

Config: 12 layers, d_model 768, 12 heads, seq_len 1024, batch 16 x 1024 tokens, byte vocabulary
(259, not padded). Runs the real trainer (``formers.train.Trainer``) in the same process for each
setting given (default: eager bf16 and compiled bf16 on CUDA; fp32 eager on CPU with a tiny
budget), and writes one JSON file to ``benchmarks/results/`` keyed by device, torch version and
git commit. Tokens/s is computed from the median step time, so warm-up and compilation steps are
left out; MFU counts 6 * params + 12 * layers * d_model * seq_len FLOPs per token (the nanoGPT
formula for this baseline) against the datasheet dense bf16 peak given by ``--peak-tflops``.

    python benchmarks/gpt2_small_train.py --steps 60            # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import formers.nn  # noqa: F401  (registers parts)
import formers.text  # noqa: F401
from formers.atomic import write_json
from formers.train.config import TrainConfig
from formers.train.task import make_task
from formers.train.trainer import Trainer, git_commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--settings", default=None, help="comma list of eager-bf16, compile-bf16, eager-fp32, compile-fp32")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM datasheet)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--commit", default=None, help="git commit to record (default: read from .git)")
    a = ap.parse_args()

    cuda = torch.cuda.is_available()
    settings = (a.settings or ("eager-bf16,compile-bf16" if cuda else "eager-fp32")).split(",")
    task = make_task("lm", 0, {"seq_len": a.seq_len, "d_model": a.d_model, "n_layers": a.layers,
                               "n_heads": a.heads})
    mcfg = task.model_config("baseline")
    results = []
    for s in settings:
        mode, dtype = s.split("-")
        tcfg = TrainConfig(max_steps=a.steps, batch_size=a.batch_size, lr=6e-4, warmup_steps=10,
                           eval_every=a.steps, eval_batches=2, device="cuda" if cuda else "cpu",
                           dtype=dtype, compile=mode == "compile", quiet=True)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summ = Trainer(task, mcfg, tcfg, Path(tmp) / s).fit()
            wall = time.perf_counter() - t0
        tokens_step = a.batch_size * a.seq_len
        tps = tokens_step / summ["step_time_median_s"]
        flops_tok = 6 * summ["params"] + 12 * a.layers * a.d_model * a.seq_len
        row = {"setting": s, "tokens_per_s": tps, "step_time_median_s": summ["step_time_median_s"],
               "mfu_vs_peak": tps * flops_tok / (a.peak_tflops * 1e12), "params": summ["params"],
               "peak_mem_mb": summ["peak_mem_mb"], "final_train_loss": summ["train_loss"],
               "val_bpb": summ["val_bpb"], "wall_s_incl_compile": wall}
        results.append(row)
        print(json.dumps(row))
    base = results[0]["tokens_per_s"]
    for r in results:
        r["ratio_vs_first"] = r["tokens_per_s"] / base
    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
    record = {
        "benchmark": "gpt2_small_train", "device": dev, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "commit": a.commit or git_commit(), "steps": a.steps,
        "batch_size": a.batch_size, "seq_len": a.seq_len, "layers": a.layers, "d_model": a.d_model,
        "heads": a.heads, "vocab_size": mcfg.vocab_size, "peak_tflops": a.peak_tflops,
        "corpus": task.describe()["corpus"], "results": results,
    }
    name = f"gpt2_small_train-{dev.replace(' ', '_')}-torch{torch.__version__.split('+')[0]}.json"
    write_json(Path(a.out) / name, record)
    print("wrote", Path(a.out) / name)


if __name__ == "__main__":
    main()
