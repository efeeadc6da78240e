"""Every registered token mixer on the long-range tasks (listops, recall, long-copy, block-cross) at
one sequence length: accuracy, training tokens/s and peak memory per mixer, one file set per task.

Each (task, mixer) is one run of the library's compare function (:func:`formers.bench.compare.
compare`, the code behind ``formers compare TASK --models PRESET``; one seed) in its own process,
``--jobs`` at a time, round-robin over the visible GPUs (``CUDA_VISIBLE_DEVICES`` set per job) and
killed after ``--run-timeout`` seconds. Mixers are the registry's attention entries that mix tokens,
each through its preset (the preset of the same name; softmax -> ``baseline``, kv ->
``kv-attention``, kv-pos -> ``kv-attention-pos``, lowrank-softmax -> ``lowrank``,
memory-attention -> ``memoryformer``). The tasks run with ``arch=auto``: an encoder, or a decoder
for a causal-only mixer (streaming), so every mixer runs every task.

Resumable: a finished job leaves ``<work>/<task>-<len>-<settings hash>/<preset>/job.json`` and is
not run again with the same settings (a killed or failed one is); the compare run folders inside
resume through the trainer. After each job the task's results are rewritten atomically:
``<out>/lra-<device>-<task>-<len>.json``, ``.md`` (table) and ``.png`` (accuracy and tokens/s).

    # tiny CPU check (a minute)
    .venv/bin/python benchmarks/lra_compare.py --smoke
    # GPU (see BENCHMARKS.md for the setting chosen for 4k on two H200s)
    python benchmarks/lra_compare.py --device cuda --seq-len 4096 --tasks listops,recall,long-copy \\
        --steps 400 --batch 16 --jobs 8 --run-timeout 240
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from formers.atomic import atomic_write, write_json, write_text  # noqa: E402

TASKS = ("listops", "recall", "long-copy", "block-cross")
# mixers whose preset has another name; every other mixer has a preset of its own name
PRESET_OF = {"softmax": "baseline", "kv": "kv-attention", "kv-pos": "kv-attention-pos",
             "lowrank-softmax": "lowrank", "memory-attention": "memoryformer"}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mixer_presets() -> dict[str, str]:
    """{preset: mixer} for every registered token-mixing attention with a preset."""
    import formers.nn  # noqa: F401
    from formers import registry

    models = set(registry.names("model"))
    out = {}
    for e in registry.entries("attention"):
        preset = PRESET_OF.get(e.name, e.name)
        if e.caps.mixes_tokens and preset in models:
            out[preset] = e.name
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS[:3]), help="comma list of " + ", ".join(TASKS))
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--models", default="", help="comma list of presets (default: every mixer's preset)")
    p.add_argument("--exclude", default="", help="comma list of presets to leave out")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=128)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--opt", action="append", default=[], help="extra task option key=value (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (spread round-robin over the GPUs)")
    p.add_argument("--run-timeout", type=float, default=600.0, help="wall-clock cap per run, seconds")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: cores / jobs)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "lra")
    p.add_argument("--smoke", action="store_true", help="tiny CPU setting (seq_len 64, 6 steps, 3 mixers)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one job (JSON spec)
    a = p.parse_args(argv)
    if a.smoke:
        a.device, a.seq_len, a.steps, a.batch, a.eval_every, a.warmup = "cpu", 64, 6, 4, 3, 1
        a.d_model, a.n_layers, a.n_heads, a.d_ff, a.val_size = 16, 1, 2, 32, 16
        a.models = a.models or "baseline,linear,sinkhorn"
        a.tasks = a.tasks if a.tasks != ",".join(TASKS[:3]) else ",".join(TASKS)
        a.opt = a.opt + ["block=16", "copy_len=8"]
        a.jobs, a.threads = max(a.jobs, 2), a.threads or 1
        if a.out == ROOT / "benchmarks" / "results":  # smoke results stay out of the results folder
            a.out = a.work / "smoke-results"
    for name in ("seq_len", "steps", "batch", "jobs", "d_model", "n_layers", "n_heads", "d_ff", "val_size"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if not a.run_timeout > 0:
        p.error(f"--run-timeout must be > 0, got {a.run_timeout}")
    bad = [t for t in a.tasks.split(",") if t not in TASKS]
    if bad:
        p.error(f"--tasks: unknown {bad}; allowed: {list(TASKS)}")
    return a


def task_options(a: argparse.Namespace, task: str) -> dict[str, Any]:
    """The task's options: shape, arch=auto, and the --opt pairs that the task accepts."""
    import inspect

    import yaml

    from formers import registry

    import formers.synthetic.longrange  # noqa: F401

    opts: dict[str, Any] = {"seq_len": a.seq_len, "d_model": a.d_model, "n_layers": a.n_layers,
                            "n_heads": a.n_heads, "d_ff": a.d_ff, "val_size": a.val_size, "arch": "auto"}
    accepted = inspect.signature(registry.get("task", task).obj).parameters
    for it in a.opt:
        k, eq, v = it.partition("=")
        if not eq:
            raise SystemExit(f"--opt: expected key=value, got {it!r}")
        if k in accepted:  # e.g. block= applies to block-cross only
            opts[k] = yaml.safe_load(v)
    return opts


