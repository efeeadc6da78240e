"""``formers compare odebench``: several symbolic-regression models on ODEBench under the paper's
noise and subsampling settings, in one table.

Source: d'Ascoli et al., "ODEFormer: Symbolic Regression of Dynamical Systems with Transformers"
(arXiv 2310.05573), section 4 (ODEBench; robustness to noise and to subsampling).

Models (:func:`make_fit`): ``sindy`` and ``gplearn`` (:mod:`formers.sciml.ode.baselines`) and
``odeformer`` (a trained model through :func:`formers.sciml.ode.predict.odeformer_fit`; options
``model=RUN_DIR``, ``device=...``, decoding options). Any other ``fit(t, x) -> system`` callable
can be passed to :func:`compare_odebench` directly.

Settings (:func:`one_at_a_time`): the paper varies one factor at a time, so ``noise`` levels run
with every point kept and ``subsample`` fractions run without noise: ``--noise 0,0.05
--subsample 0.5`` gives (0, 0), (0.05, 0) and (0, 0.5).

Results: ``OUT/odebench-NAME.json`` (settings, environment, per (model, setting): the summary by
dimension and the per-system records) and ``OUT/odebench-NAME.md`` (the table), both written
atomically after every finished (model, setting), so a long comparison can be split over several
calls: a re-run skips the pairs already in the file (same seed, systems and model options; other
ones are refused) and adds the rest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from formers.sciml.ode.odebench import BenchmarkConfig, FitFn, load_odebench, run_benchmark

MODELS = ("odeformer", "sindy", "gplearn")


def make_fit(name: str, options: dict[str, Any] | None = None) -> FitFn:
    """The ``fit(t, x) -> system`` of a named model with its options.

    Raises:
        ValueError: unknown model name or option. FileNotFoundError: the odeformer model folder
            does not exist.
    """
    options = dict(options or {})
    if name == "odeformer":
        from formers.sciml.ode.predict import ODEFormerFitConfig, odeformer_fit

        fields = set(ODEFormerFitConfig.__dataclass_fields__)
        bad = sorted(set(options) - fields)
        if bad:
            raise ValueError(f"odeformer: unknown option(s) {bad}; allowed: {sorted(fields)}")
        cfg = ODEFormerFitConfig(**options)
        if not Path(cfg.model).exists():  # fail before 63 fits that would each score 0
            raise FileNotFoundError(f"odeformer: model folder {cfg.model} not found; train one with "
                                    "`formers train ode` and pass --opt odeformer.model=RUN_DIR")
        return lambda t, x: odeformer_fit(t, x, cfg)
    if name in ("sindy", "gplearn"):
        from formers.sciml.ode.baselines import get_baseline

        return get_baseline(name, **options)
    raise ValueError(f"unknown ODEBench model {name!r}; available: {', '.join(MODELS)}")


def parse_floats(text: str | None, what: str) -> list[float]:
    """``"0,0.05"`` -> ``[0.0, 0.05]`` (empty/None -> []); ValueError naming ``what`` otherwise."""
    try:
        return [float(v) for v in (text or "").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def parse_model_options(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["gplearn.generations=20", "odeformer.model=runs/x"]`` -> ``{model: {option: value}}``
    (values read as YAML scalars); ValueError for an item that is not ``model.option=value``."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not (eq and dot and model and name):
            raise ValueError(f"--opt: expected model.option=value (e.g. gplearn.generations=20), got {item!r}")
        out.setdefault(model, {})[name.replace("-", "_")] = yaml.safe_load(value)
    return out


def one_at_a_time(noise: Sequence[float] = (0.0,), subsample: Sequence[float] = ()) -> list[tuple[float, float]]:
    """(noise, subsample) settings varying one factor at a time (see the module docstring)."""
    out: list[tuple[float, float]] = []
    for n in noise:
        out.append((float(n), 0.0))
    for s in subsample:
        out.append((0.0, float(s)))
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    if not unique:
        raise ValueError(f"no setting to run: --noise {list(noise)} and --subsample {list(subsample)} are both "
                         f"empty; give e.g. --noise 0,0.05")
    for n, s in unique:
        BenchmarkConfig(noise=n, subsample=s)  # validates before any work
    return unique


def compare_odebench(models: Sequence[str] | dict[str, FitFn], settings: Sequence[tuple[float, float]],
                     out: str | Path = "benchmarks/results", name: str | None = None, seed: int = 0,
                     ids: Sequence[int] = (), options: dict[str, dict[str, Any]] | None = None,
                     progress: Callable[[str], None] | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Run every model under every setting on ODEBench; write and return the result (see the
    module docstring). ``models``: names for :func:`make_fit` or a dict name -> fit callable.

    Raises:
        ValueError: unknown model/option, bad setting, or a result file made with another seed,
            other systems or other options for a model it holds results of (before any work).
    """
    from formers.atomic import write_json, write_text
    from formers.info import system_info

    fits = dict(models) if isinstance(models, dict) else {
        m: make_fit(m, (options or {}).get(m)) for m in models}
    if not fits:
        raise ValueError("no model to compare")
    name = name or "-".join(fits)
    out = Path(out)
    path = out / f"odebench-{name}.json"
    systems = load_odebench(data_dir, ids=tuple(ids))
    sys_ids = [s.id for s in systems]
    result: dict[str, Any] = {"benchmark": "ODEBench (ODEFormer, arXiv 2310.05573)", "seed": seed,
                              "ids": sys_ids, "results": []}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("seed") != seed or old.get("ids") != sys_ids:
            raise ValueError(f"{path} holds results for another seed ({old.get('seed')}) or other systems; "
                             f"write to another folder (--out) or name, or delete it")
        result = old
    done = {(r["model"], r["noise"], r["subsample"]) for r in result["results"]}
    before, now = result.get("options") or {}, options or {}
    for m in fits:  # a resumed file must not mix (or mislabel) results of other model options
        if any(r["model"] == m for r in result["results"]) and (before.get(m) or {}) != (now.get(m) or {}):
            raise ValueError(f"{path} holds {m} results made with options {before.get(m) or {}}, not "
                             f"{now.get(m) or {}}; write to another folder (--out) or name, or delete it")
    result["system"] = system_info()
    result["options"] = {**before, **{k: v for k, v in now.items()}}
    for noise, sub in settings:
        for m, fit in fits.items():
            if (m, noise, sub) in done:
                continue
            t0 = time.perf_counter()
            r = run_benchmark(fit, BenchmarkConfig(noise=noise, subsample=sub, seed=seed), systems, progress)
            result["results"].append({"model": m, "noise": noise, "subsample": sub,
                                      "seconds": round(time.perf_counter() - t0, 1),
                                      "summary": r["summary"], "records": r["records"]})
            write_json(path, result)
            write_text(path.with_suffix(".md"), table_markdown(result))
            if progress is not None:
                s = r["summary"]["all"]
                progress(f"{m} noise {noise} subsample {sub}: reconstruction {s['acc_reconstruction']:.3f} "
                         f"generalisation {s['acc_generalization']:.3f} ({s['mean_fit_seconds']:.2f} s/system)")
    result["files"] = {"json": str(path), "md": str(path.with_suffix(".md"))}
    return result


