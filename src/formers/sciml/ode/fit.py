"""``formers ode fit trajectory.csv``: discover the ODE system of a user's trajectory file.

The CSV holds a time column (the first column) and one column per state component, with or
without a header row. Every check (readable numbers, no NaN, at least two points, strictly
increasing time, no more state columns than the model's ``max_dimension`` nor than the largest
dimension it was trained on, its run's ``max_dim``) runs before the
model is loaded or any decoding starts. Outputs in ``--out``:

* ``equations.txt``: the discovered system, one equation per component in the CSV's column names
  after sympy's automatic simplification (``dx/dt = 0.49*x``; :func:`readable_equations`), the
  tree as decoded, and its R²;
* ``fit.json``: equations (as decoded, readable and prefix tokens), R², column names, every scored
  candidate, the model folder and the decoding settings;
* ``fit.png``: the data against the discovered system integrated from the first observation.

Decoding follows the paper (sampling with re-ranking by R² on the trajectory, in the data's
units; :func:`formers.sciml.ode.predict.fit_system`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from formers.sciml.ode import expr
from formers.sciml.ode import predict
from formers.sciml.ode.predict import DecodeConfig, Fit, check_trajectory

DEFAULT_RUN = Path("runs") / "ode-odeformer-seed0"


def read_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(t (n,), x (n, dim), column names)`` from a CSV file (first column = time).

    A first row with any non-numeric cell is a header (a UTF-8 byte-order mark is ignored).
    Raises FileNotFoundError for a missing file (or a folder) and ValueError naming the file, its
    line and column and the cell for: a file that is not UTF-8 text, an empty file, ragged rows,
    non-numeric cells, empty / NaN / infinite cells, time that does not strictly increase, and
    fewer than two columns (with a hint when the rows look separated by ``;``, tabs or spaces)."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"trajectory {path} is a folder; pass a CSV file")
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); write the trajectory "
                         f"as a comma-separated text file") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise ValueError(f"{path} is empty")

    def num(cell: str) -> float | None:
        try:
            return float(cell) if cell.strip() else math.nan
        except ValueError:
            return None

    header = [c.strip() for c in rows[0]] if any(num(c) is None for c in rows[0]) else None
    body = rows[1:] if header else rows
    width = len(header) if header else len(rows[0])
    if width < 2:
        sep = next((name for ch, name in ((";", "semicolons"), ("\t", "tabs"), (" ", "spaces"))
                    if ch in rows[0][0].strip()), None)
        hint = f" (its rows look separated by {sep}: formers reads commas)" if sep else ""
        raise ValueError(f"{path}: need a time column and at least one state column, got {width} "
                         f"column(s){hint}")
    names = header or ["t"] + [f"x_{j}" for j in range(width - 1)]
    data = np.empty((len(body), width))
    for i, r in enumerate(body):
        line = i + 1 + (header is not None)
        if len(r) != width:
            raise ValueError(f"{path}: line {line} has {len(r)} cells, expected {width}")
        for j, c in enumerate(r):
            v = num(c)
            where = f"{path}: line {line}, column {j + 1} ({names[j]!r})"
            if v is None:
                raise ValueError(f"{where}: {c!r} is not a number")
            if not math.isfinite(v):
                raise ValueError(f"{where}: " + (f"{c.strip()!r} is not a finite number" if c.strip()
                                                 else "the cell is empty"))
            data[i, j] = v
        if i and data[i, 0] <= data[i - 1, 0]:
            raise ValueError(f"{path}: line {line}: time must be strictly increasing; {names[0]} = "
                             f"{data[i, 0]:g} follows {data[i - 1, 0]:g} on line {line - 1}")
    return data[:, 0], data[:, 1:], names


def load_fit_model(run: str | Path | None):
    """The ODEFormer of ``run``: a model folder (``config.json`` + ``model.safetensors``) or a
    ``formers train ode`` run folder (its ``best/`` model if kept, else its last checkpoint).

    Raises FileNotFoundError (naming the command that makes one) when nothing is there."""
    from formers.sciml.ode.model import load_odeformer
    from formers.train.checkpoint import find_checkpoint

    folder = Path(run) if run is not None else DEFAULT_RUN
    for cand in (folder, folder / "best"):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return load_odeformer(cand), cand
    ckpt = find_checkpoint(folder) if folder.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"no trained ODEFormer in {folder}: train one with `formers train ode` "
                                f"(it writes {DEFAULT_RUN}) or pass --model RUN_OR_MODEL_FOLDER")
    return load_odeformer(ckpt), ckpt


def max_dimension_of(run: str | Path | None) -> int | None:
    """The model's ``max_dimension`` read from its config.json without building it (None if absent)."""
    import json

    folder = Path(run) if run is not None else DEFAULT_RUN
    for cand in (folder, folder / "best", folder / "ckpt"):
        if (cand / "config.json").is_file():
            cfg = json.loads((cand / "config.json").read_text())
            if not isinstance(cfg, dict) or "max_dimension" not in cfg:
                what = {k: cfg[k] for k in ("model", "arch", "task") if k in cfg} if isinstance(cfg, dict) else cfg
                raise ValueError(f"{cand / 'config.json'} is not an ODEFormer model (no max_dimension; "
                                 f"{what}): pass --model a `formers train ode` run or model folder")
            return int(cfg["max_dimension"]) or None
    return None


