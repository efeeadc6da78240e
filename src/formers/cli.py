"""The ``formers`` command line: list, info, train, eval, generate, compare, bench.

Built with tyro from typed functions and the config dataclasses. Every training flag of
:class:`~formers.train.config.TrainConfig` is a flag (``--max-steps``, ``--seed``, ``--device``,
``--quiet`` ...); unset flags take the task's default budget. A YAML file (``--config``) may hold
``model:``, ``train:`` and ``task:`` sections; flags override it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import tyro

from formers.explain.command import explain_cmd
from formers.train.config import TrainConfig


def _load_all() -> None:
    """Import every part so the registry is complete."""
    import formers.nn  # noqa: F401
    import formers.sciml  # noqa: F401
    import formers.synthetic  # noqa: F401
    import formers.text  # noqa: F401
    import formers.timeseries  # noqa: F401


def _field_help() -> dict[str, str]:
    """TrainConfig's ``Attributes:`` entries as one-line flag help (reST roles and quotes dropped)."""
    import re

    import docstring_parser

    doc = docstring_parser.parse(TrainConfig.__doc__ or "")
    plain = lambda text: re.sub(r":\w+:`([^`]*)`", r"\1", " ".join(text.split())).replace("``", "")  # noqa: E731
    return {p.arg_name: plain(p.description or "") for p in doc.params}


def _flags_class() -> type:
    """TrainConfig's fields as optional flags (None = the task's default), each with its help."""
    hints = typing.get_type_hints(TrainConfig)
    helps = _field_help()
    fields = []
    for f in dataclasses.fields(TrainConfig):
        tp = hints[f.name]
        text = helps.get(f.name, "")
        if tp is bool:
            fields.append((f.name, Annotated[bool, tyro.conf.arg(help=text)], dataclasses.field(default=False)))
        else:
            fields.append((f.name, Annotated[Optional[tp], tyro.conf.arg(help=text, help_behavior_hint="(default: the task's)")],
                           dataclasses.field(default=None)))
    return dataclasses.make_dataclass("TrainFlags", fields)


TrainFlags = _flags_class()


def _pairs(items: tuple[str, ...], what: str) -> dict[str, Any]:
    """``key=value`` strings to a dict; values parsed as YAML scalars/lists (``8``, ``true``, ``[a,b]``)."""
    import yaml

    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"{what}: expected key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def _yaml_file(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; ValueError (with the parser's position) if it is not one."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping (key: value lines), got {type(data).__name__}")
    return data


def _read_yaml(path: Optional[Path]) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"--config file not found: {path}")
    data = _yaml_file(path)
    bad = sorted(set(data) - {"model", "train", "task"})
    if bad:
        raise ValueError(f"{path}: unknown section(s) {bad}; allowed: model, train, task")
    return data


def _train_config(task, flags, yaml_train: dict[str, Any], variant: Optional[str] = None) -> TrainConfig:
    """The task's budget for ``variant`` (its recipe, :meth:`Task.recipe_train`), then the YAML
    ``train:`` section, then the flags."""
    base = (task.default_train() if variant is None else task.recipe_train(variant)).to_dict()
    base.update(yaml_train)
    base.update({k: v for k, v in dataclasses.asdict(flags).items() if v is not None and v is not False})
    return TrainConfig.from_dict(base)


def _task_options(cfg: dict[str, Any], data: tuple[str, ...], opt: tuple[str, ...]) -> dict[str, Any]:
    options = dict(cfg.get("task", {}))
    options.update(_pairs(opt, "--opt"))
    if data:
        options["data"] = list(data)
    return options


def list_cmd(kind: tyro.conf.Positional[Optional[str]] = None) -> None:
    """Print the registry (every part, its paper and capabilities), optionally one KIND only."""
    from rich.console import Console
    from rich.table import Table

    from formers import registry

    _load_all()
    table = Table(title="formers registry" + (f": {kind}" if kind else ""))
    console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: do not squeeze
    tasks = kind == "task"  # tasks also show their --opt names and defaults
    for col in ("kind", "name", "summary", "paper", "capabilities", "backend") + (("options (--opt)",) if tasks else ()):
        table.add_column(col, overflow="fold")
    for e in registry.entries(kind):
        table.add_row(*registry.as_row(e).values(), *((_task_option_list(e.obj),) if tasks else ()))
    console.print(table)


