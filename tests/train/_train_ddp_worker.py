"""Run by torchrun in test_train_ddp.py: train the synthetic task on every rank."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from _train_synth import SynthTask, tiny_model_config, tiny_train_config  # noqa: E402

from formers.train.trainer import Trainer  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    device = sys.argv[2] if len(sys.argv) > 2 else "cpu"  # "cuda": nccl, one GPU per rank
    summary = Trainer(SynthTask(seed=0), tiny_model_config(dropout=0.0, bias=False),
                      tiny_train_config(max_steps=4, batch_size=4, grad_accum=2, eval_every=2, device=device,
                                        dtype="fp32"), out).fit()
    os.write(1, f"RANK_DONE {summary['world_size']}\n".encode())  # one write: no interleaving