def train_settings(a: argparse.Namespace) -> dict[str, Any]:
    return {"max_steps": a.steps, "batch_size": a.batch, "lr": a.lr, "warmup_steps": a.warmup,
            "eval_every": a.eval_every, "seed": a.seed, "device": a.device, "dtype": a.dtype, "quiet": True}


# ------------------------------------------------------------------------------------ one job
def run_one(spec: dict[str, Any]) -> None:
    """In a job process: compare(task, [preset]) with one seed; write job.json (atomically)."""
    import torch

    from formers.bench.compare import compare
    from formers.train.task import make_task

    import formers.nn  # noqa: F401
    import formers.synthetic.longrange  # noqa: F401

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    out = Path(spec["dir"])
    t0 = time.time()
    task = make_task(spec["task"], spec["seed"], spec["options"])
    train = task.default_train().replace(**spec["train"])
    res = compare(spec["task"], [spec["preset"]], 1, train, out / "compare", spec["options"])
    row = res["rows"][0]
    run = res["runs"][spec["preset"]][0]
    cuda = torch.cuda.is_available() and spec["train"]["device"] != "cpu"
    write_json(out / "job.json", {
        "status": "ok", "preset": spec["preset"], "mixer": spec["mixer"], "task": spec["task"],
        "metric": res["metric"], "val_acc": row.get("val_acc"), "val_seq_acc": run.get("val_seq_acc"),
        "val_loss": run.get("val_loss"), "params": row.get("params"), "tokens_per_s": row.get("tokens_per_s"),
        "peak_mem_mb": row.get("peak_mem_mb"), "steps": run.get("steps"), "train_wall_s": run.get("wall_time_s"),
        "job_wall_s": time.time() - t0, "chance": res["task_info"].get("chance_acc"),
        "stored_value_acc": res["task_info"].get("stored_value_acc"),
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "settings": spec["key"]})


# --------------------------------------------------------------------------------- scheduling
def gpus(device: str) -> list[str]:
    """The GPUs to spread jobs over ([] on CPU): CUDA_VISIBLE_DEVICES' entries, else 0..n-1."""
    if device == "cpu":
        return []
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return [g for g in vis.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def device_tag(device: str, gpu_list: list[str]) -> str:
    if not gpu_list:
        return "cpu"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu_list[0]}
    code = "from formers.bench.attention import device_tag; print(device_tag('cuda'))"
    r = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT / "src")},
                       capture_output=True, text=True)
    return r.stdout.strip() or "cuda"


def settings_key(a: argparse.Namespace, task: str) -> dict[str, Any]:
    return {"task": task, "options": task_options(a, task), "train": train_settings(a)}


def job_dir(a: argparse.Namespace, task: str, preset: str) -> Path:
    h = hashlib.sha1(json.dumps(settings_key(a, task), sort_keys=True).encode()).hexdigest()[:8]
    return a.work / f"{task}-{a.seq_len}-{h}" / preset


def done(d: Path) -> dict[str, Any] | None:
    f = d / "job.json"
    if f.is_file():
        rec = json.loads(f.read_text())
        if rec.get("status") == "ok":
            return rec
    return None


