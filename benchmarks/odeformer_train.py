"""ODEFormer on one GPU within a few 10-minute calls: generate data, train (resumable), evaluate
on ODEBench beside SINDy and gplearn.

Four phases, each a separate command so that each fits one call (gen, train and bench resume):

    # 1. data: the paper's generator (dims 1..4) on every CPU core, as shards (resumable)
    .venv/bin/python benchmarks/odeformer_train.py gen --samples 120000 --workers 16
    # 2. training: `formers train ode` on the shard folders, killed cleanly at --minutes and resumed
    #    by the next call (same command) from its last checkpoint; --init-from RUN starts a new run
    #    from RUN's weights (e.g. on more data than RUN saw); --copy-to fetches the model
    .venv/bin/python benchmarks/odeformer_train.py train --device cuda --minutes 8 --copy-to $OUT
    # 3. ODEBench: reconstruction / generalisation accuracy (R2 > 0.9) by dimension, ODEFormer
    #    beside SINDy and gplearn, at noise 0 and 0.05 and with 50% of the points dropped
    .venv/bin/python benchmarks/odeformer_train.py bench --device cuda --models odeformer,sindy,gplearn
    # 4. bench parts run side by side (--settings, --ids, --name per process) into one table
    .venv/bin/python benchmarks/odeformer_train.py merge --inputs parts/*.json --name H200
    # all of 1-3 in a minute on CPU (tiny data, tiny model, 3 ODEBench systems):
    .venv/bin/python benchmarks/odeformer_train.py all --smoke

Models: ``odeformer-gpu`` (d_model 256, 4 encoder / 6 decoder layers, 8 heads, point-token width
64, max_dimension 6: 15.0M parameters, of which 2.6M are the 10,234-token output embedding) and
``odeformer-paper`` (the paper's shape: d_model 512, 4 / 12 layers, 16 heads: 71.7M). The paper
trains on ~50M generated systems for days; the H200 run (benchmarks/BENCHMARKS.md, "ODEFormer
trained on the H200") saw 44,600 systems for ~12 minutes per model, overfitted them and scored
0-6% on ODEBench. Training uses the paper's corruption (noise up to 0.1, up to 50% of the points
dropped), AdamW with warm-up and cosine decay, gradient clipping at 1, bf16 autocast.

NaN on the H200 (torch 2.11, fixed in formers.nn.attention.core): the first runs diverged
("train loss is nan" at steps 453 and 603, lr 4e-4 and 2e-4) after a finite loss with a NaN
gradient norm, both times on a batch whose longest trajectory had 192 points. cuDNN attention,
torch 2.11's default SDPA kernel for masked attention on Hopper, returns NaN grad_q for an
explicit mask at key length 64 mod 128 (pytorch/pytorch#196678); the encoder's and the
cross-attention's padding masks hit it. ``attend`` now leaves cuDNN out of masked SDPA calls
that autograd differentiates; the runs since had no non-finite step.

Phase 3 is formers.sciml.ode.compare (the harness of `formers compare odebench`): it writes
OUT/odebench-NAME.json / .md atomically after every (model, setting), and a re-run skips the
pairs already done, so it too can span several calls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "runs" / "ode-shards"
RUN = ROOT / "runs" / "odeformer-gpu"


def gen(args) -> dict:
    from formers.sciml.ode.generate import GeneratorConfig, generate_dataset

    cfg = GeneratorConfig(max_dim=args.max_dim, max_prefix_len=args.max_tokens)
    t0 = time.perf_counter()
    summary = generate_dataset(args.data[-1], args.samples, cfg, seed=args.seed, shard_size=args.shard_size,
                               workers=args.workers, progress=not args.quiet)
    summary["samples_per_s"] = summary["samples"] / max(time.perf_counter() - t0, 1e-9)
    print(json.dumps(summary, indent=2))
    return summary


def train_command(args) -> list[str]:
    data = args.data[0] if len(args.data) == 1 else "[" + ",".join(map(str, args.data)) + "]"
    opts = [f"data={data}", f"max_dim={args.max_dim}", f"max_tokens={args.max_tokens}",
            f"noise={args.noise}", f"subsample={args.subsample}", f"eval_size={args.eval_size}",
            f"eval_decode={args.eval_decode}"]
    return [sys.executable, "-m", "formers", "train", "ode", "--model", args.variant, "--out", str(args.run),
            "--resume", "--device", args.device, "--max-steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", str(args.warmup),
            "--eval-every", str(args.eval_every), "--checkpoint-every", str(args.checkpoint_every),
            "--opt", *opts] + (["--quiet"] if args.quiet else []) + (
        ["--init-from", str(args.init_from)] if args.init_from else [])


def train(args) -> dict:
    """Run `formers train ode` until done or --minutes; a killed run resumes on the next call."""
    cmd = train_command(args)
    print(" ".join(cmd), file=sys.stderr)
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=args.minutes * 60).returncode
        status = "finished" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"stopped at {args.minutes} min: run the same command again to resume"
    state = Path(args.run) / "ckpt" / "state.json"
    step = json.loads(state.read_text())["step"] if state.is_file() else 0
    out = {"status": status, "checkpoint_step": step, "max_steps": args.steps}
    if args.copy_to is not None and step:
        import shutil

        dest = Path(args.copy_to) / Path(args.run).name
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("ckpt/config.json", "ckpt/model.safetensors", "summary.json", "metrics.jsonl",
                  "config.yaml", "loss.png"):
            if (Path(args.run) / f).is_file():
                shutil.copy2(Path(args.run) / f, dest / Path(f).name)
        out["copied_to"] = str(dest)
    print(json.dumps(out))
    return out


def bench(args) -> dict:
    """ODEBench through formers.sciml.ode.compare (resumable, atomic JSON/MD after each pair)."""
    from formers.sciml.ode.compare import compare_odebench, make_fit, parse_model_options

    odeformer = {"model": str(args.run), "device": args.device, "method": args.method,
                 "beam_size": args.beam_size, "temperature": args.temperature, "max_len": args.max_len}
    settings = parse_settings(args.settings)
    name = args.name or ("odeformer-smoke" if args.smoke
                         else f"{args.variant}-{'cpu' if args.device == 'cpu' else 'cuda'}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or len(set(models)) != len(models):
        raise ValueError(f"--models: expected distinct comma-separated names (odeformer, sindy, gplearn), "
                         f"got {args.models!r}")
    if "odeformer" in models and not Path(args.run).exists():
        raise FileNotFoundError(f"--run {args.run}: no trained model there; run the train phase first or "
                                f"pass --run RUN_DIR --variant VARIANT (or leave odeformer out of --models)")
    options = {**parse_model_options(args.opt), "odeformer": odeformer}
    label = {m: args.variant if m == "odeformer" else m for m in models}  # rows name the trained variant
    fits = {label[m]: make_fit(m, options.get(m)) for m in models}
    result = compare_odebench(fits, settings, args.results, name, args.seed, args.ids,
                              {label[m]: options[m] for m in models if m in options},
                              progress=None if args.quiet else lambda m: print(m, file=sys.stderr))
    for r in result["results"]:
        s = r["summary"]["all"]
        print(f"{r['model']:15s} noise {r['noise']:<4} drop {r['subsample']:<3}: reconstruction "
              f"{s['acc_reconstruction']:.3f} generalisation {s['acc_generalization']:.3f} "
              f"({s['mean_fit_seconds']:.2f} s/system)")
    print(f"written: {result['files']['json']}")
    return result


def parse_settings(text: str) -> list[tuple[float, float]]:
    """``"0/0,0.05/0,0/0.5"`` -> [(noise, dropped fraction), ...]."""
    try:
        return [(float(n), float(d)) for n, _, d in (p.partition("/") for p in text.split(","))]
    except ValueError:
        raise SystemExit(f"--settings: expected noise/dropped pairs like 0/0,0.05/0,0/0.5, got {text!r}")


def merge(args) -> dict:
    """Join result files of separate `bench` processes run side by side (one per model, setting
    or slice of --ids; same seed) into OUT/odebench-NAME.json / .md: the records of each (model,
    setting) are pooled and summarised again. Every (model, setting) must cover every system
    that any part covers."""
    from formers.atomic import write_json, write_text
    from formers.sciml.ode.compare import table_markdown
    from formers.sciml.ode.odebench import summarize

    parts = []
    for f in args.inputs:
        try:
            parts.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"merge: cannot read --inputs {f}: {e}") from None
    if not parts or any(p["seed"] != parts[0]["seed"] for p in parts):
        raise SystemExit(f"merge: need --inputs from bench runs with one seed, got {args.inputs} "
                         f"(seeds {[p['seed'] for p in parts]})")
    options: dict[str, tuple[str, dict]] = {}  # one model name = one set of options in every part
    for f, p in zip(args.inputs, parts):
        for m, o in (p.get("options") or {}).items():
            if not any(r["model"] == m for r in p["results"]):
                continue
            if m in options and options[m][1] != o:
                raise SystemExit(f"merge: model {m!r} ran with options {options[m][1]} in {options[m][0]} but "
                                 f"{o} in {f}; its rows would pool two different models (bench --name / "
                                 f"--variant keep them apart)")
            options.setdefault(m, (f, o))
    ids = sorted({i for p in parts for i in p["ids"]})
    groups: dict[tuple, dict] = {}
    for p in parts:
        for r in p["results"]:
            g = groups.setdefault((r["model"], r["noise"], r["subsample"]),
                                  {"model": r["model"], "noise": r["noise"], "subsample": r["subsample"],
                                   "seconds": 0.0, "records": []})
            g["seconds"] += r["seconds"]
            g["records"] += r["records"]
    for key, g in groups.items():
        got = [rec["id"] for rec in g["records"]]
        missing, twice = sorted(set(ids) - set(got)), sorted({i for i in got if got.count(i) > 1})
        if missing or twice:
            raise SystemExit(f"merge: {key[0]} at noise {key[1]}, dropped {key[2]}: "
                             + "; ".join(([f"lacks systems {missing} that other parts cover"] if missing else [])
                                         + ([f"has systems {twice} in more than one part"] if twice else [])))
        g["records"].sort(key=lambda rec: rec["id"])
        g["summary"] = summarize(g["records"])
    out = {"benchmark": parts[0]["benchmark"], "seed": parts[0]["seed"], "ids": ids,
           "results": [{k: g[k] for k in ("model", "noise", "subsample", "seconds", "summary", "records")}
                       for g in sorted(groups.values(), key=lambda g: (g["subsample"], g["noise"]))],
           "system": parts[0].get("system"),
           "options": {m: o for m, (_, o) in options.items()},
           "merged_from": [Path(f).name for f in args.inputs], "commit": args.commit}
    path = Path(args.results) / f"odebench-{args.name}.json"
    write_json(path, out)
    write_text(path.with_suffix(".md"), table_markdown(out))
    print(table_markdown(out))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=["gen", "train", "bench", "merge", "all"])
    p.add_argument("--smoke", action="store_true", help="tiny everything, CPU, about a minute")
    p.add_argument("--data", type=Path, nargs="+", default=[DATA],
                   help="shard folders (train joins them in order; gen writes to the last)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="train: start a new run from this run's weights (e.g. one trained on less data)")
    p.add_argument("--run", type=Path, default=RUN)
    p.add_argument("--samples", type=int, default=120_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--max-dim", type=int, default=4, help="ODEBench goes to 4 (paper generates 1..6)")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--variant", default="odeformer-gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--copy-to", type=Path, default=None,
                   help="after training, copy the model folder (config.json, model.safetensors) and the "
                        "run's summary/metrics here (e.g. $OUT, to fetch it)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--eval-decode", type=int, default=64)
    p.add_argument("--noise", type=float, default=0.1, help="training noise max (paper 0.1)")
    p.add_argument("--subsample", type=float, default=0.5, help="training drop max (paper 0.5)")
    p.add_argument("--models", default="odeformer,sindy,gplearn")
    p.add_argument("--method", default="sampling", choices=["sampling", "beam"])
    p.add_argument("--beam-size", type=int, default=50, help="paper README: 50 samples at 0.1")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--max-len", type=int, default=300,
                   help="bench: new tokens per candidate (training prefixes have at most --max-tokens)")
    p.add_argument("--settings", default="0/0,0.05/0,0/0.5",
                   help="bench: noise/dropped-fraction pairs (paper: one factor at a time)")
    p.add_argument("--name", default=None, help="bench/merge: results name (odebench-NAME.json)")
    p.add_argument("--inputs", nargs="*", default=[], help="merge: odebench-*.json files to join")
    p.add_argument("--commit", default=None, help="merge: the commit the parts ran at (recorded)")
    p.add_argument("--opt", nargs="*", default=[],
                   help="bench: baseline options, e.g. gplearn.generations=20 (odeformer's come from the flags)")
    p.add_argument("--ids", type=int, nargs="+", default=[],
                   help="ODEBench ids (1..63) to run (default all; an empty --ids is an error)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        smoke = ROOT / "runs" / "odeformer-smoke"
        args.data, args.run = [smoke / "shards"], smoke / "run"
        args.samples, args.workers, args.shard_size, args.max_dim = 24, 1, 12, 2
        args.variant, args.device, args.steps, args.batch_size = "odeformer-tiny", "cpu", 4, 8
        args.warmup, args.eval_every, args.checkpoint_every = 1, 4, 2
        args.eval_size, args.eval_decode, args.max_tokens = 8, 2, 60
        args.beam_size, args.ids, args.minutes, args.models = 2, args.ids or [1, 2, 24], 5, "odeformer,sindy"
        args.max_len = 100
        args.results = smoke
    for phase in (["gen", "train", "bench"] if args.phase == "all" else [args.phase]):
        try:
            {"gen": gen, "train": train, "bench": bench, "merge": merge}[phase](args)
        except (ValueError, FileNotFoundError) as e:  # bad input: one line, as the formers CLI does
            print(f"odeformer_train.py {phase}: error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