def _task_option_list(cls: type) -> str:
    """``name=default`` for each keyword a task class takes (what ``--opt`` accepts)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return ", ".join(f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
                     for p in params if p.name not in ("self", "seed")
                     and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def info_cmd() -> None:
    """Print torch version, device, threads and which attention backends work here (and why not)."""
    from rich.console import Console
    from rich.table import Table

    from formers.info import backend_report, system_info

    c = Console()
    for k, v in system_info().items():
        c.print(f"[bold]{k}[/bold]: {v}")
    t = Table(title="attention backends")
    for col in ("device", "backend", "usable", "why"):
        t.add_column(col, overflow="fold")
    for r in backend_report():
        t.add_row(*r.values())
    c.print(t)


def train_cmd(
    task: tyro.conf.Positional[str],
    flags: tyro.conf.OmitArgPrefixes[TrainFlags],  # type: ignore[valid-type]
    model: Optional[str] = None,
    out: Optional[Path] = None,
    resume: bool = False,
    config: Optional[Path] = None,
    data: tuple[str, ...] = (),
    set: tuple[str, ...] = (),
    opt: tuple[str, ...] = (),
) -> None:
    """Train MODEL (a registered model variant) on TASK; writes a run folder with summary.json.

    Args:
        task: a registered task (see `formers list task`).
        model: model variant (see `formers list model`); default: the task's first default model.
        out: run folder (default runs/TASK-MODEL-seedS).
        resume: continue the run in --out from its last checkpoint.
        config: YAML with optional model:, train:, task: sections.
        data: files or folders for tasks that read data (e.g. lm).
        set: model config overrides, e.g. --set d_model=256 n_layers=6.
        opt: task options, e.g. --opt seq_len=256.
    """
    from formers.registry import get
    from formers.train.task import configure_model, make_task_for
    from formers.train.trainer import Trainer

    _load_all()
    cfg_file = _read_yaml(config)
    seed = flags.seed if flags.seed is not None else cfg_file.get("train", {}).get("seed", 0)
    model = model or get("task", task).obj.default_models[0]
    init = getattr(flags, "init_from", None) or cfg_file.get("train", {}).get("init_from")
    if init is not None and not resume:  # before the task reads or generates its data
        from formers.train.checkpoint import checkpoint_folder

        if checkpoint_folder(init) is None:
            raise FileNotFoundError(f"--init-from {init}: no checkpoint there; pass a `formers train` run "
                                    f"folder or its ckpt/ folder")
    t = make_task_for(task, seed, _task_options(cfg_file, data, opt), model)
    mcfg = configure_model(t, model, {**cfg_file.get("model", {}), **_pairs(set, "--set")})
    tcfg = _train_config(t, flags, cfg_file.get("train", {}), model)
    recipe = t.recipe_record(mcfg, tcfg)
    if isinstance(getattr(t, "source", None), str) and not tcfg.quiet:
        print(f"formers: data: {t.source}", file=sys.stderr)
    if recipe is not None and not tcfg.quiet:
        changed = f"; changed: {recipe['changed']}" if recipe.get("changed") else ""
        print(f"formers: {model} trains with its recipe: {recipe['summary']}{changed}", file=sys.stderr)
    out = out or Path("runs") / f"{task}-{model}-seed{tcfg.seed}"
    summary = Trainer(t, mcfg, tcfg, out, resume=resume).fit()
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, indent=2))


def _run_task(run: Path, require: Optional[type] = None, why: str = ""):
    """The task and model of a run folder (written by the trainer). ``require``: a task class
    the run's task must be (checked from config.yaml before the task and its data are built;
    ``why`` starts the error)."""
    from formers.registry import get
    from formers.train.checkpoint import find_checkpoint, verify_checkpoint
    from formers.train.task import check_same_task, make_task

    run = Path(run)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {run} a formers run folder?")
    cfg = _yaml_file(cfg_path)
    desc = cfg.get("task", {})
    if not isinstance(desc, dict) or "task" not in desc:
        raise ValueError(f"{cfg_path} has no task section: is {run} a formers run folder?")
    seed = cfg.get("train", {}).get("seed", 0)
    if require is not None and not issubclass(get("task", desc["task"]).obj, require):
        raise ValueError(f"{why}; {run} is a run of task {desc['task']!r}")
    task = make_task(desc["task"], seed, desc.get("options", {}))
    check_same_task(desc, task, f"{run} cannot be evaluated as it was trained")
    ckpt = find_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"{run} holds no checkpoint (ckpt/): the run has not saved yet")
    verify_checkpoint(ckpt)
    return task, task.load_model(ckpt), cfg


def eval_cmd(run: tyro.conf.Positional[Path], device: str = "cpu", batches: Optional[int] = None,
             batch_size: Optional[int] = None) -> None:
    """Evaluate a run folder's latest checkpoint on its task's validation data and print the metrics.

    Args:
        batches / batch_size: default to the run's eval_batches / batch_size, so the numbers
            match the run's own final evaluation.
    """
    from formers.train.trainer import resolve_device

    _load_all()
    task, model, cfg = _run_task(run)
    train = cfg.get("train", {})
    dev = resolve_device(device)
    n = batches or train.get("eval_batches", 16)
    bs = batch_size or train.get("batch_size", 32)
    print(json.dumps(task.evaluate(model.to(dev), n, bs, dev), indent=2))


def generate_cmd(
    run: tyro.conf.Positional[Path],
    prompt: str = "def ",
    max_new_tokens: Optional[int] = None,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_tokens: tuple[int, ...] = (),
    seed: int = 0,
    device: str = "auto",
    static_cache: bool = False,
    compile: bool = False,
) -> None:
    """Continue PROMPT with a trained byte-level LM (a run folder's latest checkpoint).

    Args:
        device: auto (CUDA when present), cpu, cuda, cuda:N.
        max_new_tokens: default: fill the model's context (max_seq_len - prompt length).
        temperature: 0 = greedy. top_k: 0 = off. top_p: 1.0 = off (nucleus sampling below 1).
        stop_tokens: token ids that end generation (bytes: e.g. 10 for a newline).
        static_cache: fixed-size key/value buffers written in place (the same tokens as the
            default growing cache; see formers.nn.generate).
        compile: compile the per-token step (needs --static-cache; CUDA graphs on CUDA).
    """
    import torch

    from formers.nn.generate import SamplingConfig, generate
    from formers.text.tokenizer import ByteTokenizer

    from formers.text.task import LMTask
    from formers.train.trainer import resolve_device

    _load_all()
    dev = resolve_device(device)
    task, model, _ = _run_task(run, LMTask, "generate continues text with a byte-level LM")
    if not isinstance(task, LMTask):
        raise ValueError(f"generate continues text with a byte-level LM; {run} is a run of task "
                         f"{type(task).__name__}")
    tok = ByteTokenizer()
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("--prompt must not be empty")
    room = model.cfg.max_seq_len - len(ids)
    n_new = room if max_new_tokens is None else max_new_tokens
    if room < 1 or n_new > room:
        raise ValueError(f"prompt of {len(ids)} bytes + max_new_tokens {n_new} exceeds the "
                         f"model's max_seq_len {model.cfg.max_seq_len}")
    s = SamplingConfig(max_new_tokens=n_new, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_tokens=list(stop_tokens))
    g = torch.Generator(device=dev).manual_seed(seed)
    x = torch.tensor([ids], device=dev)
    # greedy draws nothing (and under compile a generator would be a graph break)
    out = generate(model.to(dev), x, s, generator=g if temperature > 0 else None,
                   static_cache=static_cache, compile=compile)
    print(tok.decode(out[0]))


def _compare_odebench(models: Optional[str], seed: int, out: Optional[Path], opt: tuple[str, ...],
                      noise: Optional[str], subsample: Optional[str], id_list: Optional[str] = None) -> None:
    """``formers compare odebench``: symbolic-regression models on ODEBench (no training)."""
    from rich.console import Console
    from rich.markdown import Markdown

    from formers.sciml.ode.compare import (compare_odebench, one_at_a_time, parse_floats,
                                           parse_model_options, table_markdown)

    settings = one_at_a_time(parse_floats(noise or "0", "--noise"), parse_floats(subsample, "--subsample"))
    names = [m.strip() for m in (models or "sindy,gplearn").split(",") if m.strip()]
    ids: list[int] = []
    given = [("--opt ids", o.partition("=")[2]) for o in opt if o.partition("=")[0].strip() == "ids"]
    for flag, text in given + ([("--ids", id_list)] if id_list is not None else []):
        try:
            these = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{flag}: expected comma-separated ODEBench ids (1..63), got {text!r}") from None
        if not these:  # an empty list would silently run all 63 systems
            raise ValueError(f"{flag}: expected comma-separated ODEBench ids (1..63), got {text!r}")
        ids += these
    c = Console(stderr=True)
    result = compare_odebench(names, settings, out or Path("runs") / "compare-odebench", seed=seed, ids=ids,
                              options=parse_model_options([o for o in opt if o.partition("=")[0].strip() != "ids"]),
                              progress=c.print)
    Console().print(Markdown(table_markdown(result)))
    print(f"written: {result['files']['json']}, {result['files']['md']}")


def compare_cmd(
    task: tyro.conf.Positional[str],
    flags: tyro.conf.OmitArgPrefixes[TrainFlags],  # type: ignore[valid-type]
    models: Optional[str] = None,
    seeds: int = 1,
    out: Optional[Path] = None,
    config: Optional[Path] = None,
    data: tuple[str, ...] = (),
    set: tuple[str, ...] = (),
    opt: tuple[str, ...] = (),
    noise: Optional[str] = None,
    subsample: Optional[str] = None,
    horizons: Optional[str] = None,
    ids: Optional[str] = None,
) -> None:
    """Train each model on TASK with the same data, seeds and evaluation, each with its own
    training recipe where the task declares one (flags override it for every model); print and
    save one table (compare.md / compare.json), one plot of validation curves (compare.png) and,
    for tasks that have one, a plot of predictions on held-out examples (examples.png).

    Args:
        models: comma-separated model variants (default: the task's default set).
        seeds: seeds per model (--seed S gives S..S+N-1, default 0..N-1); mean ± std and a Welch
            p-value against the first model.
        out: output folder (default runs/compare-TASK). Re-running resumes unfinished runs from
            their last checkpoint and refuses changed settings.
        noise / subsample (task odebench): comma-separated noise levels and fractions of
            points dropped, varied one at a time; models odeformer, sindy, gplearn;
            --opt model.option=value (e.g. odeformer.model=RUN), --ids 1,5,7 (or --opt ids=1,5,7)
            for a subset of the 63 systems; results in OUT (default
            runs/compare-odebench)/odebench-MODELS.json/.md (formers.sciml.ode.compare).
        horizons: comma-separated horizons (tasks with a ``horizon`` option only): one comparison
            per horizon in OUT/hH, and one table over all of them (OUT/compare-horizons.md/.json).
    """
    if task == "odebench":
        return _compare_odebench(models, flags.seed or 0, out, opt, noise, subsample, ids)
    if ids is not None:
        raise ValueError(f"--ids selects ODEBench systems (compare odebench), not a part of task {task!r}")
    from rich.console import Console
    from rich.markdown import Markdown

    from formers.bench.compare import table_markdown

    _load_all()
    cfg_file = _read_yaml(config)
    options = _task_options(cfg_file, data, opt)
    out = out or Path("runs") / f"compare-{task}"
    c = Console()
    if horizons is None:
        result = _compare_one(task, models, seeds, flags, cfg_file, set, options, out)
        c.print(Markdown(table_markdown(result)))
        info = result["task_info"]
        if "unigram_entropy_bpb" in info:
            c.print(f"unigram entropy of the training corpus: {info['unigram_entropy_bpb']:.3f} bits/byte "
                    f"(a model that ignores context scores this)")
        c.print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'compare.png'}")
        return
    import inspect

    from formers.atomic import write_json, write_text
    from formers.bench.compare import sweep_table
    from formers.registry import get

    values = _horizon_list(horizons)
    if "horizon" in options:
        raise ValueError("--horizons and --opt horizon=... both set the horizon; give one")
    if "horizon" not in inspect.signature(get("task", task).obj.__init__).parameters:
        raise ValueError(f"--horizons needs a task with a horizon option (e.g. forecast); task "
                         f"{task!r} has none")
    results = {}
    for h in values:
        results[h] = _compare_one(task, models, seeds, flags, cfg_file, set, {**options, "horizon": h},
                                  out / f"h{h}")
    sweep = sweep_table("horizon", results)
    sweep["examples_png"] = {h: r.get("examples_png") for h, r in results.items()}
    write_json(out / "compare-horizons.json", sweep)
    write_text(out / "compare-horizons.md", sweep["markdown"])
    c.print(Markdown(sweep["markdown"]))
    c.print(f"written: {out / 'compare-horizons.md'}, {out / 'compare-horizons.json'}, "
            f"and per horizon {out}/hH/compare.md, examples.png")


def _horizon_list(text: str) -> list[int]:
    """``96,192`` -> [96, 192]; ValueError for an empty, repeated or non-positive entry."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--horizons takes comma-separated positive ints, got {text!r}") from None
    if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--horizons takes distinct comma-separated positive ints, got {text!r}")
    return values


def _compare_one(task: str, models: Optional[str], seeds: int, flags, cfg_file: dict[str, Any],
                 set: tuple[str, ...], options: dict[str, Any], out: Path) -> dict[str, Any]:
    """One ``formers compare``: every model with its own recipe (the task's per-model budget),
    the YAML train section and the flags on top."""
    from formers.bench.compare import compare
    from formers.registry import get
    from formers.train.task import check_variant, make_task_for

    names = ([m.strip() for m in models.split(",")] if models is not None
             else list(get("task", task).obj.default_models))
    if len(names) != len(dict.fromkeys(names)):
        raise ValueError(f"compare: models {names} name a model more than once")
    for m in names:  # every name before any task builds (and perhaps generates) its data
        check_variant(task, m)
    trains = {m: _train_config(make_task_for(task, 0, options, m), flags, cfg_file.get("train", {}), m)
              for m in names}
    overrides = {**cfg_file.get("model", {}), **_pairs(set, "--set")}
    return compare(task, names, seeds, trains, out, options, overrides or None)


def bench_attention_cmd(
    device: str = "auto",
    lengths: tuple[int, ...] = (),
    min_len: int = 256,
    max_len: int = 0,
    mixers: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    causal: bool = False,
    batch: int = 1,
    n_heads: int = 8,
    head_dim: int = 64,
    dtype: str = "auto",
    warmup: int = 2,
    repeats: int = 5,
    time_limit: float = 60.0,
    threads: int = 0,
    opt: tuple[str, ...] = (),
    modes: tuple[str, ...] = ("fwd", "fwd+bwd"),
    force_flex: bool = False,
    cpu_flex_compile: str = "",
    isolate: bool = True,
    out: Path = Path("benchmarks/results"),
    quiet: bool = False,
) -> None:
    """Time and peak memory vs sequence length of every registered token mixer beside softmax
    SDPA, fwd and fwd+bwd; writes attention_scaling-DEVICE[-causal].json/.md/.png in --out (see
    formers.bench.attention for what is measured and how).

    Args:
        lengths: explicit lengths (default: powers of 2 from --min-len to --max-len; max 8192 on
            CPU, 32768 on CUDA).
        mixers / exclude: registry names to run / to leave out (default: every mixer that can run).
        causal: decoder (causal) mode instead of bidirectional.
        dtype: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.
        time_limit: seconds per case; a longer first call is a timeout and larger lengths of that
            mixer are skipped.
        opt: mixer options, e.g. --opt linformer.k=128.
        modes: fwd and/or fwd+bwd.
        force_flex: mixers with a flex path use it (FlexAttention on CPU too).
        cpu_flex_compile: torch.compile backend for the flex path on CPU (eager, aot_eager,
            inductor; forward only). The tables show the torch.compile graphs compiled per length.
        isolate: CPU: one forked process per case (--no-isolate: one process, compile caches kept).
    """
    import yaml
    from rich.console import Console
    from rich.markdown import Markdown

    from formers.bench.attention import AttentionBenchConfig, sweep, table_markdown, write_results

    _load_all()
    options: dict[str, dict[str, Any]] = {}
    for it in opt:  # mixer names keep their dashes (not _pairs, which turns keys into identifiers)
        key, eq, value = it.partition("=")
        mixer, dot, name = key.strip().partition(".")
        if not (eq and dot and mixer and name):
            raise ValueError(f"--opt: expected mixer.option=value, got {it!r}")
        options.setdefault(mixer, {})[name.replace("-", "_")] = yaml.safe_load(value)
    cfg = AttentionBenchConfig(device=device, lengths=lengths, min_len=min_len, max_len=max_len,
                               mixers=mixers, exclude=exclude, causal=causal, batch=batch,
                               n_heads=n_heads, head_dim=head_dim, dtype=dtype, warmup=warmup,
                               repeats=repeats, time_limit_s=time_limit, threads=threads, options=options,
                               modes=modes, force_flex=force_flex, cpu_flex_compile=cpu_flex_compile,
                               isolate=isolate)
    result = sweep(cfg, progress=None if quiet else Console(stderr=True).print)
    paths = write_results(result, out)
    if not quiet:
        Console().print(Markdown(table_markdown(result)))
    print(f"written: {paths['json']}, {paths['md']}, {paths['png']}")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _device_tag(device: str) -> str:
    """The device part of a benchmark's result file name for ``--device``."""
    from formers.bench.attention import device_tag
    from formers.train.trainer import resolve_device

    return device_tag(str(resolve_device(device)))


def bench_train_cmd(
    preset: str = "tiny",
    models: str = "baseline",
    peers: str = "",
    batch_size: Optional[int] = None,
    seq_len: Optional[int] = None,
    vocab: Optional[int] = None,
    fused_ce_chunk: int = 0,
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    compile: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False,
    no_compile: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False,
    compile_mode: str = "default",
    dtype: str = "auto",
    device: str = "auto",
    peak_tflops: Optional[float] = None,
    sdpa_backend: str = "auto",
    interleave: bool = True,
    threads: int = 0,
    seed: int = 0,
    tag: str = "",
    time_limit: float = 0.0,
    inductor: tuple[str, ...] = (),
    profile_steps: int = 0,
    out: Path = Path("benchmarks/results"),
    compare: Optional[Path] = None,
    quiet: bool = False,
) -> None:
    """Training throughput (tokens/s, step time, peak memory, MFU) of model variants and peers
    (HF GPT-2, x-transformers) measured in the same process on random tokens; writes
    train_bench-DEVICE-PRESET.json/.md/.png in --out (see formers.bench.train).

    Args:
        preset: gpt2-small | gpt2-medium | tiny (CPU).
        models: comma list of model presets (formers list model); NAME@G = MatFormer granularity G, NAME@all = every granularity; suffixes ~unfused (separate Q, K, V GEMMs) and ~fusedce (chunked fused LM head + cross-entropy), combinable. Empty: peers only.
        peers: comma list of hf, xtransformers (pip install 'formers[peers]').
        batch_size: default: the preset's (16 for gpt2-*, 8 for tiny).
        seq_len: default: the preset's (1024 for gpt2-*, 128 for tiny).
        vocab: vocabulary size (padded to a multiple of 64); default: the preset's (50257 for gpt2-*, 512 for tiny).
        fused_ce_chunk: tokens per chunk of the ~fusedce entries' loss (0: formers.nn.linear_ce's default).
        steps: measured steps per window.
        warmup: steps before measuring (compilation happens here).
        repeats: windows per entry, interleaved across entries (A,B,C,A,B,C).
        compile: torch.compile the loss (model + cross-entropy) of every entry; the default
            compiles on CUDA only (inductor's CPU code was ~7x slower than eager for the tiny preset).
        no_compile: run every entry eagerly.
        compile_mode: default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs.
        dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.
        peak_tflops: device peak for MFU (default: the known-GPU table; CPU: none).
        sdpa_backend: auto | flash | cudnn | efficient | math (for every entry).
        interleave: keep all entries resident and interleave windows (--no-interleave: one at a
            time, freed in between).
        tag: appended to the result file name (train_bench-DEVICE-PRESET-TAG).
        time_limit: seconds; entries not built by then are skipped and the others measured and written (0: none).
        inductor: torch._inductor.config settings KEY=VALUE for this run, e.g. coordinate_descent_tuning=true.
        profile_steps: after measuring, profile this many steps of each entry (torch.profiler):
            kernel time by category (GEMM, attention, fused triton, optimizer, copies), GPU busy
            fraction and top kernels, in the JSON and the markdown (0: no profile).
        compare: a stored train_bench JSON; prints the per-row change (refused when this run
            would overwrite it: give another --out or a --tag).
    """
    from formers.bench.results import refuse_overwrite
    from formers.bench.train import (TrainBenchConfig, compare_records, read_record, run_bench,
                                     table_markdown)

    _load_all()
    if compile and no_compile:
        raise ValueError("give --compile or --no-compile, not both")
    old = read_record(compare) if compare is not None else None
    cfg = TrainBenchConfig(preset=preset, models=_csv(models), peers=_csv(peers), batch_size=batch_size,
                           seq_len=seq_len, vocab_size=vocab, fused_ce_chunk=fused_ce_chunk, steps=steps, warmup=warmup, repeats=repeats,
                           compile=True if compile else (False if no_compile else None),
                           compile_mode=compile_mode, dtype=dtype, device=device, peak_tflops=peak_tflops,
                           sdpa_backend=sdpa_backend, interleave=interleave, threads=threads, seed=seed,
                           tag=tag, time_limit_s=time_limit, inductor=inductor, profile_steps=profile_steps)
    if old is not None:  # the run must not overwrite the result it is compared against
        from formers.bench.train import result_stem

        refuse_overwrite(compare, out, result_stem({"device_tag": _device_tag(device), "preset": preset, "tag": tag}),
                         "pass another --out or a --tag")
    progress = None if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    record, paths = run_bench(cfg, out, progress)
    print(table_markdown(record))
    if old is not None:
        print(compare_records(old, record))
    print(f"written: {paths['json']}, {paths['md']}, {paths['png']}")


def bench_decode_cmd(
    preset: str = "tiny",
    batch: str = "1,4",
    prompt: str = "32",
    new_tokens: int = 64,
    ours: str = "eager,static,compiled",
    peers: str = "hf",
    hf_static: bool = True,
    warmup: int = 1,
    repeats: int = 3,
    dtype: str = "auto",
    compile_mode: str = "reduce-overhead",
    cache_len: Optional[int] = None,
    check_fp32: Optional[bool] = None,
    device: str = "auto",
    threads: int = 0,
    seed: int = 0,
    out: Path = Path("benchmarks/results"),
    compare: Optional[Path] = None,
    quiet: bool = False,
) -> None:
    """Decoding speed: time to first token and decode tokens/s of our generate (eager full cache,
    static cache, static cache + torch.compile) beside HF transformers generate on the same
    weights, same process, greedy; outputs compared with HF's; writes
    decode_bench-DEVICE-PRESET.json/.md in --out (see formers.bench.decode).

    Args:
        preset: gpt2-small | gpt2-medium | tiny (max_seq_len raised to hold prompt + new tokens).
        batch: comma list of batch sizes.
        prompt: comma list of prompt lengths.
        new_tokens: tokens generated per sequence (>= 2).
        ours: comma list of eager, static, compiled.
        peers: hf (transformers GPT-2 generate, dynamic cache; plus its static cache unless --no-hf-static), or empty for ours only (pip install 'formers[peers]').
        hf_static: also run HF with cache_implementation='static' (it compiles itself on CUDA).
        warmup: untimed generations per entry and configuration (compilation happens here).
        repeats: timed rounds (medians).
        dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.
        compile_mode: torch.compile mode of 'compiled' on CUDA (reduce-overhead = CUDA graphs).
        cache_len: static buffer length for static / compiled (default: prompt + new tokens rounded up to 256; one length = one compiled graph per batch size).
        check_fp32: True / False: compare eager vs HF greedy outputs again in fp32 (default: on CUDA when the dtype is not fp32).
        compare: a stored decode_bench JSON; prints the change per (batch, prompt, entry) (refused
            when this run would overwrite it: give another --out).
    """
    from formers.bench.decode import (DecodeBenchConfig, compare_records, read_record, result_stem, run_bench,
                                      table_markdown)
    from formers.bench.results import refuse_overwrite

    old = read_record(compare) if compare is not None else None

    def ints(text: str, name: str) -> tuple[int, ...]:
        try:
            return tuple(int(t) for t in _csv(text))
        except ValueError:
            raise ValueError(f"--{name}: expected comma-separated ints, got {text!r}") from None

    peer_rows: list[str] = []
    for p in _csv(peers):
        if p == "hf":
            peer_rows += ["hf"] + (["hf-static"] if hf_static else [])
        else:
            peer_rows.append(p)
    cfg = DecodeBenchConfig(preset=preset, batch=ints(batch, "batch"), prompt=ints(prompt, "prompt"),
                            new_tokens=new_tokens, ours=_csv(ours), peers=tuple(peer_rows), warmup=warmup,
                            repeats=repeats, dtype=dtype, compile_mode=compile_mode, cache_len=cache_len,
                            check_fp32=check_fp32,
                            device=device, threads=threads, seed=seed)
    if old is not None:
        refuse_overwrite(compare, out, result_stem({"device_tag": _device_tag(device), "preset": preset}))
    progress = None if quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    record, paths = run_bench(cfg, out, progress)
    print(table_markdown(record))
    if old is not None:
        print(compare_records(old, record))
    print(f"written: {paths['json']}, {paths['md']}")


BENCH_COMMANDS = {
    "attention": bench_attention_cmd,
    "train": bench_train_cmd,
    "decode": bench_decode_cmd,
}


def bench_cmd() -> None:
    """Benchmarks: ``formers bench attention`` (token mixers vs sequence length), ``formers bench
    train`` (training throughput, MFU and peers), ``formers bench decode`` (time to first token and
    decoding tokens/s against HF generate). ``formers bench SUBCOMMAND --help`` for flags."""
    raise ValueError("formers bench needs a subcommand: " + " | ".join(BENCH_COMMANDS))


def data_cmd(
    kind: tyro.conf.Positional[typing.Literal["pde", "ode"]],
    out: Path,
    equation: str = "ns2d",
    n_samples: int = 16,
    grid: Optional[int] = None,
    nu: Optional[float] = None,
    dt: Optional[float] = None,
    n_steps: Optional[int] = None,
    record_dt: Optional[float] = None,
    shard_size: Optional[int] = None,
    seed: int = 0,
    device: str = "auto",
    threads: int = 0,
    opt: tuple[str, ...] = (),
    samples: Optional[int] = None,
    workers: int = 1,
    first_shard: int = 0,
    quiet: bool = False,
) -> None:
    """Generate a data set into --out. ``pde``: PDE trajectories as safetensors shards and a
    meta.json of every parameter (formers.sciml.pde.shards); re-running the same command resumes
    at the first missing shard, a changed setting is refused. ``ode``: ODEFormer's random ODE
    systems with trajectories as JSON-lines shards and a meta.json (formers.sciml.ode.generate),
    made by --workers processes; finished shards are skipped on a re-run; --opt takes any
    GeneratorConfig field (e.g. --opt max_dim=2 max_prefix_len=200).

    Args:
        equation: ns2d (Kolmogorov-flow vorticity, FactFormer's data), ns3d (forced isotropic
            turbulence velocity, 3-D), burgers (1-D, FNO's setting).
        n_samples: trajectories (pde) or systems (ode).
        shard_size: samples per shard (pde: one batch on the device; ode: default the folder's
            own, else min(1000, --samples); whole shards are written).
        samples: ode: systems to generate (same as --n-samples).
        workers: ode: generator processes.
        first_shard: ode: index of the first shard, to split one data set over several runs.
        grid / nu / dt / n_steps / record_dt: default: the equation's (see NS2DConfig, NS3DConfig,
            BurgersConfig in formers.sciml.pde).
        device: auto (cuda if present), cpu, cuda, cuda:N.
        threads: torch CPU threads (0 = torch's default; 1 is fastest on a busy machine).
        opt: other generator settings, e.g. --opt drag=0.1 burn_in=2 dtype=float64.
    """
    if kind == "ode":
        from formers.sciml.ode.generate import GeneratorConfig, generate_dataset

        cfg = GeneratorConfig.from_dict(_pairs(opt, "--opt"))
        summary = generate_dataset(out, samples if samples is not None else n_samples, cfg, seed=seed,
                                   shard_size=shard_size, workers=workers,
                                   first_shard=first_shard, progress=not quiet)
        print(json.dumps(summary))
        print(f"written: {out} (meta.json, shard-*.jsonl)")
        return
    import torch

    from formers.sciml.pde.shards import generate_shards

    if threads < 0:
        raise ValueError(f"--threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    params = {k: v for k, v in dict(grid=grid, nu=nu, dt=dt, n_steps=n_steps, record_dt=record_dt).items()
              if v is not None}
    extra = _pairs(opt, "--opt")
    both = sorted(set(params) & set(extra))
    if both:
        raise ValueError(f"--opt sets {both}, which are also given as flags; give each once")
    meta = generate_shards(equation, out, n_samples, seed=seed, shard_size=shard_size, device=device,
                           quiet=quiet, **params, **extra)
    print(f"written: {out} ({meta['n_samples']} samples of shape {tuple(meta['sample_shape'])} "
          f"in {meta['n_shards']} shards, meta.json)")


def ode_cmd(
    action: tyro.conf.Positional[typing.Literal["fit"]],
    trajectory: tyro.conf.Positional[Path],
    out: Optional[Path] = None,
    model: Optional[Path] = None,
    method: typing.Literal["sampling", "beam"] = "sampling",
    beam_size: int = 10,
    temperature: float = 0.1,
    refine: bool = False,
    rescale: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> None:
    """ODEFormer. ``fit TRAJECTORY.csv``: discover the ODE system of a trajectory file (first
    column time, one column per state; header optional); prints the equations and their R² on
    the data, writes equations.txt, fit.json and fit.png to --out (formers.sciml.ode.fit).

    Args:
        out: output folder (default runs/ode-fit-STEM).
        model: a `formers train ode` run folder or a model folder (default runs/ode-odeformer-seed0).
        method / beam_size / temperature: sampling (paper README: 50 samples at 0.1) or beam
            search; every parsed candidate is integrated and the best R² kept.
        refine: BFGS refinement of the constants (an extra; scipy).
        rescale: the paper's time/state rescaling before encoding (--no-rescale skips it).
    """
    from formers.sciml.ode.fit import fit_csv
    from formers.sciml.ode.predict import DecodeConfig
    from formers.train.trainer import resolve_device

    _load_all()
    dev = resolve_device(device)
    decode = DecodeConfig(method=method, beam_size=beam_size, temperature=temperature, refine=refine,
                          rescale=rescale, seed=seed)
    rec = fit_csv(trajectory, out, model, decode, device=dev)
    names = rec["variables"]
    print("\n".join(rec["readable"]))
    if rec["readable"] != rec["equations"]:
        print("as decoded: " + "; ".join(rec["equations"]))
    print("variables: " + ", ".join(f"{k} = {v}" for k, v in names.items()))
    print(f"R2 on the data: {rec['r2']:.6f}")
    print(f"written: {rec['out']}/equations.txt, fit.json, fit.png")


COMMANDS = {
    "list": list_cmd,
    "info": info_cmd,
    "train": train_cmd,
    "eval": eval_cmd,
    "generate": generate_cmd,
    "compare": compare_cmd,
    "bench": bench_cmd,
    "data": data_cmd,
    "ode": ode_cmd,
    "explain": explain_cmd,
}


REPEATABLE = ("--data", "--set", "--opt", "--mixers", "--exclude")


def merge_repeated(argv: list[str]) -> list[str]:
    """Join repeated multi-value flags (``--opt a=1 --opt b=2``) into one (``--opt a=1 b=2``) at
    the place of the first, which is how the parser reads them; otherwise only the last
    occurrence would count."""
    values: dict[str, list[str]] = {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, first = argv[i].partition("=")
        i += 1
        if flag not in REPEATABLE:
            out.append(argv[i - 1])
            continue
        if flag not in values:
            values[flag] = []
            out.append(flag)
        values[flag] += [first] if eq else []
        while i < len(argv) and not argv[i].startswith("--"):
            values[flag].append(argv[i])
            i += 1
    return [t for tok in out for t in ([tok] + values.pop(tok, []) if tok in REPEATABLE else [tok])]


def main(argv: list[str] | None = None) -> int:
    argv = merge_repeated(list(sys.argv[1:] if argv is None else argv))
    try:
        if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] in (*BENCH_COMMANDS, "--help", "-h"):
            # `formers bench SUB ...`: a second level of subcommands
            tyro.extras.subcommand_cli_from_dict(BENCH_COMMANDS, args=argv[1:], prog="formers bench")
            return 0
        tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="formers")
    except (ValueError, TypeError, OSError) as e:  # FileNotFoundError, PermissionError, ...
        print(f"formers: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
