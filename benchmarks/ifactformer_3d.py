"""IFactFormer-m (parallel factorised attention) against IFactFormer-o (the chained original) at
equal parameter count on a generated 3-D periodic flow: training curves and a 50-step rollout
(Yang, Wang, Wang, arXiv 2412.18840, §2-3: -m converges faster and rolls out more stably; the
notes' §3(c) proxy experiment, not the paper's channel flow).

Data: forced isotropic turbulence from the project's 3-D pseudo-spectral solver
(:func:`formers.sciml.pde.navier_stokes_3d.navier_stokes_3d`; 32^3 on the GPU, frames 0.1 apart
after a 2 s burn-in), velocity (u, v, w). The first trajectories train, the last ``--n-test``
test. Per-channel z-score from the training frames (the reference's normalisation).

Models: the reference config (d_model 96, 5 heads of 96, kernel_multiplier 3, depth 1, 10
shared-weight iterations u <- u + Block(u)/10, 1 input frame -> 1 output frame); -o gets the
head_dim that brings its parameter count closest to -m's (its output layer is 3x narrower).
Training (the reference recipe): 1-step pairs, relative L2 loss, AdamW lr 5e-4, step decay 0.7
every 1/6 of the steps, batch 4, same data order for both. Curves: training loss and the test
one-step relative L2 every 1/20 of the steps. Rollout: 50 autoregressive steps from frame 0 of
every test trajectory; relative L2 per step (physical units) and the energy ratio <|u_pred|^2> /
<|u_true|^2> (a blow-up or a decay shows there).

    .venv/bin/python benchmarks/ifactformer_3d.py --device cuda        # GPU (~2.5 min)
    .venv/bin/python benchmarks/ifactformer_3d.py --smoke              # CPU check (8^3, seconds)

Writes benchmarks/results/ifactformer_3d-<device>.json / .md / .png (atomically).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from formers.sciml.pde.ifactformer import IFactFormer, IFactFormerConfig, IFactFormerOConfig
from formers.sciml.pde.navier_stokes_3d import navier_stokes_3d
from formers.sciml.pde.surrogate import relative_l2
from formers.train.trainer import git_commit
from pde_bench import device_tag, two_panels, write_all


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def matched_o_config(m_cfg: IFactFormerConfig) -> IFactFormerOConfig:
    """The -o config whose parameter count is closest to -m's, varying head_dim only."""
    target = n_params(IFactFormer(m_cfg))
    fields = {k: v for k, v in m_cfg.to_dict().items() if k not in ("model", "combine")}
    best = min(range(max(2, m_cfg.head_dim // 2), 2 * m_cfg.head_dim + 1, 2),
               key=lambda hd: abs(n_params(IFactFormer(IFactFormerOConfig(**{**fields, "head_dim": hd}))) - target))
    return IFactFormerOConfig(**{**fields, "head_dim": best})


def train_arm(cfg, data, args, device) -> dict:
    train, test, mean, std = data
    torch.manual_seed(args.seed)
    model = IFactFormer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(args.steps // 6, 1), gamma=0.7)
    rng = np.random.default_rng(args.seed)  # the same pairs, in the same order, for both arms
    T = train.shape[1]
    every = max(args.steps // 20, 1)
    tp = [(i, t) for i in range(test.shape[0]) for t in range(0, test.shape[1] - 1, max((test.shape[1] - 1) // 8, 1))]
    curve, running, t0 = [], [], time.time()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for step in range(1, args.steps + 1):
        i = rng.integers(0, train.shape[0], args.batch_size)
        t = rng.integers(0, T - 1, args.batch_size)
        x, y = train[i, t].unsqueeze(1), train[i, t + 1].unsqueeze(1)
        with amp:
            pred = model(x)
        loss = relative_l2(pred.float(), y).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad(), amp:
                errs = [relative_l2(model(test[i, t][None, None]).float(), test[i, t + 1][None, None]) for i, t in tp]
            model.train()
            curve.append({"step": step, "train_rel_l2": float(np.mean(running)),
                          "test_one_step_rel_l2": float(torch.cat(errs).mean()), "time_s": time.time() - t0})
            running = []
    model.eval()
    per_step, energy = [], []
    with torch.no_grad(), amp:
        x = test[:, :1]
        for s in range(1, min(args.rollout, test.shape[1] - 1) + 1):
            x = model(x).float()
            pred, true = x * std + mean, test[:, s:s + 1] * std + mean
            per_step.append(float(relative_l2(pred, true).mean()))
            energy.append(float(pred.square().mean() / true.square().mean()))
    return {"model": cfg.model, "config": cfg.to_dict(), "params": n_params(model), "curve": curve,
            "rollout_rel_l2": per_step, "rollout_energy_ratio": energy,
            "train_time_s": curve[-1]["time_s"], "final_test_one_step_rel_l2": curve[-1]["test_one_step_rel_l2"]}


def plot(arms: list[dict], path: Path, title: str) -> None:
    curves = [([c["step"] for c in a["curve"]], [c["test_one_step_rel_l2"] for c in a["curve"]], "-",
               f"{a['model']} ({a['params']:,} params)") for a in arms]
    rolls = [(list(range(1, len(a["rollout_rel_l2"]) + 1)), a["rollout_rel_l2"], "-", a["model"]) for a in arms]
    two_panels(path, title, [
        {"xlabel": "step", "ylabel": "test one-step rel. L2", "title": "training", "scale": "semilogy", "series": curves},
        {"xlabel": "rollout step", "ylabel": "rel. L2", "title": "autoregressive rollout", "series": rolls}])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="8^3 grid, tiny models, 20 steps")
    p.add_argument("--grid", type=int, default=32)
    p.add_argument("--n-train", type=int, default=20)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--frames", type=int, default=80)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rollout", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m_fields = {}
    if args.smoke:
        args.grid, args.n_train, args.n_test, args.frames, args.steps, args.rollout = 8, 3, 1, 12, 20, 10
        m_fields = {"d_model": 24, "n_heads": 2, "head_dim": 8, "n_iter": 3}
    device = torch.device(args.device)
    t0 = time.time()
    u, params = navier_stokes_3d(args.n_train + args.n_test, grid=args.grid, n_steps=args.frames,
                                 forcing_k=min(3.0, args.grid / 3), seed=args.seed, device=device)
    gen_s = time.time() - t0
    u = u.to(device)
    train, test = u[:args.n_train], u[args.n_train:]
    dims = tuple(range(train.dim() - 1))
    mean, std = train.mean(dims), train.std(dims)  # per velocity component
    data = ((train - mean) / std, (test - mean) / std, mean, std)
    m_cfg = IFactFormerConfig(**m_fields)
    o_cfg = matched_o_config(m_cfg)
    arms = [train_arm(cfg, data, args, device) for cfg in (m_cfg, o_cfg)]
    tag = device_tag(args.device, args.smoke)
    result = {"benchmark": "ifactformer_3d", "device": tag, "torch": torch.__version__, "commit": git_commit(),
              "args": vars(args) | {"out": str(args.out)}, "data": params, "generation_s": gen_s, "arms": arms}
    marks = [s for s in (1, 10, 25, 50) if s <= len(arms[0]["rollout_rel_l2"])]
    lines = ["| model | params | final one-step rel L2 | " + " | ".join(f"rollout step {s}" for s in marks)
             + " | energy ratio at the last step | train s |",
             "|---|---:|---:|" + "---:|" * len(marks) + "---:|---:|"]
    for a in arms:
        lines.append(f"| {a['model']} | {a['params']:,} | {a['final_test_one_step_rel_l2']:.4f} | "
                     + " | ".join(f"{a['rollout_rel_l2'][s - 1]:.4f}" for s in marks)
                     + f" | {a['rollout_energy_ratio'][-1]:.3f} | {a['train_time_s']:.0f} |")
    md = "\n".join(lines) + "\n"
    write_all(args.out / f"ifactformer_3d-{tag}", result,
              f"IFactFormer -m vs -o, 3-D forced turbulence {args.grid}^3 ({tag}, {args.steps} steps)", md,
              lambda png: plot(arms, png, f"IFactFormer -m vs -o at equal parameters, {args.grid}^3, {tag}"))

if __name__ == "__main__":
    main()
