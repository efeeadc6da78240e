"""LightTransfer at CPU size (Zhang et al., arXiv 2410.13846, §3-4): which layers of a small trained
byte LM can become streaming layers (attention sinks + a recent window) at the least cost, chosen
by the lazy ratio against the same number of layers chosen at random.

1. Train a small ``lm`` model (rope preset, seq_len 256, d_model 128, 6 layers; Trainer API) or
   reuse the one saved by an earlier run (``--reuse``).
2. LightTransfer-Test on validation windows: the first ``--prompt`` bytes are the prompt (full
   attention prefill, lazy ratio per layer with w_last queries), the rest is the continuation,
   decoded with half the layers (P = L/2 kept full) turned into streaming layers whose caches
   hold ``sinks + window - 1`` keys. Continuation bits per byte for: no conversion; the per-prompt
   lazy set (the paper's test-time choice); a fixed set counted over training prompts
   (LightTransfer-Train's choice, zero-shot); ``--draws`` random sets; and every one of the
   C(L, L/2) sets (the exact mean of a random choice, and the rank of the lazy-ratio choices).
3. Checks on a few prompts the real path (``prefill`` with online cuts, token-by-token decoding):
   logits equal the batched evaluation and ``KVCache.nbytes()`` equals the formula.
4. LightTransfer-Train: fine-tune the counted set (and one random set) with streaming masks for
   ``--ft-steps`` steps from the trained weights; full-window validation bpb before and after.

    .venv/bin/python benchmarks/lighttransfer.py [--steps 300 --reuse --threads 1]

Writes benchmarks/results/lighttransfer.json (device, torch version, threads, commit). About 6-8
minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import formers.nn  # noqa: F401
import formers.text.task  # noqa: F401
from formers.atomic import write_json
from formers.nn import load_model, save_model
from formers.nn.lighttransfer import (
    convert, count_lazy, kv_bytes_saved, kv_cache_bytes, prefill, select_lazy_layers,
)
from formers.train.task import make_task
from formers.train.trainer import Trainer, git_commit


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_base(task, args, out: Path):
    """The trained base model (saved under ``out`` and reused with --reuse)."""
    if args.reuse and (out / "config.json").is_file():
        say(f"reusing {out}")
        return load_model(out).eval(), None
    tc = task.default_train().replace(max_steps=args.steps, batch_size=args.batch, lr=args.lr,
                                      warmup_steps=30, eval_every=args.steps, eval_batches=8,
                                      checkpoint_every=args.steps, seed=args.seed, quiet=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        tr = Trainer(task, task.model_config(args.variant), tc, Path(d) / "run")
        summary = tr.fit()
        say(f"trained {args.steps} steps in {time.time() - t0:.0f}s: val_bpb {summary['val_bpb']:.3f}")
    model = tr.model.cpu().eval()
    save_model(model, out)
    return model, {"steps": args.steps, "wall_s": time.time() - t0, "val_bpb": summary["val_bpb"]}


def bpb(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).item() / math.log(2)


def copy_cache(cache):
    c = copy.copy(cache)
    c.layers = [copy.copy(x) for x in cache.layers]  # update() builds new tensors: shallow is enough
    return c


@torch.no_grad()
def continuation(model, cache, x, n_prompt, lazy, args, converted: dict):
    """Logits of the continuation x[:, n_prompt:] after a full prefill held in ``cache`` (uncut),
    with layers ``lazy`` streaming (decoding from the uncut cache equals decoding from the cut one:
    the streaming pattern never reads an evicted key; checked on real cuts in ``check_real_path``)."""
    key = tuple(sorted(lazy))
    if key not in converted:
        converted[key] = convert(model, key, args.sinks, args.window).eval()
    return converted[key](x[:, n_prompt:], cache=copy_cache(cache))


@torch.no_grad()
def check_real_path(model, x, args, P, batched_logits):
    """LightTransfer-Test as deployed on a few prompts: prefill with online cuts, decode token by
    token; compare with the batched numbers and the KV-byte formula."""
    rows = []
    for b in range(min(args.check, x.shape[0])):
        xb = x[b:b + 1]
        out = prefill(model, xb[:, :args.prompt], P, args.sinks, args.window, args.last)
        logits = [out.model(xb[:, i:i + 1], cache=out.cache) for i in range(args.prompt, xb.shape[1])]
        logits = torch.cat(logits, 1)
        err = (logits - batched_logits[b:b + 1]).abs().max().item()
        n = xb.shape[1]
        measured = out.cache.nbytes()
        formula = kv_cache_bytes(model.cfg, n, out.lazy, args.sinks, args.window)
        full = kv_cache_bytes(model.cfg, n)
        saved = kv_bytes_saved(model.cfg, n, len(out.lazy), args.sinks, args.window)
        assert measured == formula == full - saved, (measured, formula, full, saved)
        assert err < 1e-4, f"prompt {b}: real path differs from the batched evaluation by {err}"
        rows.append({"prompt": b, "lazy": out.lazy, "max_abs_logit_diff": err, "kv_bytes": measured,
                     "kv_bytes_formula": formula, "kv_bytes_full": full, "kv_bytes_saved": saved,
                     "kv_saved_fraction": saved / full})
    return rows


def fine_tune(task, model, lazy, args, tmp: Path, name: str) -> dict:
    """LightTransfer-Train: the converted config trained from the base weights for --ft-steps."""
    cfg = convert(model, lazy, args.sinks, args.window).cfg
    tc = task.default_train().replace(max_steps=args.ft_steps, batch_size=args.batch, lr=args.ft_lr,
                                      warmup_steps=10, eval_every=args.ft_steps, eval_batches=8,
                                      checkpoint_every=args.ft_steps, seed=args.seed, quiet=True)
    tr = Trainer(task, cfg, tc, tmp / name)
    tr.model.load_state_dict(model.state_dict())  # in place: the optimizer keeps its parameters
    before = task.evaluate(tr.model, 8, args.batch, torch.device("cpu"))["val_bpb"]
    t0 = time.time()
    summary = tr.fit()
    return {"lazy": sorted(lazy), "val_bpb_before": before, "val_bpb_after": summary["val_bpb"],
            "steps": args.ft_steps, "wall_s": time.time() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--variant", default="rope")
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--prompt", type=int, default=128, help="prompt bytes; the rest is the continuation")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--window", type=int, default=32, help="streaming window (keys kept: sinks + window - 1)")
    p.add_argument("--last", type=int, default=16, help="w_last: queries the lazy ratio averages over")
    p.add_argument("--windows", type=int, default=96, help="validation windows")
    p.add_argument("--calib", type=int, default=32, help="training prompts counted for the fixed set")
    p.add_argument("--draws", type=int, default=5, help="random layer sets")
    p.add_argument("--check", type=int, default=3, help="prompts run through the real prefill path")
    p.add_argument("--ft-steps", type=int, default=60)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="reuse runs/lighttransfer-base if present")
    p.add_argument("--base-dir", default="runs/lighttransfer-base")
    p.add_argument("--out", default="benchmarks/results/lighttransfer.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    task = make_task("lm", args.seed, {"seq_len": args.seq_len, "d_model": 128,
                                       "n_layers": args.n_layers, "n_heads": 4})
    model, trained = train_base(task, args, Path(args.base_dir))
    L = model.cfg.n_layers
    P = L // 2

    # validation windows (evenly spaced, as the task's evaluation) and training prompts
    val = task._val
    starts = torch.linspace(0, val.numel() - args.seq_len - 1, args.windows).long()
    x = val[starts[:, None] + torch.arange(args.seq_len)[None, :]]
    targets = val[starts[:, None] + torch.arange(args.prompt + 1, args.seq_len + 1)[None, :]]
    tr = task._train
    g = torch.Generator().manual_seed(args.seed + 1)
    cst = torch.randint(0, tr.numel() - args.prompt, (args.calib,), generator=g)
    calib = tr[cst[:, None] + torch.arange(args.prompt)[None, :]]

    # one full-attention prefill of every prompt: per-prompt ratios (P = L: nothing cut yet)
    t0 = time.time()
    pre = prefill(model, x[:, :args.prompt], L, args.sinks, args.window, args.last, convert_model=False)
    ratios = pre.head_ratios.mean(-1)                          # (L, windows)
    per_prompt = [tuple(select_lazy_layers(ratios[:, b].tolist(), P)) for b in range(x.shape[0])]
    converted: dict = {}

    def arm_bpb(sets) -> tuple[float, torch.Tensor]:
        """Continuation bpb when prompt b uses lazy set sets[b]; and the logits."""
        logits = torch.empty(x.shape[0], args.seq_len - args.prompt, model.cfg.vocab_size)
        for s in set(sets):
            rows = [b for b in range(x.shape[0]) if sets[b] == s]
            sub = copy_cache(pre.cache)
            for c in sub.layers:
                c.k, c.v = c.k[rows], c.v[rows]
            logits[rows] = continuation(model, sub, x[rows], args.prompt, s, args, converted)
        return bpb(logits, targets), logits

    full_bpb, _ = arm_bpb([()] * x.shape[0])
    test_bpb, test_logits = arm_bpb(per_prompt)
    fixed, counts = count_lazy(model, [calib[i:i + 1] for i in range(args.calib)], P, args.sinks,
                               args.window, args.last)
    fixed_bpb, _ = arm_bpb([tuple(fixed)] * x.shape[0])
    subsets = {s: arm_bpb([s] * x.shape[0])[0] for s in itertools.combinations(range(L), L - P)}
    rng = random.Random(args.seed)
    draws = [tuple(sorted(rng.sample(range(L), L - P))) for _ in range(args.draws)]
    draw_bpb = [subsets[d] for d in draws]
    ordered = sorted(subsets.values())
    t_eval = time.time() - t0
    say(f"continuation bpb: full {full_bpb:.4f}  lazy per prompt {test_bpb:.4f}  lazy fixed {fixed} "
        f"{fixed_bpb:.4f}  random {statistics.mean(draw_bpb):.4f} ± {statistics.stdev(draw_bpb):.4f}  "
        f"all {len(subsets)} sets: mean {statistics.mean(ordered):.4f} best {ordered[0]:.4f} "
        f"worst {ordered[-1]:.4f}  ({t_eval:.0f}s)")

    checks = check_real_path(model, x, args, P, test_logits)
    say(f"real path on {len(checks)} prompts: logits within {max(c['max_abs_logit_diff'] for c in checks):.1e}; "
        f"KV bytes {checks[0]['kv_bytes']} = formula, {100 * checks[0]['kv_saved_fraction']:.1f}% saved")

    with tempfile.TemporaryDirectory() as d:
        ft = {"lazy_fixed": fine_tune(task, model, fixed, args, Path(d), "fixed"),
              "random": fine_tune(task, model, list(draws[0]), args, Path(d), "random")}
        base_full_val = task.evaluate(model, 8, args.batch, torch.device("cpu"))["val_bpb"]
    for k, v in ft.items():
        say(f"train variant {k} {v['lazy']}: val_bpb {v['val_bpb_before']:.4f} -> {v['val_bpb_after']:.4f} "
            f"(base {base_full_val:.4f})")

    n = args.seq_len
    per_set_freq = {str(list(s)): per_prompt.count(s) for s in sorted(set(per_prompt))}
    result = {
        "benchmark": "lighttransfer", "paper": "arXiv 2410.13846 §3 (LightTransfer-Test/Train)",
        "device": "cpu", "torch": torch.__version__, "threads": args.threads, "commit": git_commit(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "model": model.cfg.to_dict(), "base_training": trained, "n_layers": L, "kept_full_P": P,
        "lazy_ratio_mean_per_layer": ratios.mean(1).tolist(),
        "lazy_ratio_std_per_layer": ratios.std(1).tolist(),
        "per_prompt_lazy_sets": per_set_freq,
        "fixed_lazy_set": fixed, "fixed_lazy_counts": counts,
        "continuation_bpb": {
            "full": full_bpb, "lazy_per_prompt": test_bpb, "lazy_fixed": fixed_bpb,
            "random_draws": {str(list(d)): b for d, b in zip(draws, draw_bpb)},
            "random_mean": statistics.mean(draw_bpb), "random_std": statistics.stdev(draw_bpb),
            "all_sets_mean": statistics.mean(ordered), "all_sets_best": ordered[0],
            "all_sets_worst": ordered[-1],
            "lazy_fixed_rank_of_all": 1 + sum(v < fixed_bpb for v in ordered),
            "all_sets": {str(list(s)): b for s, b in sorted(subsets.items(), key=lambda kv: kv[1])},
        },
        "continuation_bpb_change": {
            "lazy_per_prompt": test_bpb - full_bpb, "lazy_fixed": fixed_bpb - full_bpb,
            "random_mean": statistics.mean(draw_bpb) - full_bpb,
            "all_sets_mean": statistics.mean(ordered) - full_bpb,
        },
        "kv_bytes": {"tokens": n, "full": kv_cache_bytes(model.cfg, n),
                     "converted_formula": kv_cache_bytes(model.cfg, n, range(L - P), args.sinks, args.window),
                     "saved_formula": kv_bytes_saved(model.cfg, n, L - P, args.sinks, args.window),
                     "measured_on_real_path": checks},
        "train_variant": {"base_full_window_val_bpb": base_full_val, **ft},
        "eval_wall_s": t_eval, "total_wall_s": time.time() - t_start,
    }
    write_json(args.out, result)
    say(f"wrote {args.out} ({time.time() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