def table_markdown(result: dict[str, Any]) -> str:
    """Accuracy at R² > 0.9 (reconstruction / generalisation) overall and by dimension, and the
    mean fit time per system, one row per (model, setting)."""
    dims = sorted({k for r in result["results"] for k in r["summary"] if k != "all"})
    head = ["model", "noise", "dropped", "n", "rec. all", "gen. all"]
    head += [f"rec./gen. {d.replace('dim', 'dim ')}" for d in dims] + ["s/system"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["results"]:
        s = r["summary"]
        row = [r["model"], f"{r['noise']:g}", f"{r['subsample']:.0%}", str(s["all"]["n"]),
               f"{s['all']['acc_reconstruction']:.3f}", f"{s['all']['acc_generalization']:.3f}"]
        row += [f"{s[d]['acc_reconstruction']:.2f} / {s[d]['acc_generalization']:.2f} (n={s[d]['n']})"
                if d in s else "-" for d in dims]
        row.append(f"{s['all']['mean_fit_seconds']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    note = (f"\nODEBench, {len(result['ids'])} systems, seed {result['seed']}. Accuracy = fraction with "
            "R² > 0.9 of the prediction integrated from the observed (rec.) and the second (gen.) "
            "initial condition; noise is multiplicative; 'dropped' = fraction of points removed.\n")
    return "\n".join(lines) + "\n" + note
