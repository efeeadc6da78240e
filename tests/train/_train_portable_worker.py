"""Run by torchrun (2 ranks, gloo) in test_train_portable.py: the distributed runs whose
checkpoints the test resumes at another world size or mode. One process group for all runs."""

import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from _train_synth import SynthTask, crashing, tiny_model_config, tiny_train_config  # noqa: E402

from formers.train.trainer import Trainer  # noqa: E402

STEPS, HALF = 4, 2


def train(out: Path, parallel: str, crash: bool = False, resume: bool = False, **kw) -> None:
    task = SynthTask(seed=0)
    if crash:
        task = crashing(task, crash_at=HALF)
    kw = {"dtype": "fp32", **kw}
    cfg = tiny_train_config(max_steps=STEPS, batch_size=4, grad_accum=2, eval_every=2,
                            checkpoint_every=HALF, parallel=parallel, device=DEVICE, **kw)
    try:
        Trainer(task, tiny_model_config(dropout=0.0, bias=False), cfg, out, resume=resume).fit()
    except KeyboardInterrupt:
        assert crash
    dist.barrier()


DEVICE = sys.argv[2] if len(sys.argv) > 2 else "cpu"  # "cuda": nccl, one GPU per rank

if __name__ == "__main__":
    root = Path(sys.argv[1])
    if DEVICE == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # one group, reused by every Trainer below (they do not destroy it)
    dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    rank = dist.get_rank()
    train(root / "ddp_full", "ddp")
    train(root / "ddp_half", "ddp", crash=True)
    train(root / "w1to2", "ddp", resume=True)             # the test's world-1 run at step 2
    train(root / "fsdp_full", "fsdp", early_stopping=100)  # best/ is gathered and reloaded
    train(root / "fsdp_half", "fsdp", crash=True)
    train(root / "fsdp_bf16", "fsdp", dtype="bf16")  # bf16 weight gathers, fp32 reduce-scatter
    if rank == 0:
        shutil.copytree(root / "ddp_half", root / "ddp_to_fsdp")
    dist.barrier()
    train(root / "ddp_to_fsdp", "fsdp", resume=True)
    dist.destroy_process_group()
    os.write(1, f"RANK_DONE {rank}\n".encode())  # one write: no interleaving
