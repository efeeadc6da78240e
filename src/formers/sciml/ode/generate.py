"""ODEFormer's random ODE generator and sharded, resumable, multi-process data generation.

Source: d'Ascoli et al., "ODEFormer: Symbolic Regression of Dynamical Systems with Transformers"
(arXiv 2310.05573), section 3 ("Data generation") and appendix; reference code
``odeformer/envs/generators.py::RandomFunctions`` with the settings of ``scripts/run.py``.

One sample (:func:`sample_system` + :func:`sample_trajectory`, both in :func:`generate_sample`):

1. dimension D ~ U{min_dim..max_dim};
2. per component a binary tree with U{min_binary..max_binary} operators drawn from
   ``binary_ops`` (paper: add:3, mul:1), sampled **uniformly over binary-tree shapes** (the
   Lample & Charton counting scheme the reference uses); leaves x_j with j ~ U{0..D-1};
3. unary operators from ``unary_ops`` (paper: id:3, sin:1, inv:1, pow2:1) proposed above every
   non-root node whose subtree is shorter than ``max_unary_depth`` (7), then all but
   U{min_unary..max_unary} of them removed at random;
4. prefactors (reference ``add_prefactors``, ``reduce_num_constants``): every non-sum child of
   a sum gets a factor ``b*``, the argument of every unary gets ``a + b*``; a tree that got none
   gets an overall ``a*``. Constants are sign * 10^U(log10 1/20, log10 20);
5. sympy canonicalisation (:func:`~formers.sciml.ode.expr.simplify`); the system is rejected if
   that fails, leaves the operator set, or more than doubles the prefix length; constants are
   then rounded to the codec's 4 significant digits so the tokens *are* the integrated law;
6. y0 ~ N(0, init_scale^2 I), N ~ U{min_points..max_points}, t = linspace(1, 10, N);
   integration by ``solve_ivp`` (paper: RK45 at scipy's default tolerances) with a terminal event
   at |x| = max_abs (100) and a budget of ``max_evals`` right-hand-side evaluations (the paper's
   1 s timeout made deterministic: 30,000 evaluations take about 1 s of an idle core here), plus
   a wall-clock ``timeout_s`` (10 s) as a safety net only;
7. rejection: any NaN (a stop counts), |x| > 1e100, and with probability 0.9 a trajectory whose
   last quarter is flat (every component's (max - min) / window < 1e-3).

Training-time corruption (:func:`corrupt`): multiplicative noise ``x + gamma x eps`` and random
point dropping, with gamma and the dropped fraction drawn from ``linspace(0, max, 5)`` as in
the paper's grid (max 0.1 and 0.5 there).

Deviations (also in docs/papers.md): samples whose simplified system no longer uses every
variable are kept (as the reference does); a component that simplifies to a constant is kept;
the 1 s wall-clock timeout is an evaluation budget so that a shard does not depend on the
machine's load.

Shards (:func:`generate_dataset`): ``DIR/meta.json`` (the config, seed, shard size) and
``DIR/shard-00000.jsonl`` ... one JSON object per line: ``dim``, ``tokens`` (prefix tokens,
:func:`~formers.sciml.ode.expr.to_prefix`), ``infix``, ``t`` (N,), ``x`` (N x D). Shard k is
generated from the seed sequence ``(seed, k)`` alone, so shards can be made by separate runs
(``first_shard``), in any order, by any number of workers, and a re-run skips finished shards.
Each shard is written atomically.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from formers.sciml.ode import expr
from formers.sciml.ode.expr import Node, const, op

META = "meta.json"
DEFAULT_SHARD_SIZE = 1000  # samples per shard unless told, or fewer when fewer are asked for


def _weights(spec: str, allowed: tuple[str, ...], field_name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in spec.split(","):
        name, _, w = item.strip().partition(":")
        try:
            wf = float(w) if w else 1.0
        except ValueError:
            wf = -1.0
        if name not in allowed or wf < 0:
            raise ValueError(f"{field_name}: bad entry {item!r}; expected name:weight with name in "
                             f"{allowed} and weight >= 0")
        out[name] = wf
    if sum(out.values()) <= 0:
        raise ValueError(f"{field_name}: weights must not all be 0, got {spec!r}")
    return out


@dataclass
class GeneratorConfig:
    """Generator settings; defaults are the paper's (``scripts/run.py`` of the reference).

    Ranges are inclusive. ``method``/``rtol``/``atol`` select the integrator (paper: RK45 at
    scipy defaults); ``max_evals`` is the deterministic stand-in for the paper's 1 s timeout and
    ``timeout_s`` a wall-clock safety net. ``max_prefix_len``: reject systems with longer prefix sequences (0 = off).
    """

    min_dim: int = 1
    max_dim: int = 6
    min_binary: int = 1
    max_binary: int = 5
    min_unary: int = 0
    max_unary: int = 3
    binary_ops: str = "add:3,mul:1"
    unary_ops: str = "id:3,sin:1,inv:1,pow2:1"
    max_unary_depth: int = 7
    const_min: float = 0.05
    const_max: float = 20.0
    init_scale: float = 1.0
    min_points: int = 50
    max_points: int = 200
    t_start: float = 1.0
    t_end: float = 10.0
    max_abs: float = 100.0
    max_value: float = 1e100
    max_evals: int = 30_000
    timeout_s: float = 10.0
    method: str = "RK45"
    rtol: float = 1e-3
    atol: float = 1e-6
    flat_reject_prob: float = 0.9
    flat_tol: float = 1e-3
    max_len_ratio: float = 2.0
    max_prefix_len: int = 0
    max_tries: int = 1000

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"GeneratorConfig.{name}={getattr(self, name)!r}: must be {allowed}")

        for f in fields(self):  # types first: --opt values arrive as YAML scalars
            v, kind = getattr(self, f.name), type(f.default)
            ok = (isinstance(v, str) if kind is str else not isinstance(v, bool) and
                  isinstance(v, int if kind is int else (int, float)))
            if not ok:
                raise ValueError(f"GeneratorConfig.{f.name}={v!r} ({type(v).__name__}): must be "
                                 f"{'a string' if kind is str else 'an int' if kind is int else 'a number'}")
        need(1 <= self.min_dim <= self.max_dim, "min_dim", f"1 <= min_dim <= max_dim (max_dim={self.max_dim})")
        need(self.max_dim <= 10, "max_dim", "<= 10")
        need(1 <= self.min_binary <= self.max_binary, "min_binary", "1 <= min_binary <= max_binary")
        need(0 <= self.min_unary <= self.max_unary, "min_unary", "0 <= min_unary <= max_unary")
        need(self.max_unary_depth >= 1, "max_unary_depth", ">= 1")
        need(0 < self.const_min <= self.const_max, "const_min", "0 < const_min <= const_max")
        need(self.init_scale > 0, "init_scale", "> 0")
        need(2 <= self.min_points <= self.max_points, "min_points", "2 <= min_points <= max_points")
        need(self.t_end > self.t_start, "t_end", "> t_start")
        need(self.max_abs > 0, "max_abs", "> 0")
        need(self.timeout_s > 0, "timeout_s", "> 0")
        need(self.max_evals >= 100, "max_evals", ">= 100")
        need(self.method in ("RK45", "RK23", "DOP853", "LSODA", "BDF", "Radau"), "method",
             "one of RK45, RK23, DOP853, LSODA, BDF, Radau")
        need(self.rtol > 0 and self.atol > 0, "rtol", "> 0 (atol too)")
        need(0 <= self.flat_reject_prob <= 1, "flat_reject_prob", "in [0, 1]")
        need(self.max_len_ratio > 0, "max_len_ratio", "> 0")
        need(self.max_prefix_len >= 0, "max_prefix_len", ">= 0")
        need(self.max_tries >= 1, "max_tries", ">= 1")
        _weights(self.binary_ops, ("add", "sub", "mul", "div"), "GeneratorConfig.binary_ops")
        _weights(self.unary_ops, expr.UNARY, "GeneratorConfig.unary_ops")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GeneratorConfig":
        names = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown GeneratorConfig field(s) {bad}; allowed: {sorted(names)}")
        return cls(**d)


@dataclass
class RawSystem:
    """A generated system before simplification, with what was drawn (for statistics)."""

    system: tuple[Node, ...]
    dim: int
    n_binary: list[int]
    n_unary: list[int]
    op_counts: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------- trees

def _tree_counts(max_ops: int) -> list[list[int]]:
    """``D[n][e]``: number of binary trees with n internal nodes grown from e empty slots.

    D[0][e] = 1 (e >= 1), D[n][0] = 0, D[n][e] = D[n][e-1] + D[n-1][e+1]."""
    width = 2 * max_ops + 2
    d = [[0] + [1] * (width - 1)]
    for n in range(1, max_ops + 1):
        row = [0] * width
        for e in range(1, width - 1):
            row[e] = row[e - 1] + d[n - 1][e + 1]
        d.append(row)
    return d


_COUNTS = _tree_counts(64)


def _random_shape(rng: np.random.Generator, n_ops: int) -> list[int]:
    """Arities in prefix order of a binary tree with n_ops internal nodes, uniform over shapes.

    With e empty slots and n operators left, the next operator goes in slot k (the first k
    slots become leaves) with probability D[n-1][e-k+1] / D[n][e]."""
    if n_ops > 64:
        raise ValueError(f"at most 64 binary operators per component, got {n_ops}")
    arities: list[int] = []
    e, n = 1, n_ops
    while n > 0:
        probs = np.array([_COUNTS[n - 1][e - k + 1] for k in range(e)], dtype=np.float64)
        k = int(rng.choice(e, p=probs / probs.sum()))
        arities += [0] * k + [2]
        e = e - k + 1
        n -= 1
    return arities + [0] * e


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _build(arities: list[int], labels: list[str]) -> Node:
    pos = 0

    def rec() -> Node:
        nonlocal pos
        a, lab = arities[pos], labels[pos]
        pos += 1
        if a == 0:
            return Node(lab)
        left = rec()
        return Node(lab, (left, rec()))

    return rec()


def _add_unaries(rng, node: Node, weights, max_depth: int, is_root: bool = True) -> Node:
    """Propose a unary above every non-root node with subtree size < max_depth."""
    kids = tuple(_add_unaries(rng, c, weights, max_depth, False) for c in node.children)
    out = Node(node.op, kids, node.value)
    if not is_root and node.size() < max_depth:
        out = op(_pick(rng, weights), out)
    return out


def _drop_unaries(rng, node: Node, keep: int) -> Node:
    """Keep ``keep`` of the unary nodes (chosen at random), splice the others out."""
    ids = [i for i, n in enumerate(node.walk()) if n.op in expr.UNARY]
    kept = set(rng.permutation(ids)[:keep].tolist()) if ids else set()
    counter = iter(range(10 ** 9))

    def rec(n: Node) -> Node:
        i = next(counter)
        kids = tuple(rec(c) for c in n.children)
        if n.op in expr.UNARY and i not in kept:
            return kids[0]
        return Node(n.op, kids, n.value)

    return rec(node)


def _draw_const(rng, cfg: GeneratorConfig) -> Node:
    mag = 10 ** rng.uniform(math.log10(cfg.const_min), math.log10(cfg.const_max))
    return const(mag if rng.random() < 0.5 else -mag)


def _add_prefactors(rng, node: Node, cfg: GeneratorConfig) -> tuple[Node, bool]:
    """Reference ``_add_prefactors`` with prob_prefactor = 1; returns (tree, changed)."""
    if node.op in ("add", "sub"):
        kids, changed = [], True
        for c in node.children:
            sub, _ = _add_prefactors(rng, c, cfg)
            if c.op not in ("add", "sub"):
                sub = op("mul", _draw_const(rng, cfg), sub)
            kids.append(sub)
        return Node(node.op, tuple(kids)), changed
    if node.op in expr.UNARY and node.children[0].op not in ("add", "sub"):
        sub, _ = _add_prefactors(rng, node.children[0], cfg)
        affine = op("add", _draw_const(rng, cfg), op("mul", _draw_const(rng, cfg), sub))
        return op(node.op, affine), True
    changed, kids = False, []
    for c in node.children:
        sub, ch = _add_prefactors(rng, c, cfg)
        kids.append(sub)
        changed = changed or ch
    return Node(node.op, tuple(kids), node.value), changed


def sample_system(rng: np.random.Generator, cfg: GeneratorConfig, dim: int | None = None) -> RawSystem:
    """Draw one random system (steps 1-4 of the module docstring), unsimplified."""
    dim = int(rng.integers(cfg.min_dim, cfg.max_dim + 1)) if dim is None else dim
    bw = _weights(cfg.binary_ops, ("add", "sub", "mul", "div"), "binary_ops")
    uw = _weights(cfg.unary_ops, expr.UNARY, "unary_ops")
    comps, nb, nu = [], [], []
    counts: dict[str, int] = {}
    for _ in range(dim):
        n_bin = int(rng.integers(cfg.min_binary, cfg.max_binary + 1))
        arities = _random_shape(rng, n_bin)
        labels = [_pick(rng, bw) if a == 2 else f"x_{int(rng.integers(dim))}" for a in arities]
        tree = _build(arities, labels)
        tree = _add_unaries(rng, tree, uw, cfg.max_unary_depth)
        n_un = int(rng.integers(cfg.min_unary, cfg.max_unary + 1))
        tree = _drop_unaries(rng, tree, n_un)
        for n in tree.walk():
            if n.op in expr.ARITY:
                counts[n.op] = counts.get(n.op, 0) + 1
        tree, changed = _add_prefactors(rng, tree, cfg)
        if not changed:
            tree = op("mul", _draw_const(rng, cfg), tree)
        comps.append(tree)
        nb.append(n_bin)
        nu.append(sum(1 for n in tree.walk() if n.op in expr.UNARY))
    return RawSystem(tuple(comps), dim, nb, nu, counts)


# ----------------------------------------------------------------------------- trajectories

def _flat_tail(x: np.ndarray, tol: float) -> bool:
    w = max(x.shape[0] // 4, 1)
    last = x[-w:]
    return bool(np.all((last.max(axis=0) - last.min(axis=0)) / w < tol))


def sample_trajectory(rng: np.random.Generator, system, cfg: GeneratorConfig
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Integrate from y0 ~ N(0, init_scale^2 I) on linspace(t_start, t_end, N); None = rejected."""
    dim = len(system)
    n = int(rng.integers(cfg.min_points, cfg.max_points + 1))
    t = np.linspace(cfg.t_start, cfg.t_end, n)
    y0 = cfg.init_scale * rng.standard_normal(dim)
    x = expr.integrate(system, y0, t, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                       first_step=None, max_abs=cfg.max_abs, timeout_s=cfg.timeout_s,
                       max_evals=cfg.max_evals)
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) > cfg.max_value):
        return None
    if rng.random() < cfg.flat_reject_prob and _flat_tail(x, cfg.flat_tol):
        return None
    return t, x


