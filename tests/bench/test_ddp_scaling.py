"""benchmarks/ddp_scaling.py on CPU: the single / DDP / FSDP2 modes run (2 gloo processes), the
record's arithmetic holds, DDP replicas stay identical, and the children inherit the environment
(NCCL variables included) unchanged; the test sets no NCCL variable itself."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ddp_scaling.py"
spec = importlib.util.spec_from_file_location("ddp_scaling", SCRIPT)
ddp_scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ddp_scaling)


def test_arguments_are_checked():
    for bad in (["--modes", "single,zero"], ["--modes", "ddp"], ["--nproc", "0"], ["--bucket-mb", "0"],
                ["--warmup", "0"]):
        with pytest.raises(SystemExit):
            ddp_scaling.parse_args(bad)
    a = ddp_scaling.parse_args(["--modes", "single,ddp", "--warmup", "0", "--no-compile"])
    assert a.mode_list == ["single", "ddp"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_cpu_smoke_two_gloo_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # NCCL / multicast variables: as the machine has them
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny", "--device", "cpu", "--no-compile", "--steps", "2",
         "--warmup", "1", "--repeats", "1", "--seq-len", "32", "--batch-size", "4", "--threads", "1",
         "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((tmp_path / "ddp_scaling-cpu.json").read_text())
    assert (tmp_path / "ddp_scaling-cpu.md").is_file()
    rows = {r["mode"]: r for r in rec["rows"]}
    assert list(rows) == ["single", "ddp", "fsdp"]
    assert [rows[m]["world_size"] for m in rows] == [1, 2, 2]
    single = rows["single"]
    for r in rows.values():
        assert r["batch_per_gpu"] == 4 and r["seq_len"] == 32
        # tokens/s = world x batch x seq / (slowest rank's median step); efficiency vs N x single
        assert r["tokens_per_s"] == pytest.approx(r["world_size"] * 4 * 32 / (r["step_time_ms"] / 1e3))
        assert r["step_time_ms"] / 1e3 == pytest.approx(max(x["median_step_s"] for x in r["ranks"]))
        assert r["efficiency"] == pytest.approx(r["tokens_per_s"] / (r["world_size"] * single["tokens_per_s"]))
        assert len(r["ranks"]) == r["world_size"]
        assert all(0 < x["final_loss"] < 20 for x in r["ranks"])
        # every rank saw the launching environment unchanged (torchrun and the script set nothing)
        assert r["env_seen"] == {k: env.get(k) for k in ddp_scaling.ENV_RECORDED}
    assert single["efficiency"] == 1.0
    assert rows["ddp"]["replica_max_abs_diff"] == 0.0
    # the same initial weights and a loss near ln(vocab) at the first steps on random tokens
    vocab = rec["rows"][0]["vocab_size"]
    assert abs(single["final_loss"] - torch.log(torch.tensor(float(vocab))).item()) < 1.0
    assert rec["goal"]["target"] == 0.9 and rec["goal"]["value"] == rows["ddp"]["efficiency"]
    assert rec["env"] == {k: env.get(k) for k in ddp_scaling.ENV_RECORDED} and rec["device_tag"] == "cpu"