def trained_max_dim_of(run: str | Path | None) -> int | None:
    """The largest system dimension the model of ``run`` was trained on: the ``max_dim`` task
    option in the run's ``config.yaml`` (a `formers train ode` run folder, or its ``ckpt/`` or
    ``best/`` model folder); None when there is no such record (a bare model folder). A model
    trained on 1-D laws (``--opt family=laws``) has ``max_dimension`` 2 but never saw a 2-D system."""
    import yaml

    folder = Path(run) if run is not None else DEFAULT_RUN
    for cand in (folder / "config.yaml", folder.parent / "config.yaml"):
        if cand.is_file() and (cand.parent == folder or folder.name in ("ckpt", "best")):
            try:
                task = (yaml.safe_load(cand.read_text()) or {}).get("task") or {}
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
                return None
            dim = (task.get("options") or {}).get("max_dim") if task.get("task") == "ode" else None
            return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1 else None
    return None


def check_trained_dimension(x: np.ndarray, run: str | Path | None) -> None:
    """ValueError when ``x (n, dim)`` has more state columns than the run's model was trained on."""
    dim = trained_max_dim_of(run)
    if dim is not None and x.shape[1] > dim:
        folder = Path(run) if run is not None else DEFAULT_RUN
        raise ValueError(f"the trajectory has {x.shape[1]} state columns; the model in {folder} was trained "
                         f"on systems of dimension <= {dim} (task option max_dim = {dim}): train one with "
                         f"`formers train ode --opt max_dim={x.shape[1]}` or more")


def readable_equations(system: Any, names: list[str], digits: int = 4) -> list[str]:
    """``d<state>/dt = ...`` per component in the CSV's column names (``names``: time first, then
    one per state), after sympy's automatic simplification (constants folded, like terms
    collected) with ``digits`` significant digits; e.g. ``x_0' = (0.5 * (2 * x_0))`` with names
    ``["t", "pop"]`` reads ``dpop/dt = pop``. A name that is not an identifier shows in brackets
    (``d[x (m)]/dt``); names that repeat or are empty (``t,x,x``, or a state named like the time
    column) would merge different variables into one symbol, so then the model's own names
    ``t, x_0, x_1, ...`` are kept. Falls back to :func:`expr.to_str`'s line for a component sympy
    cannot convert."""
    import sympy as sp

    raw = expr.to_str(system).splitlines()
    try:
        exprs = expr.to_sympy(system)
    except (ValueError, TypeError, ArithmeticError):
        return raw
    dim = len(exprs)
    xs, t = expr._symbols(dim)
    shown = [str(n).strip() for n in (names[:1] or ["t"])]
    shown += [str(names[j + 1]).strip() if j + 1 < len(names) else f"x_{j}" for j in range(dim)]
    if any(not n for n in shown) or len(set(shown)) < len(shown):
        shown = ["t"] + [f"x_{j}" for j in range(dim)]
    shown = [n if n.isidentifier() else f"[{n}]" for n in shown]
    subs = {xs[j]: sp.Symbol(shown[j + 1]) for j in range(dim)}
    subs[t] = sp.Symbol(shown[0])
    lines = []
    for j, e in enumerate(exprs):
        try:
            e = e.xreplace(subs)
            e = e.xreplace({f: sp.Float(f, digits) for f in e.atoms(sp.Float)})
            lines.append(f"d{shown[j + 1]}/dt = {sp.sstr(e)}")
        except (ValueError, TypeError, ArithmeticError):
            lines.append(raw[j])
    return lines


