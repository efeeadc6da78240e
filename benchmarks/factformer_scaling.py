"""FactFormer's scalability claim: time and peak memory of one factorised attention block against
full softmax attention and linear (Galerkin) attention over every grid point (Li, Shu, Barati
Farimani, arXiv 2305.17560, §3-4: O(N (n_x + n_y) d) against O(N^2 d)).

Every arm maps u (batch, *grid, dim = 128) -> same shape with 8 heads of width 64 (the reference
KM2D block):
  * ``factorized``: :class:`formers.sciml.pde.factorized.FactorizedAttention` (kernel_multiplier 2,
    rotary on, chained, domain-wise GroupNorm, output MLP);
  * ``softmax``: LayerNorm, q/k/v projections, softmax attention over all N points through the
    project's one attention core (``formers.nn.attention.core.attend``: SDPA, flash /
    memory-efficient kernels on CUDA), output projection;
  * ``galerkin``: the same projections, z = q (LN(k)^T LN(v)) / N per head (Cao, "Choose a
    Transformer: Fourier or Galerkin", arXiv 2105.14995), output projection.
Grids: 64^2, 128^2, 256^2 and 32^3, 64^3. Per case: forward + backward, median of a few calls
after warm-up; peak memory on CUDA = ``max_memory_allocated`` rise during one call, on CPU the
rise of the process's resident high-water mark (VmHWM) during one call. A case slower than
``--time-limit`` seconds or out of memory is recorded and larger grids of that arm are skipped;
so is a case whose time, extrapolated from the arm's last measured grid (N^2 for softmax, N for
the others), exceeds 3 x the limit.

    .venv/bin/python benchmarks/factformer_scaling.py [--device cuda] [--smoke]

Writes benchmarks/results/factformer_scaling-<device>.json / .md / .png (atomically).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from formers.bench.attention import _glibc_setup, _is_oom, _read_status_kb, _reset_hwm
from formers.nn.attention.core import attend
from formers.sciml.pde.factorized import FactorizedAttention
from formers.train.trainer import git_commit
from pde_bench import device_tag, two_panels, write_all

GRIDS = [(64, 64), (128, 128), (256, 256), (32, 32, 32), (64, 64, 64)]
SMOKE_GRIDS = [(8, 8), (16, 16), (4, 4, 4)]


class TokenAttention(nn.Module):
    """Full softmax (``kind="softmax"``) or Galerkin linear (``kind="galerkin"``) attention over
    all grid points: u (batch, *grid, dim) -> same shape."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, kind: str) -> None:
        super().__init__()
        self.h, self.d, self.kind = n_heads, head_dim, kind
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * n_heads * head_dim, bias=False)
        self.out = nn.Linear(n_heads * head_dim, dim, bias=False)
        if kind == "galerkin":
            self.k_norm, self.v_norm = nn.LayerNorm(head_dim), nn.LayerNorm(head_dim)

    def forward(self, u: torch.Tensor, coords=None) -> torch.Tensor:
        b, shape = u.shape[0], u.shape
        x = self.norm(u).reshape(b, -1, u.shape[-1])
        n = x.shape[1]
        q, k, v = self.qkv(x).view(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        if self.kind == "softmax":
            z, _ = attend(q, k, v)
        else:
            z = q @ (self.k_norm(k).transpose(-1, -2) @ self.v_norm(v)) / n
        return self.out(z.transpose(1, 2).reshape(b, n, -1)).reshape(shape)


def build(arm: str, n_dims: int, dim: int = 128, n_heads: int = 8, head_dim: int = 64) -> nn.Module:
    if arm == "factorized":
        return FactorizedAttention(dim, n_heads, head_dim, n_dims, kernel_multiplier=2)
    return TokenAttention(dim, n_heads, head_dim, arm)


def measure(arm: str, grid: tuple[int, ...], device: str, dtype: torch.dtype, time_limit: float,
            repeats: int) -> dict:
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    mod = build(arm, len(grid)).to(device)
    u = torch.randn(1, *grid, 128, device=device, requires_grad=True)
    coords = [torch.linspace(0, 2 * math.pi, n, device=device) for n in grid]
    trim = (lambda: None) if cuda else _glibc_setup()

    def call() -> None:
        mod.zero_grad(set_to_none=True)
        u.grad = None
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            y = mod(u, coords)
        y.float().square().mean().backward()
        if cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    if first > 3 * time_limit:
        return {"status": "timeout", "time_ms": first * 1e3, "mem_mb": None}
    if cuda:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        call()
        second = time.perf_counter() - t0
        mem = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:
        trim()
        base = _read_status_kb("VmRSS")
        ok = base is not None and _reset_hwm()
        t0 = time.perf_counter()
        call()
        second = time.perf_counter() - t0
        mem = (_read_status_kb("VmHWM") - base) / 1024 if ok else None
    if second > time_limit:
        return {"status": "timeout", "time_ms": second * 1e3, "mem_mb": mem}
    times = []
    for _ in range(max(1, min(repeats, int(time_limit / max(second, 1e-9))))):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"status": "ok", "time_ms": statistics.median(times) * 1e3, "mem_mb": mem, "repeats": len(times)}


