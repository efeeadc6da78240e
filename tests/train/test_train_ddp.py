"""DDP on CPU (gloo): two torchrun ranks on half the rows each == one process on the whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from formers.train.trainer import Trainer, read_metrics

from _train_synth import SynthTask, tiny_model_config, tiny_train_config

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_ddp_matches_single_process(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "_train_ddp_worker.py"), str(ddp_out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("RANK_DONE 2") == 2

    # the same global batches in one process (the worker's configs). bias=False: the key bias has an
    # exactly-zero true gradient (softmax is shift-invariant), so Adam would turn round-off noise
    # into lr-sized steps there; every other weight agrees to ~1e-8.
    Trainer(SynthTask(seed=0), tiny_model_config(dropout=0.0, bias=False),
            tiny_train_config(max_steps=4, batch_size=4, grad_accum=2, eval_every=2), single_out).fit()
    wd = load_file(ddp_out / "ckpt" / "model.safetensors")
    ws = load_file(single_out / "ckpt" / "model.safetensors")
    assert wd.keys() == ws.keys()
    for k in wd:
        assert torch.allclose(wd[k], ws[k], atol=1e-6, rtol=0), (k, (wd[k] - ws[k]).abs().max())
    md, ms = read_metrics(ddp_out / "metrics.jsonl"), read_metrics(single_out / "metrics.jsonl")
    assert [r["step"] for r in md] == [1, 2, 3, 4]
    for a, b in zip(md, ms):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert ("val_loss" in a) == ("val_loss" in b)