def plot_fit(t: np.ndarray, x: np.ndarray, fit: Fit, names: list[str], path: Path) -> Path:
    """Data (markers) against the discovered system integrated from the first point (lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from formers.atomic import atomic_write

    grid = np.linspace(t[0], t[-1], max(200, len(t)))
    pred = expr.integrate(fit.system, x[0], grid, timeout_s=5.0) if fit.system is not None else None
    fig, ax = plt.subplots(figsize=(7, 4))
    for j in range(x.shape[1]):
        line = ax.plot(t, x[:, j], "o", ms=3, label=f"{names[j + 1]} (data)")[0]
        if pred is not None:
            ax.plot(grid, pred[:, j], "-", color=line.get_color(), label=f"{names[j + 1]} (discovered)")
    ax.set_xlabel(names[0])
    ax.set_title(f"ODEFormer fit, R² = {fit.r2:.4f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path


def fit_csv(trajectory: str | Path, out: str | Path | None = None, run: str | Path | None = None,
            decode: DecodeConfig | None = None, device: Any = "cpu") -> dict[str, Any]:
    """Read ``trajectory``, check it, fit it with the model of ``run`` and write the outputs.

    Returns the ``fit.json`` record (plus ``out``). Raises ValueError / FileNotFoundError for bad
    input before any model work (see :func:`read_trajectory`, :func:`check_trajectory`)."""
    from formers.atomic import write_json, write_text

    decode = decode or DecodeConfig()
    t, x, names = read_trajectory(trajectory)
    max_dimension = max_dimension_of(run)
    try:  # all input errors before loading the model
        check_trajectory(t, x, max_dimension)
        check_trained_dimension(x, run)
    except ValueError as e:
        raise ValueError(f"{trajectory}: {e}") from None
    out = Path(out) if out is not None else Path("runs") / f"ode-fit-{Path(trajectory).stem}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    model, folder = load_fit_model(run)
    model = model.to(device)
    t, x = check_trajectory(t, x, model.cfg.max_dimension)
    fit = predict.fit_system(model, t, x, decode)
    out.mkdir(parents=True, exist_ok=True)
    eqs = fit.equations()
    readable = readable_equations(fit.system, names) if fit.system is not None else eqs.splitlines()
    record = {
        "trajectory": str(trajectory), "columns": names, "n_points": int(len(t)),
        "equations": eqs.splitlines(), "readable": readable, "prefix": expr.to_prefix(fit.system) if fit.system else None,
        "r2": fit.r2, "refined": fit.refined,
        "candidates": [{"equations": expr.to_str(s).splitlines(), "r2": r} for s, r in fit.candidates],
        "model": str(folder), "decode": decode.to_dict(),
        "variables": {f"x_{j}": n for j, n in enumerate(names[1:])},
    }
    write_text(out / "equations.txt", "\n".join(readable) + f"\n# as decoded: {'; '.join(eqs.splitlines())}\n# variables: "
               + ", ".join(f"x_{j} = {n}" for j, n in enumerate(names[1:]))
               + f"\n# R2 on the data: {fit.r2:.6f}\n")
    write_json(out / "fit.json", record)
    plot_fit(t, x, fit, names, out / "fit.png")
    record["out"] = str(out)
    return record