def table(rows: list[dict]) -> str:
    arms = sorted({r["arm"] for r in rows}, key=["factorized", "galerkin", "softmax"].index)
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    cell = {(r["arm"], r["grid"]): r for r in rows}
    lines = ["| grid | N | " + " | ".join(f"{a} ms | {a} MiB" for a in arms) + " |",
             "|---|---:|" + "---:|---:|" * len(arms)]
    for g in grids:
        vals = []
        for a in arms:
            r = cell.get((a, g))
            if r is None or r["status"] != "ok":
                vals += [r["status"] if r else "skipped", "-"]
            else:
                vals += [f"{r['time_ms']:.1f}", "-" if r["mem_mb"] is None else f"{r['mem_mb']:.0f}"]
        lines.append(f"| {g} | {math.prod(map(int, g.split('x'))):,} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    time_s, mem_s = [], []
    for arm in ("factorized", "galerkin", "softmax"):
        for nd, style in ((2, "-o"), (3, "--s")):
            ok = [r for r in rows if r["arm"] == arm and r["n_dims"] == nd and r["status"] == "ok"]
            time_s.append(([r["n_points"] for r in ok], [r["time_ms"] for r in ok], style, f"{arm} {nd}-D"))
            ok = [r for r in ok if r["mem_mb"] and r["mem_mb"] > 0]
            mem_s.append(([r["n_points"] for r in ok], [r["mem_mb"] for r in ok], style, f"{arm} {nd}-D"))
    two_panels(path, title, [
        {"xlabel": "grid points N", "ylabel": "fwd+bwd ms", "title": "time", "scale": "loglog", "series": time_s},
        {"xlabel": "grid points N", "ylabel": "peak MiB", "title": "memory", "scale": "loglog", "series": mem_s}])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--smoke", action="store_true", help="tiny grids, for a quick check")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per call before skipping larger grids")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if (args.dtype == "bf16" or (args.dtype == "auto" and cuda)) else torch.float32
    grids = SMOKE_GRIDS if args.smoke else GRIDS
    rows, dead, last = [], set(), {}
    for grid in grids:
        for arm in ("factorized", "galerkin", "softmax"):
            key = (arm, len(grid))
            n = math.prod(grid)
            rec = {"arm": arm, "grid": "x".join(map(str, grid)), "n_dims": len(grid), "n_points": n}
            if key in dead:
                rows.append({**rec, "status": "skipped"})
                continue
            if arm in last:  # predicted from the last measured size: time ~ N^2 (softmax) or N
                n0, t0 = last[arm]
                guess = t0 / 1e3 * (n / n0) ** (2 if arm == "softmax" else 1)
                if guess > 3 * args.time_limit:
                    rows.append({**rec, "status": "skipped", "note": f"predicted {guess:.0f} s per call"})
                    dead.add(key)
                    continue
            try:
                rec.update(measure(arm, grid, args.device, dtype, args.time_limit, args.repeats))
            except Exception as e:  # noqa: BLE001 (OOM and friends are results, not crashes)
                if not _is_oom(e):
                    raise
                rec.update({"status": "oom", "time_ms": None, "mem_mb": None})
            if cuda:
                torch.cuda.empty_cache()
            if rec["status"] != "ok":
                dead.add(key)
            elif rec["time_ms"]:
                last[arm] = (n, rec["time_ms"])
            rows.append(rec)
            print(rec, file=sys.stderr, flush=True)
    tag = device_tag(args.device, args.smoke)
    result = {"benchmark": "factformer_scaling", "device": tag, "dtype": str(dtype).replace("torch.", ""),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "commit": git_commit(),
              "block": {"dim": 128, "n_heads": 8, "head_dim": 64, "kernel_multiplier": 2, "batch": 1},
              "measure": "forward + backward of one block; CUDA: max_memory_allocated rise; CPU: VmHWM rise",
              "rows": rows}
    write_all(args.out / f"factformer_scaling-{tag}", result,
              f"FactFormer scaling ({tag}, {result['dtype']}, torch {torch.__version__}): one block, "
              f"forward + backward", table(rows),
              lambda png: plot(rows, png, f"factorised vs Galerkin vs softmax attention, {tag}"))

if __name__ == "__main__":
    main()
