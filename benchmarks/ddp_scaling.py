"""Multi-GPU scaling of training throughput (issue 8): tokens/s on 1 GPU, on N GPUs with DDP, and
on N GPUs with FSDP2, in one command; efficiency = tokens/s(N) / (N x tokens/s(1)).

Weak scaling: every GPU runs the same per-GPU batch (the preset's, gpt2-small: 16 x 1024 tokens),
so N GPUs process N times the tokens of one per step. The step is the one of ``formers bench
train`` (:mod:`formers.bench.train`): random token ids, next-token cross-entropy on logits upcast
to fp32, bf16 autocast on CUDA, AdamW (fused on CUDA), ``zero_grad(set_to_none=True)``; the model
is the preset's GPT-2-style baseline (:func:`formers.bench.train.preset_config`).

Modes (one ``torchrun --nproc_per_node N`` launch runs them one after the other, freeing memory
and resetting the compiler between them; the launch inherits the environment unchanged: nothing
here sets or overrides ``NCCL_*``, ``TORCH_SYMM_MEM_*`` or ``NVSHMEM_*``):

* ``single``: rank 0 alone on its GPU (the other ranks wait at a barrier, on their own GPUs),
  no DDP, ``torch.compile`` of (model + loss).
* ``ddp``: all N ranks; ``torch.compile(DDP(model + loss))`` so dynamo's
  DDPOptimizer splits the graph at the gradient buckets and all-reduces overlap the backward;
  ``gradient_as_bucket_view=True`` (no gradient copy), bucket size ``--bucket-mb`` (torch's 25 MiB
  default unless given).
* ``fsdp``: all N ranks; FSDP2 (:func:`formers.train.distributed.wrap_fsdp`: per block, then the
  root; bf16 gather, fp32 reduce-scatter), each block's forward compiled (the FSDP hooks between
  blocks stay eager), embeddings / head / loss eager.

Timing: ``--warmup`` steps (compilation), then ``--repeats`` windows of ``--steps`` steps with a
barrier before each window; each step is timed with CUDA events (CPU: ``perf_counter``); a rank's
figure is the median over all its measured steps and a mode's step time is the slowest rank's.
tokens/s = world x batch x seq_len / step time. MFU counts the issue's ``6 N + 12 L d T`` FLOPs
per token against the per-GPU datasheet peak (:func:`formers.bench.devices.peak_tflops`).
A DDP run also checks that the replicas stay identical (max |w_rank - w_0| over all weights).

Results: ``benchmarks/results/ddp_scaling-<device>.json`` and ``.md`` (atomic), with device,
torch, NCCL version, commit and the (inherited, read-only) NCCL / multicast variables.

    python benchmarks/ddp_scaling.py --preset gpt2-small --device cuda --steps 40       # 2 H200s
    python benchmarks/ddp_scaling.py --preset tiny --device cpu --steps 3 --warmup 1 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

MODES = ("single", "ddp", "fsdp")
# read (never written) and recorded: they decide whether NCCL uses NVLink multicast
ENV_RECORDED = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS",
                "NCCL_ALGO", "NCCL_PROTO", "NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "OMP_NUM_THREADS")
GOAL_EFFICIENCY = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--preset", default="gpt2-small", help="formers bench train preset (gpt2-small, gpt2-medium, tiny)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--nproc", type=int, default=2, help="processes (GPUs) of the ddp / fsdp modes")
    ap.add_argument("--modes", default="single,ddp,fsdp", help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default: the preset's)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=40, help="measured steps per window")
    ap.add_argument("--warmup", type=int, default=5, help="steps before measuring (compilation)")
    ap.add_argument("--repeats", type=int, default=3, help="measurement windows")
    ap.add_argument("--no-compile", action="store_true", help="eager (default: torch.compile)")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                    help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--bucket-mb", type=float, default=None, help="DDP bucket_cap_mb (default: torch's 25)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="per-GPU peak (default: the datasheet table)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in each process (0: leave)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the whole launch")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: folder of part JSONs
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: comma list of modes
    a = ap.parse_args(argv)
    a.mode_list = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in a.mode_list if m not in MODES]
    if bad or not a.mode_list:
        ap.error(f"--modes: unknown {bad or 'empty list'}; allowed: {', '.join(MODES)}")
    if "single" not in a.mode_list and a.worker is None:
        ap.error("--modes must include 'single' (the efficiency's reference)")
    for name in ("nproc", "steps", "repeats"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.warmup < (0 if a.no_compile else 1):
        ap.error(f"--warmup must be >= {0 if a.no_compile else 1} (the first step compiles), got {a.warmup}")
    if a.bucket_mb is not None and not a.bucket_mb > 0:
        ap.error(f"--bucket-mb must be > 0, got {a.bucket_mb}")
    return a


# ------------------------------------------------------------------------------------------ worker
def _loss_module(model):
    import torch.nn.functional as F
    from torch import nn

    class LossOf(nn.Module):
        """CE of the next token, logits (batch, seq, vocab) upcast to fp32 inside the graph."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids, targets):
            return F.cross_entropy(self.model(ids).flatten(0, 1).float(), targets.flatten())

    return LossOf()


