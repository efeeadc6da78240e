"""Manual CUDA smoke test of the trainer (not collected by pytest; CI has no GPU).

    python tests/train/_gpu_smoke.py OUT_DIR

Checks on cuda: bf16 autocast + fused AdamW, checkpoint / resume, torch.compile, and (with 2+ GPUs)
torchrun DDP over nccl against one process on the same global batches.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _train_synth import SynthTask, crashing, tiny_model_config, tiny_train_config  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from formers.train.trainer import Trainer, read_metrics  # noqa: E402


def main(out: Path) -> None:
    assert torch.cuda.is_available()
    mc = tiny_model_config(d_model=64, n_heads=4, dropout=0.0)
    tc = tiny_train_config(max_steps=20, batch_size=8, eval_every=5, checkpoint_every=5, device="auto")
    t = Trainer(SynthTask(), mc, tc, out / "bf16")
    assert t.optimizer.param_groups[0].get("fused"), t.optimizer.param_groups[0]
    s = t.fit()
    print("bf16:", json.dumps({k: s[k] for k in ("val_loss", "train_loss", "dtype", "device", "peak_mem_mb", "tokens_per_s")}))
    assert s["dtype"] == "bf16" and s["device"].startswith("cuda")

    try:
        Trainer(crashing(SynthTask(), crash_at=12), mc, tc, out / "resume").fit()
    except KeyboardInterrupt:
        pass
    s2 = Trainer(SynthTask(), mc, tc, out / "resume", resume=True).fit()
    a, b = read_metrics(out / "bf16" / "metrics.jsonl"), read_metrics(out / "resume" / "metrics.jsonl")
    diff = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a, b))
    print("resume on cuda: steps", [r["step"] for r in b][-3:], "max |dloss| vs uninterrupted", diff)
    assert len(b) == 20 and diff < 1e-2

    s3 = Trainer(SynthTask(), mc, tc.replace(compile=True, max_steps=10), out / "compiled").fit()
    print("compiled:", s3["val_loss"], s3["tokens_per_s"])

    if torch.cuda.device_count() >= 2:
        env = {**os.environ}
        env.pop("WORLD_SIZE", None)
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            str(HERE / "_train_ddp_worker.py"), str(out / "ddp"), "cuda"],
                           env=env, capture_output=True, text=True, timeout=300)
        print(p.stdout[-2000:], p.stderr[-4000:])
        assert p.returncode == 0
        Trainer(SynthTask(seed=0), tiny_model_config(dropout=0.0, bias=False),
                tiny_train_config(max_steps=4, batch_size=4, grad_accum=2, eval_every=2, device="cuda",
                                  dtype="fp32"), out / "single").fit()
        wd, ws = load_file(out / "ddp/ckpt/model.safetensors"), load_file(out / "single/ckpt/model.safetensors")
        err = max(float((wd[k] - ws[k]).abs().max()) for k in wd)
        print("ddp nccl vs single: max |dw| =", err)
        assert err < 1e-5
    print("GPU SMOKE OK")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