def simplify_generated(raw: RawSystem, cfg: GeneratorConfig):
    """Sympy canonicalisation + rounding to 4 digits; None when rejected (step 5)."""
    try:
        simple = expr.round_constants(expr.simplify(raw.system))
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    if any(n.op == "const" and not math.isfinite(n.value) for c in simple for n in c.walk()):
        return None
    before, after = len(expr.to_prefix(raw.system)), len(expr.to_prefix(simple))
    if after > cfg.max_len_ratio * before:
        return None
    if cfg.max_prefix_len and after > cfg.max_prefix_len:
        return None
    return simple


def generate_sample(rng: np.random.Generator, cfg: GeneratorConfig, stats: dict | None = None
                    ) -> dict[str, Any]:
    """One accepted sample: ``{"dim", "tokens", "infix", "t", "x"}`` (lists, JSON-ready).

    ``stats`` (optional dict) is incremented with ``tries`` and rejections by reason.

    Raises:
        RuntimeError: no sample accepted in ``cfg.max_tries`` attempts (settings too strict).
    """
    stats = {} if stats is None else stats
    for _ in range(cfg.max_tries):
        stats["tries"] = stats.get("tries", 0) + 1
        raw = sample_system(rng, cfg)
        simple = simplify_generated(raw, cfg)
        if simple is None:
            stats["rejected_simplify"] = stats.get("rejected_simplify", 0) + 1
            continue
        traj = sample_trajectory(rng, simple, cfg)
        if traj is None:
            stats["rejected_trajectory"] = stats.get("rejected_trajectory", 0) + 1
            continue
        t, x = traj
        return {"dim": raw.dim, "tokens": expr.to_prefix(simple), "infix": expr.to_str(simple),
                "t": t.tolist(), "x": x.tolist()}
    raise RuntimeError(f"no sample accepted in {cfg.max_tries} tries: loosen the GeneratorConfig")