def schedule(a: argparse.Namespace, jobs: list[dict[str, Any]], on_done) -> None:
    """Run ``jobs`` ``a.jobs`` at a time, GPU round-robin, each capped at ``a.run_timeout`` s."""
    gl = gpus(a.device)
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    pending, running, slot = list(jobs), [], 0
    while pending or running:
        while pending and len(running) < a.jobs:
            spec = {**pending.pop(0), "threads": threads}
            d = Path(spec["dir"])
            d.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
            if gl:
                env["CUDA_VISIBLE_DEVICES"] = gl[slot % len(gl)]
            slot += 1
            log = open(d / "job.log", "w")
            proc = subprocess.Popen([sys.executable, __file__, "--one", json.dumps(spec)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            running.append((proc, spec, time.time(), log))
            say(f"start {spec['task']} {spec['preset']}" + (f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if gl else ""))
        time.sleep(0.5)
        for item in list(running):
            proc, spec, t0, log = item
            timed_out = time.time() - t0 > a.run_timeout
            if proc.poll() is None and not timed_out:
                continue
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
            running.remove(item)
            d = Path(spec["dir"])
            rec = done(d)
            if rec is None:
                tail = (d / "job.log").read_text(errors="replace").strip().splitlines()[-3:]
                rec = {"status": "timeout" if timed_out else "error", "preset": spec["preset"],
                       "mixer": spec["mixer"], "task": spec["task"], "job_wall_s": time.time() - t0,
                       "note": (f"killed after {a.run_timeout:.0f} s" if timed_out else " | ".join(tail))[-300:]}
                write_json(d / "job.json", rec)
            say(f"done  {spec['task']} {spec['preset']}: {rec['status']} "
                f"acc={rec.get('val_acc')} tok/s={rec.get('tokens_per_s')} ({rec['job_wall_s']:.0f} s)")
            on_done(spec["task"])


# ------------------------------------------------------------------------------------ results
def write_task(a: argparse.Namespace, task: str, presets: dict[str, str], tag: str) -> Path:
    """lra-<tag>-<task>-<len>.json/.md/.png from the job records found so far."""
    import torch

    from formers.train.trainer import git_commit

    rows = []
    for preset, mixer in presets.items():
        f = job_dir(a, task, preset) / "job.json"
        rec = json.loads(f.read_text()) if f.is_file() else {"status": "pending"}
        rows.append({"preset": preset, "mixer": mixer, **{k: v for k, v in rec.items() if k not in ("preset", "mixer")}})
    ok = [r for r in rows if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["status"] != "ok", -(r.get("val_acc") or 0.0)))
    stem = a.out / f"lra-{tag}-{task}-{a.seq_len}"
    key = settings_key(a, task)
    result = {"benchmark": "lra_compare", "task": task, "seq_len": a.seq_len, "device": tag,
              "device_name": ok[0]["device_name"] if ok else None, "torch": torch.__version__,
              "commit": git_commit(), "chance": ok[0]["chance"] if ok else None,
              "stored_value_acc": ok[0].get("stored_value_acc") if ok else None,
              "task_options": key["options"], "train": key["train"], "jobs": a.jobs,
              "run_timeout_s": a.run_timeout, "rows": rows,
              "command": "python benchmarks/lra_compare.py " + " ".join(sys.argv[1:])}
    write_json(stem.with_suffix(".json"), result)
    lines = [f"LRA-style `{task}` at seq_len {a.seq_len} on {result['device_name'] or tag} "
             f"(torch {result['torch']}, commit {result['commit']}); {a.steps} steps x batch {a.batch}, "
             f"d_model {a.d_model}, {a.n_layers} layers, {a.n_heads} heads; chance {result['chance']}"
             + (f"; answering a random stored value: {result['stored_value_acc']:.3f} (the level of a model "
                "that has not learned key matching)" if result["stored_value_acc"] else "") + ".", "",
             "| preset | mixer | status | val_acc | val_seq_acc | tokens/s | peak MiB | params | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    for r in rows:
        lines.append(f"| {r['preset']} | {r['mixer']} | {r['status']} | {f(r.get('val_acc'), '.3f')} | "
                     f"{f(r.get('val_seq_acc'), '.3f')} | {f(r.get('tokens_per_s'), '.0f')} | "
                     f"{f(r.get('peak_mem_mb'), '.0f')} | {f(r.get('params'), 'd')} | {f(r.get('job_wall_s'), '.0f')} |")
    write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    if ok:
        plot(ok, result, stem.with_suffix(".png"))
    return stem


def plot(ok: list[dict[str, Any]], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r["preset"] for r in ok]
    ax1.barh(names, [r["val_acc"] for r in ok], color="tab:blue")
    if result["chance"] is not None:
        ax1.axvline(result["chance"], color="gray", ls="--", label="chance")
        ax1.legend()
    ax1.set_xlabel("val_acc")
    ax1.invert_yaxis()
    ax2.scatter([r["tokens_per_s"] or 0 for r in ok], [r["val_acc"] for r in ok])
    for r in ok:
        ax2.annotate(r["preset"], (r["tokens_per_s"] or 0, r["val_acc"]), fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("training tokens/s")
    ax2.set_ylabel("val_acc")
    fig.suptitle(f"{result['task']} at seq_len {result['seq_len']} ({result['device_name']})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.one:
        run_one(json.loads(a.one))
        return 0
    allp = mixer_presets()
    want = [m for m in a.models.split(",") if m] or list(allp)
    unknown = [m for m in want if m not in allp]
    if unknown:
        raise SystemExit(f"--models: {unknown} are not mixer presets; known: {sorted(allp)}")
    drop = [m for m in a.exclude.split(",") if m]
    if [m for m in drop if m not in allp]:
        raise SystemExit(f"--exclude: {[m for m in drop if m not in allp]} are not mixer presets; known: {sorted(allp)}")
    presets = {m: allp[m] for m in want if m not in drop}
    tasks = a.tasks.split(",")
    tag = device_tag(a.device, gpus(a.device))
    jobs = []
    for task in tasks:
        key = settings_key(a, task)
        for preset, mixer in presets.items():
            d = job_dir(a, task, preset)
            if done(d) is None:
                jobs.append({"task": task, "preset": preset, "mixer": mixer, "dir": str(d), "seed": a.seed,
                             "options": key["options"], "train": key["train"], "key": key})
    say(f"{len(jobs)} runs to do ({len(tasks) * len(presets) - len(jobs)} done before), {a.jobs} at a time")
    t0 = time.time()
    schedule(a, jobs, lambda task: write_task(a, task, presets, tag))
    for task in tasks:
        say(f"written {write_task(a, task, presets, tag)}.{{json,md,png}}")
    say(f"wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
