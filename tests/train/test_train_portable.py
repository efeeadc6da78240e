"""Checkpoints load at another world size and under another parallel mode (CPU, gloo, 2 ranks).

Each resumed run must continue the run it was saved from: the same train losses at steps 3-4 as
the uninterrupted run (|diff| <= 1e-5; fp32, only the summation order differs between one and
two ranks) and the same final weights (|diff| <= 1e-6). bias=False as in test_train_ddp.py (the
key bias has an exactly-zero true gradient, which Adam would turn from round-off into lr-sized
steps). One torchrun launch (module fixture) makes all the distributed runs.

On a machine with 2+ GPUs, ``FORMERS_PORTABLE_DEVICE=cuda`` runs the same checks over NCCL, one
GPU per rank (fp32; weights to 1e-5 there: CUDA kernels may sum in another order per batch shape).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from formers.train.trainer import Trainer, read_metrics

from _train_synth import SynthTask, crashing, tiny_model_config, tiny_train_config

HERE = Path(__file__).resolve().parent
DEVICE = os.environ.get("FORMERS_PORTABLE_DEVICE", "cpu")
W_TOL = 1e-6 if DEVICE == "cpu" else 1e-5
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not built")


def _single(out: Path, crash: bool = False, resume: bool = False, parallel: str = "ddp") -> None:
    task = crashing(SynthTask(seed=0), crash_at=2) if crash else SynthTask(seed=0)
    cfg = tiny_train_config(max_steps=4, batch_size=4, grad_accum=2, eval_every=2, checkpoint_every=2,
                            dtype="fp32", parallel=parallel, device=DEVICE)
    try:
        Trainer(task, tiny_model_config(dropout=0.0, bias=False), cfg, out, resume=resume).fit()
    except KeyboardInterrupt:
        assert crash


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("portable")
    _single(root / "single_full")
    _single(root / "single_half", crash=True)
    shutil.copytree(root / "single_half", root / "w1to2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(HERE / "_train_portable_worker.py"), str(root), DEVICE],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("RANK_DONE") == 2
    return root


def _same_run(a: Path, b: Path) -> None:
    """Runs a and b: equal train losses at every step, equal final weights and optimiser state."""
    ma, mb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [1, 2, 3, 4]
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-5), (ra, rb)
        assert ra.get("val_loss", -1) == pytest.approx(rb.get("val_loss", -1), abs=1e-5)
    for name, tol in (("model.safetensors", W_TOL), ("optimizer.safetensors", W_TOL)):
        ta, tb = load_file(a / "ckpt" / name), load_file(b / "ckpt" / name)
        assert ta.keys() == tb.keys(), (name, sorted(ta.keys() ^ tb.keys()))
        for k in ta:
            assert ta[k].shape == tb[k].shape, k
            assert torch.allclose(ta[k].float(), tb[k].float(), atol=tol, rtol=1e-5), (
                name, k, (ta[k].float() - tb[k].float()).abs().max())


def test_world2_checkpoint_resumes_at_world1(runs, tmp_path):
    # the world-2 run's step-2 checkpoint continued by one process == the world-2 run continued
    shutil.copytree(runs / "ddp_half", tmp_path / "w2to1")
    _single(tmp_path / "w2to1", resume=True)
    _same_run(tmp_path / "w2to1", runs / "ddp_full")
    # and one process and two ranks make the same run from the start
    _same_run(runs / "single_full", runs / "ddp_full")


def test_world1_checkpoint_resumes_at_world2(runs):
    _same_run(runs / "w1to2", runs / "single_full")


def test_fsdp_checkpoint_resumes_in_one_process(runs, tmp_path):
    # FSDP2 trains the same run as DDP, and its gathered checkpoint continues in a single process
    _same_run(runs / "fsdp_full", runs / "ddp_full")
    shutil.copytree(runs / "fsdp_half", tmp_path / "fsdp_to_1")
    _single(tmp_path / "fsdp_to_1", resume=True, parallel="fsdp")  # parallel may change on resume
    _same_run(tmp_path / "fsdp_to_1", runs / "fsdp_full")


def test_ddp_checkpoint_resumes_under_fsdp(runs):
    _same_run(runs / "ddp_to_fsdp", runs / "ddp_full")


def test_fsdp_bf16_mixed_precision(runs):
    # bf16 compute (MixedPrecisionPolicy param_dtype bf16, reduce fp32) follows the fp32 run to bf16
    # accuracy, and the checkpoint keeps fp32 master weights
    mb, mf = read_metrics(runs / "fsdp_bf16" / "metrics.jsonl"), read_metrics(runs / "ddp_full" / "metrics.jsonl")
    assert [r["step"] for r in mb] == [1, 2, 3, 4]
    diffs = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(mb, mf)]
    assert max(diffs) < 0.03 and max(diffs) > 0, diffs  # bf16 differs from fp32, but only a little
    w = load_file(runs / "fsdp_bf16" / "ckpt" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in w.values())
    assert json.loads((runs / "fsdp_bf16" / "summary.json").read_text())["dtype"] == "bf16"


def test_fsdp_best_weights_are_gathered(runs):
    # early stopping under FSDP writes best/ from the gathered full weights: a plain model file
    # with the same tensors as the full checkpoint when the best evaluation is the last one
    summary = json.loads((runs / "fsdp_full" / "summary.json").read_text())
    best = load_file(runs / "fsdp_full" / "best" / "model.safetensors")
    ckpt = load_file(runs / "fsdp_full" / "ckpt" / "model.safetensors")
    assert best.keys() == ckpt.keys()
    assert summary["best"]["step"] in (2, 4)
    if summary["best"]["step"] == 4:
        for k in best:
            assert torch.equal(best[k], ckpt[k]), k
    # the reported validation loss is the one of the best evaluation
    recs = {r["step"]: r for r in read_metrics(runs / "fsdp_full" / "metrics.jsonl")}
    assert summary["val_loss"] == pytest.approx(recs[summary["best"]["step"]]["val_loss"], abs=1e-6)


def test_parallel_config_is_validated():
    from formers.train.config import TrainConfig

    with pytest.raises(ValueError, match="parallel"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(parallel="fsdp", sam_rho=0.05)
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(parallel="fsdp", optimizer="lbfgs", grad_clip=0.0)
    assert TrainConfig.from_dict(TrainConfig(parallel="fsdp").to_dict()).parallel == "fsdp"


def test_rank_rows_of_the_global_batch():
    # rank r keeps rows r::world of the global batch; the global batch must divide by the world size
    from formers.train.distributed import DistInfo, shard

    ids = torch.arange(12).reshape(6, 2)
    parts = [shard({"ids": ids}, DistInfo(rank=r, world_size=3))["ids"] for r in range(3)]
    assert [p[:, 0].tolist() for p in parts] == [[0, 6], [2, 8], [4, 10]]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == ids[:, 0].tolist()
    with pytest.raises(ValueError, match="divisible by the world size 4"):
        shard({"ids": ids}, DistInfo(rank=0, world_size=4))