def corrupt(rng: np.random.Generator, t: np.ndarray, x: np.ndarray, noise: float = 0.1,
            subsample: float = 0.5, grid: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's training corruption: gamma ~ U(linspace(0, noise, grid)), x <- x + gamma x eps
    (multiplicative, eps ~ N(0, 1)); a fraction ~ U(linspace(0, subsample, grid)) of the points
    dropped at random (order kept, at least 2 points left). ``t (n,)``, ``x (n, dim)``."""
    if not (0 <= noise and 0 <= subsample < 1 and grid >= 1):
        raise ValueError(f"need noise >= 0, 0 <= subsample < 1, grid >= 1; got {noise}, {subsample}, {grid}")
    t = np.asarray(t, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    gamma = float(rng.choice(np.linspace(0, noise, grid)))
    frac = float(rng.choice(np.linspace(0, subsample, grid)))
    x = x + gamma * x * rng.standard_normal(x.shape)
    keep_n = max(2, int(round(t.size * (1 - frac))))
    if keep_n < t.size:
        idx = np.sort(rng.choice(t.size, size=keep_n, replace=False))
        t, x = t[idx], x[idx]
    return t, x


# ----------------------------------------------------------------------------- shards

def shard_path(out: Path, k: int) -> Path:
    return Path(out) / f"shard-{k:05d}.jsonl"


class _Tick:
    """In-process stand-in for a queue: ``put(n)`` advances the progress bar."""

    def __init__(self, advance) -> None:
        self.put = advance


def _make_shard(args: tuple) -> tuple[int, int, dict]:
    """Generate and write shard k; ``ticks.put(1)`` after every sample (progress)."""
    cfg_dict, seed, k, size, out, ticks = args
    from formers.atomic import write_text

    cfg = GeneratorConfig.from_dict(cfg_dict)
    rng = np.random.default_rng([seed, k])
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    lines = []
    for _ in range(size):
        lines.append(json.dumps(generate_sample(rng, cfg, stats)))
        if ticks is not None:
            ticks.put(1)
    write_text(shard_path(Path(out), k), "\n".join(lines) + "\n")
    stats["seconds"] = time.perf_counter() - t0
    return k, size, stats


def generate_dataset(out: str | Path, samples: int, cfg: GeneratorConfig | None = None, seed: int = 0,
                     shard_size: int | None = None, workers: int = 1, first_shard: int = 0,
                     progress: bool = True) -> dict[str, Any]:
    """Write ``samples`` samples as shards ``first_shard .. first_shard + ceil(samples/shard_size) - 1``
    of the data set in ``out`` (see the module docstring); finished shards are skipped. Shards are
    whole, so ``ceil(samples / shard_size) * shard_size`` samples are written. ``shard_size``
    None: the folder's own (its meta.json), else ``min(1000, samples)`` (so ``samples=200`` makes
    200 samples, not a 1000-sample shard).

    Returns a summary: shards written and skipped, samples, tries and rejections, seconds.

    Raises:
        ValueError: bad counts, or ``out`` holds a data set made with another config/seed/shard size.
    """
    cfg = cfg or GeneratorConfig()
    if shard_size is None:
        old_meta = Path(out) / META
        shard_size = (json.loads(old_meta.read_text()).get("shard_size") if old_meta.is_file() else None) \
            or min(DEFAULT_SHARD_SIZE, samples)
    if samples < 1 or shard_size < 1 or workers < 1 or first_shard < 0:
        raise ValueError(f"need samples >= 1, shard_size >= 1, workers >= 1, first_shard >= 0; got "
                         f"{samples}, {shard_size}, {workers}, {first_shard}")
    from formers.atomic import write_json

    out = Path(out)
    meta = {"format": "formers-ode-shards-1", "seed": seed, "shard_size": shard_size,
            "generator": cfg.to_dict(), "paper": "ODEFormer, arXiv 2310.05573"}
    if (out / META).is_file():
        old = json.loads((out / META).read_text())
        for key in ("seed", "shard_size", "generator"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{out} holds shards made with another {key} ({old.get(key)!r}); "
                                 f"use a new --out folder or the same settings")
    else:
        write_json(out / META, meta)
    n_shards = math.ceil(samples / shard_size)
    todo = [k for k in range(first_shard, first_shard + n_shards) if not shard_path(out, k).is_file()]
    summary: dict[str, Any] = {"shards_skipped": n_shards - len(todo), "shards_written": 0, "samples": 0,
                               "tries": 0, "rejected_simplify": 0, "rejected_trajectory": 0}
    t0 = time.perf_counter()
    with _Progress(progress, len(todo) * shard_size) as advance:
        if workers == 1 or len(todo) <= 1:
            jobs = [(cfg.to_dict(), seed, k, shard_size, str(out), _Tick(advance)) for k in todo]
            _collect(map(_make_shard, jobs), summary)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Manager() as manager, ctx.Pool(min(workers, len(todo))) as pool:
                ticks = manager.Queue()
                jobs = [(cfg.to_dict(), seed, k, shard_size, str(out), ticks) for k in todo]
                pending = pool.map_async(_make_shard, jobs)
                while not pending.ready():
                    _drain(ticks, advance, wait=0.5)
                _drain(ticks, advance, wait=0.0)
                _collect(pending.get(), summary)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _drain(ticks, advance, wait: float) -> None:
    """Advance the bar by every tick queued by the workers (waiting up to ``wait`` s for one)."""
    import queue

    n = 0
    try:
        n += ticks.get(timeout=wait) if wait > 0 else ticks.get_nowait()
        while True:
            n += ticks.get_nowait()
    except queue.Empty:
        pass
    if n:
        advance(n)


def _collect(results, summary: dict) -> None:
    for _k, n, stats in results:
        summary["shards_written"] += 1
        summary["samples"] += n
        for key in ("tries", "rejected_simplify", "rejected_trajectory"):
            summary[key] += stats.get(key, 0)


class _Progress:
    """A rich progress bar (rate, ETA) over samples, or nothing when ``show`` is False."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show and total > 0, total

    def __enter__(self):
        if not self.show:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("ODE samples"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task("gen", total=self.total, rate="")
        t0, done = time.perf_counter(), [0]

        def advance(n: int) -> None:
            done[0] += n
            rate = done[0] / max(time.perf_counter() - t0, 1e-9)
            self.bar.update(task, advance=n, rate=f"{rate:.1f} samples/s")

        return advance

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.stop()


def read_shard(path: str | Path) -> list[dict[str, Any]]:
    """The samples of one shard file (see the module docstring for the fields)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def iter_samples(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every sample of every shard in ``folder``, shards in index order.

    Raises:
        FileNotFoundError: the folder holds no shard.
    """
    paths = sorted(Path(folder).glob("shard-*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"no shard-*.jsonl in {folder}: make them with `formers data ode`")
    for p in paths:
        yield from read_shard(p)