def worker(a: argparse.Namespace) -> None:
    """One rank of the launch: every mode of ``a.mode`` in turn (``single``: rank 0 alone while the
    other ranks wait; ``ddp`` / ``fsdp``: all ranks), each writing its part JSON (rank 0) to
    ``a.worker/<mode>.json`` as soon as it is measured."""
    import gc

    import torch

    from formers.train import distributed as D

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ddp_scaling: --device cuda but CUDA is not available")
    info = D.setup(a.device)  # torchrun's environment; a single process: rank 0 of 1
    modes = a.mode.split(",")
    if any(m != "single" for m in modes) and not info.enabled:
        raise SystemExit(f"ddp_scaling: modes {modes} need torchrun with WORLD_SIZE > 1")
    device = torch.device("cuda", info.local_rank) if a.device == "cuda" else torch.device("cpu")
    try:
        for mode in modes:
            if mode == "single":  # one GPU: rank 0 by itself, no process group involved
                if info.is_main:
                    _measure(a, "single", D.DistInfo(), device, Path(a.worker))
            else:
                _measure(a, mode, info, device, Path(a.worker))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()  # each mode compiles afresh
            D.barrier(info)
    finally:
        D.teardown(info)


def _measure(a: argparse.Namespace, mode: str, info, device, out_dir: Path) -> None:
    """Build the preset's model for ``mode``, warm up, time ``a.repeats`` windows of ``a.steps``
    steps; rank 0 writes ``out_dir/<mode>.json``."""
    import torch
    import torch.distributed as dist

    from formers.atomic import write_json
    from formers.bench.compile_count import CompileCount
    from formers.bench.train import PRESETS, preset_config
    from formers.nn.models import build_model, count_params
    from formers.train import distributed as D

    cuda = device.type == "cuda"
    amp = torch.bfloat16 if (a.dtype == "bf16" or (a.dtype == "auto" and cuda)) else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_ = not a.no_compile
    cfg = preset_config(a.preset, a.seq_len)
    batch = a.batch_size or PRESETS[a.preset].batch_size
    seq = cfg.max_seq_len

    torch.manual_seed(a.seed)  # the same initial weights on every rank
    model = build_model(cfg)
    n_params = count_params(model)
    if mode == "fsdp":
        model = D.wrap_fsdp(model, info, device, param_dtype=amp)
        if compile_:  # FSDP2: compile block by block; the all-gather hooks stay outside the graphs
            for unit in D.shard_units(model):
                unit.forward = torch.compile(unit.forward)
        step_fn = _loss_module(model)
    else:
        model.to(device)
        loss = _loss_module(model)
        if mode == "ddp":
            loss = D.wrap_ddp(loss, info, device, bucket_cap_mb=a.bucket_mb, gradient_as_bucket_view=True)
        step_fn = torch.compile(loss) if compile_ else loss
    model.train()
    kw = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                            betas=(0.9, 0.95), weight_decay=0.1, **kw)

    g = torch.Generator().manual_seed(a.seed + 1 + info.rank)  # each rank its own rows
    batches = []
    for _ in range(4):
        ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g).to(device)
        batches.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def step(i: int):
        ids, targets = batches[i % len(batches)]
        with (torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()):
            loss = step_fn(ids, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    loss = None
    with CompileCount() as cc_warm:
        for i in range(a.warmup):
            loss = step(i)
        sync()
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    with CompileCount() as cc_run:
        for _ in range(a.repeats):
            D.barrier(info)
            sync()
            if cuda:
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(a.steps)]
                for i in range(a.steps):
                    ev[i][0].record()
                    loss = step(i)
                    ev[i][1].record()
                sync()
                times += [s.elapsed_time(e) / 1e3 for s, e in ev]
            else:
                for i in range(a.steps):
                    ts = time.perf_counter()
                    loss = step(i)
                    times.append(time.perf_counter() - ts)
    last_loss = float(loss.detach().float())
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    replica_diff = None
    if mode == "ddp":  # replicas must hold the same weights after every step
        worst = torch.zeros((), device=device)
        for p in model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, 0)
            worst = torch.maximum(worst, (p.detach() - ref).abs().max())
        replica_diff = float(worst)
    mine = {"rank": info.rank, "median_step_s": statistics.median(times), "min_step_s": min(times),
            "warmup_s": warmup_s, "peak_mem_mb": peak_mb, "final_loss": last_loss,
            "graphs_warmup": cc_warm.graphs, "graphs_measured": cc_run.graphs,
            "recompile_reasons": cc_warm.reasons + cc_run.reasons}
    ranks = [mine]
    if info.enabled:
        ranks = [None] * info.world_size
        dist.all_gather_object(ranks, mine)
    if info.is_main:
        step_s = max(r["median_step_s"] for r in ranks)
        part = {
            "mode": mode, "world_size": info.world_size, "batch_per_gpu": batch, "seq_len": seq,
            "params": n_params, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size, "compile": compile_, "dtype": "bf16" if amp is not None else "fp32",
            "bucket_cap_mb": a.bucket_mb if mode == "ddp" else None,
            "step_time_ms": step_s * 1e3, "tokens_per_s": info.world_size * batch * seq / step_s,
            "peak_mem_mb": max((r["peak_mem_mb"] or 0) for r in ranks) if cuda else None,
            "warmup_s": max(r["warmup_s"] for r in ranks), "final_loss": last_loss,
            "replica_max_abs_diff": replica_diff,
            "env_seen": {k: os.environ.get(k) for k in ENV_RECORDED},  # what the ranks inherited
            "graphs_warmup": ranks[0]["graphs_warmup"],
            "graphs_measured": max((r["graphs_measured"] or 0) for r in ranks) if compile_ else None,
            "ranks": ranks,
        }
        if cuda:
            part["device_name"] = torch.cuda.get_device_name(device)
            nccl = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else None
            part["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
        write_json(out_dir / f"{mode}.json", part)


# ------------------------------------------------------------------------------------------ launcher
def _common_args(a: argparse.Namespace) -> list[str]:
    out = ["--preset", a.preset, "--device", a.device, "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--repeats", str(a.repeats), "--dtype", a.dtype, "--seed", str(a.seed), "--threads", str(a.threads)]
    for flag, v in (("--batch-size", a.batch_size), ("--seq-len", a.seq_len), ("--bucket-mb", a.bucket_mb)):
        if v is not None:
            out += [flag, str(v)]
    if a.no_compile:
        out.append("--no-compile")
    return out


def run_modes(a: argparse.Namespace, parts_dir: Path) -> dict[str, dict]:
    """Run every mode in one launch (``torchrun --nproc_per_node N`` unless only ``single`` is
    asked for); return the part records found. The children inherit this process's environment
    unchanged."""
    script = str(Path(__file__).resolve())
    args = [script, "--worker", str(parts_dir), "--mode", ",".join(a.mode_list)] + _common_args(a)
    if a.mode_list == ["single"]:
        cmd = [sys.executable] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={a.nproc}"] + args
    print(f"ddp_scaling: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, timeout=a.timeout)
    parts = {m: json.loads((parts_dir / f"{m}.json").read_text())
             for m in a.mode_list if (parts_dir / f"{m}.json").is_file()}
    missing = [m for m in a.mode_list if m not in parts]
    if "single" not in parts:
        raise SystemExit(f"ddp_scaling: the run failed (exit code {proc.returncode}) before the "
                         f"single-GPU reference was measured; nothing written")
    if proc.returncode != 0 or missing:  # keep what was measured; main() exits non-zero
        print(f"ddp_scaling: the run failed (exit code {proc.returncode}); modes without a result: "
              f"{missing}", file=sys.stderr)
    for p in parts.values():
        p["launch_wall_s"] = time.perf_counter() - t0
    return parts


def summarise(a: argparse.Namespace, parts: dict[str, dict]) -> dict:
    """The result record: every mode's figures, efficiency vs N x single, MFU, goal."""
    import torch

    from formers.bench.train import six_n_flops
    from formers.train.trainer import git_commit

    single = parts["single"]
    device_name = single.get("device_name", "cpu")
    peak, peak_src = a.peak_tflops, "--peak-tflops" if a.peak_tflops else None
    if peak is None and a.device == "cuda":
        try:
            from formers.bench.devices import peak_tflops

            peak, peak_src = peak_tflops(device_name, single["dtype"], None, True)
        except (ImportError, ValueError):
            peak, peak_src = None, None
    flops = six_n_flops(single["params"], single["n_layers"], single["d_model"], single["seq_len"])
    rows = []
    for mode in [m for m in a.mode_list if m in parts]:
        p = parts[mode]
        eff = p["tokens_per_s"] / (p["world_size"] * single["tokens_per_s"])
        rows.append({**p, "efficiency": eff,
                     "mfu_6n_per_gpu": (flops * p["tokens_per_s"] / p["world_size"] / (peak * 1e12))
                     if peak else None})
    record = {
        "benchmark": "ddp_scaling", "preset": a.preset, "device": a.device, "device_name": device_name,
        "device_tag": _device_tag(device_name) if a.device == "cuda" else "cpu",
        "torch": torch.__version__, "nccl": single.get("nccl") or next(
            (parts[m].get("nccl") for m in parts if parts[m].get("nccl")), None),
        "commit": git_commit(), "nproc": a.nproc, "batch_per_gpu": single["batch_per_gpu"],
        "seq_len": single["seq_len"], "params": single["params"], "dtype": single["dtype"],
        "compile": single["compile"], "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats,
        "threads": a.threads or None, "flops_per_token_6n": flops, "peak_tflops": peak, "peak_source": peak_src,
        "optimizer": "AdamW(lr=3e-4, betas=(0.9, 0.95), wd=0.1" + (", fused)" if a.device == "cuda" else ")"),
        "data": "random token ids (throughput only)",
        "env": {k: os.environ.get(k) for k in ENV_RECORDED},
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "rows": rows, "failed_modes": [m for m in a.mode_list if m not in parts],
    }
    ddp = next((r for r in rows if r["mode"] == "ddp"), None)
    record["goal"] = None if ddp is None else {
        "goal": f"DDP tokens/s at {a.nproc} GPUs >= {GOAL_EFFICIENCY:.0%} of {a.nproc} x single-GPU",
        "value": ddp["efficiency"], "target": GOAL_EFFICIENCY, "met": ddp["efficiency"] >= GOAL_EFFICIENCY}
    return record


def _device_tag(name: str) -> str:
    name = name.replace("NVIDIA", "").replace("GeForce", "").strip() or "cuda"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def markdown(r: dict) -> str:
    lines = [
        f"# ddp_scaling {r['preset']} on {r['nproc']} x {r['device_name']}",
        "",
        f"per-GPU batch {r['batch_per_gpu']} x {r['seq_len']}, {r['params'] / 1e6:.1f} M parameters, "
        f"{r['dtype']}, compile={r['compile']}, {r['optimizer']}; torch {r['torch']}, NCCL {r['nccl']}, "
        f"commit {r['commit']}; {r['steps']} steps x {r['repeats']} windows after {r['warmup']} warm-up steps.",
        "Environment (inherited, not set here): "
        + ", ".join(f"{k}={v}" for k, v in r["env"].items() if v is not None) + ".",
        "",
        "| mode | GPUs | step (ms) | tokens/s | efficiency vs N x single | MFU per GPU (6N) | peak mem / GPU (MiB) "
        "| warm-up (s) | graphs compiled (warm-up / measured) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        mfu = "-" if row["mfu_6n_per_gpu"] is None else f"{row['mfu_6n_per_gpu']:.1%}"
        mem = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:,.0f}"
        lines.append(f"| {row['mode']} | {row['world_size']} | {row['step_time_ms']:.2f} | "
                     f"{row['tokens_per_s']:,.0f} | {row['efficiency']:.3f} | {mfu} | {mem} | {row['warmup_s']:.1f} | "
                     f"{row['graphs_warmup']} / {row['graphs_measured']} |")
    if r.get("goal"):
        g = r["goal"]
        lines += ["", f"Goal: {g['goal']}: measured {g['value']:.3f} -> {'met' if g['met'] else 'NOT met'}."]
    if r.get("failed_modes"):
        lines.append(f"Modes that failed (no figure): {', '.join(r['failed_modes'])}.")
    ddp = next((x for x in r["rows"] if x["mode"] == "ddp"), None)
    if ddp is not None and ddp["replica_max_abs_diff"] is not None:
        lines.append(f"DDP replicas after the run: max |w_rank - w_0| = {ddp['replica_max_abs_diff']:.3g}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    a = parse_args(argv)
    if a.worker is not None:
        worker(a)
        return None
    from formers.atomic import write_json, write_text

    with tempfile.TemporaryDirectory(prefix="ddp_scaling-") as tmp:
        parts = run_modes(a, Path(tmp))
    record = summarise(a, parts)
    out = Path(a.out)
    stem = f"ddp_scaling-{record['device_tag']}"
    write_json(out / f"{stem}.json", record)
    write_text(out / f"{stem}.md", markdown(record))
    print(markdown(record))
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    if record["failed_modes"]:
        raise SystemExit(1)
    return record


if __name__ == "__main__":
    main()
