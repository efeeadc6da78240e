"""Speed of the PDE data generators (formers.sciml.pde): solver steps per second and trajectories
per second of the default data sets, per equation, grid and batch size.

Each case runs ``--steps`` solver steps (after one warm-up step) on a batch of ``batch`` samples
and reports sample-steps/s = batch * steps / seconds (wall clock; also per CPU second of this
process, which a busy shared machine does not distort), and samples/s of the equation's default
trajectory (ns2d: 12 s of flow at dt = 1/1024 = 12288 steps; ns3d: 12 time units at dt = 0.01 =
1200 steps; burgers: t = 1 at dt = 1/2048 = 2048 steps).

    .venv/bin/python benchmarks/pde_generation.py                     # CPU, 1 thread
    .venv/bin/python benchmarks/pde_generation.py --device cuda       # GPU: larger batches/grids
    .venv/bin/python benchmarks/pde_generation.py --smoke             # a few seconds, for testing

Writes benchmarks/results/pde_generation-DEVICE.json (atomically; device, torch, threads, commit).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from formers.atomic import write_json
from formers.info import system_info
from formers.sciml.pde.burgers import Burgers1D, BurgersConfig
from formers.sciml.pde.navier_stokes import Kolmogorov2D, NS2DConfig
from formers.sciml.pde.navier_stokes_3d import NS3DConfig, Turbulence3D
from formers.train.trainer import git_commit, resolve_device

DEFAULT_STEPS = {"ns2d": 12288, "ns3d": 1200, "burgers": 2048}
CPU_CASES = [("ns2d", 64, 1), ("ns2d", 64, 8), ("ns2d", 64, 32), ("ns2d", 128, 8),
             ("ns3d", 32, 1), ("ns3d", 32, 4), ("burgers", 256, 64)]
GPU_CASES = [("ns2d", 64, 32), ("ns2d", 64, 128), ("ns2d", 64, 512), ("ns2d", 128, 128),
             ("ns2d", 256, 64), ("ns3d", 32, 16), ("ns3d", 32, 64), ("ns3d", 64, 16), ("burgers", 256, 1024)]
SMOKE_CASES = [("ns2d", 16, 2), ("ns3d", 8, 1), ("burgers", 32, 4)]


def solver(equation: str, grid: int, device: torch.device):
    if equation == "ns2d":
        return Kolmogorov2D(NS2DConfig(grid=grid, forcing_wavenumber=min(8, grid // 3)), device)
    if equation == "ns3d":
        return Turbulence3D(NS3DConfig(grid=grid, forcing_k=min(3.0, grid / 3)), device)
    return Burgers1D(BurgersConfig(grid=grid), device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(equation: str, grid: int, batch: int, steps: int, device: torch.device) -> dict:
    s = solver(equation, grid, device)
    state = s.to_spectral(s.initial(batch, seed=0))
    state = s.step(state, 1)  # warm-up (plans, allocations)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    state = s.step(state, steps)
    sync(device)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not bool(torch.isfinite(s.to_physical(state)).all()):
        raise RuntimeError(f"{equation} {grid} batch {batch}: non-finite state")
    rate = batch * steps / sec
    return {"equation": equation, "grid": grid, "batch": batch, "steps": steps, "seconds": sec,
            "cpu_seconds": cpu, "sample_steps_per_cpu_s": batch * steps / cpu, "sample_steps_per_s": rate, "samples_per_s_default_trajectory": rate / DEFAULT_STEPS[equation],
            "default_trajectory_steps": DEFAULT_STEPS[equation]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0 = torch's default)")
    p.add_argument("--steps", type=int, default=0, help="steps per case (default 64 CPU, 512 GPU)")
    p.add_argument("--smoke", action="store_true", help="tiny cases, 4 steps (tests)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    cases = SMOKE_CASES if a.smoke else GPU_CASES if dev.type == "cuda" else CPU_CASES
    steps = a.steps or (4 if a.smoke else 512 if dev.type == "cuda" else 64)
    rows = []
    for eq, grid, batch in cases:
        r = run_case(eq, grid, batch, steps, dev)
        rows.append(r)
        print(f"{eq:8s} {grid:4d} batch {batch:4d}: {r['sample_steps_per_s']:10.1f} sample-steps/s, "
              f"{r['samples_per_s_default_trajectory']:8.4f} default trajectories/s "
              f"({r['sample_steps_per_cpu_s']:10.1f} per CPU second)", flush=True)
    name = f"pde_generation-{dev.type}{'-smoke' if a.smoke else ''}.json"
    path = write_json(a.out / name, {"system": system_info(), "device": str(dev), "commit": git_commit(),
                                     "threads": torch.get_num_threads(), "steps": steps, "rows": rows})
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
