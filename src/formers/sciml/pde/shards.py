"""PDE data sets on disk: safetensors shards plus a JSON sidecar, written atomically and resumably.

A data folder holds

* ``meta.json``: every parameter needed to regenerate the data (``equation``, the generator's
  config, ``seed``, ``n_samples``, ``shard_size``, the per-sample ``sample_shape``, torch version);
* ``shard-00000.safetensors``, ...: tensor ``data`` of shape ``(count, *sample_shape)`` float32
  (samples ``i * shard_size ...``), with the same parameters in the file's metadata.

Each shard is written to a temporary file and renamed (``formers.atomic``), so a shard that exists
is complete. A killed generation resumes at the next missing shard when the same command runs
again; a changed setting is refused (naming the changed keys) rather than mixed into the folder.
Sample ``j`` is drawn from generator (seed, j), so the data do not depend on the shard size.

``formers data pde --equation ns2d|ns3d|burgers ...`` calls :func:`generate_shards`;
:func:`load_shards` reads a folder back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from formers.atomic import atomic_write, write_json
from formers.sciml.pde.burgers import BurgersConfig, burgers_1d
from formers.sciml.pde.navier_stokes import NS2DConfig, navier_stokes_2d
from formers.sciml.pde.navier_stokes_3d import NS3DConfig, navier_stokes_3d
from formers.sciml.pde.run import burn_chunks

FORMAT = "formers-pde-shards"
VERSION = 1
GENERATORS: dict[str, tuple[type, Callable[..., tuple[torch.Tensor, dict[str, Any]]]]] = {
    "ns2d": (NS2DConfig, navier_stokes_2d),
    "ns3d": (NS3DConfig, navier_stokes_3d),
    "burgers": (BurgersConfig, burgers_1d),
}
# the keys that must match for a folder to be resumed
IDENTITY = ("format", "version", "equation", "params", "seed", "n_samples", "shard_size")


def sample_shape(equation: str, cfg: Any) -> tuple[int, ...]:
    n = cfg.grid
    return {"ns2d": (cfg.n_steps, n, n), "ns3d": (cfg.n_steps, n, n, n, 3),
            "burgers": (cfg.n_steps, n)}[equation]


def shard_path(folder: str | Path, i: int) -> Path:
    return Path(folder) / f"shard-{i:05d}.safetensors"


def default_shard_size(shape: tuple[int, ...], target_bytes: int = 256 * 2**20) -> int:
    """Samples per shard so that a shard is about ``target_bytes`` (at least 1)."""
    return max(1, target_bytes // (4 * math.prod(shape)))


def dataset_meta(equation: str, n_samples: int, seed: int = 0, shard_size: int | None = None,
                 **params: Any) -> dict[str, Any]:
    """The sidecar of a data set (validates everything; ValueError naming a bad value)."""
    if equation not in GENERATORS:
        raise ValueError(f"unknown equation {equation!r}; allowed: {sorted(GENERATORS)}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an int in [0, 2^31), got {seed!r}")
    config_cls, _ = GENERATORS[equation]
    cfg = config_cls.from_dict(params)  # unknown keys and bad values -> ValueError naming them
    shape = sample_shape(equation, cfg)
    size = default_shard_size(shape) if shard_size is None else shard_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {size!r}")
    size = min(size, n_samples)
    return {"format": FORMAT, "version": VERSION, "equation": equation, "params": cfg.to_dict(),
            "seed": seed, "n_samples": n_samples, "shard_size": size,
            "n_shards": -(-n_samples // size), "sample_shape": list(shape), "dtype": "float32",
            "torch": torch.__version__}


def check_same(folder: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = []
    for k in IDENTITY:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [(f"{k}.{j}", a.get(j), b.get(j)) for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
        elif a != b:
            diff.append((k, a, b))
    if diff:
        detail = "; ".join(f"{k}: folder has {a!r}, asked {b!r}" for k, a, b in diff)
        raise ValueError(f"{folder} holds a different data set ({detail}); use another --out "
                         f"or the folder's settings to resume it")


def generate_shards(equation: str, out: str | Path, n_samples: int, *, seed: int = 0,
                    shard_size: int | None = None, device: str = "cpu", quiet: bool = False,
                    **params: Any) -> dict[str, Any]:
    """Generate (or finish) the data set of ``equation`` in folder ``out``; returns its meta.

    Args:
        equation: "ns2d" (Kolmogorov vorticity), "ns3d" (isotropic-turbulence velocity) or
            "burgers".
        n_samples: trajectories in total.  seed: sample j starts from generator (seed, j).
        shard_size: samples per shard (default: about 256 MiB per shard); each shard is one batch
            on ``device``, so it also sets the memory used there.
        device: "cpu", "cuda", "cuda:N" or "auto".
        quiet: no progress bar (the bar shows trajectory frames per second and the ETA).
        params: the generator's config fields (``grid``, ``nu``, ``dt``, ...; see NS2DConfig,
            NS3DConfig, BurgersConfig); unknown names raise ValueError listing the allowed ones.

    Raises:
        ValueError: bad input (before any work), a folder holding a different data set, or a
        simulation that blew up (NaN/inf; the shards written so far stay valid).
    """
    from formers.train.trainer import resolve_device

    meta = dataset_meta(equation, n_samples, seed, shard_size, **params)
    dev = resolve_device(device)
    folder = Path(out)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        check_same(folder, read_meta(folder), meta)
    else:
        write_json(meta_file, meta)
    _, generate = GENERATORS[equation]
    size = meta["shard_size"]
    ticks = meta["params"]["n_steps"] + burn_chunks(GENERATORS[equation][0].from_dict(meta["params"]))
    todo = [i for i in range(meta["n_shards"]) if not shard_path(folder, i).is_file()]
    with _progress(quiet) as bar:
        task = bar.add_task(f"{equation} {'x'.join(map(str, meta['sample_shape'][1:]))}",
                            total=n_samples * ticks)
        bar.update(task, completed=(n_samples - sum(_count(meta, i) for i in todo)) * ticks)
        for i in todo:
            count = _count(meta, i)
            tick = lambda k, c=count: bar.advance(task, k * c)  # noqa: E731
            data, shard_params = generate(count, seed=seed, first_index=i * size, device=dev,
                                          progress=tick, burn_progress=tick, **meta["params"])
            _write_shard(shard_path(folder, i), data, {**meta, "shard": i, "first_index": i * size,
                                                       "generator": shard_params})
    return meta


def _count(meta: dict[str, Any], i: int) -> int:
    return min(meta["shard_size"], meta["n_samples"] - i * meta["shard_size"])


def _write_shard(path: Path, data: torch.Tensor, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"data": data.contiguous()}, tmp,
                                             metadata={"meta": json.dumps(meta)}))


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(quiet: bool):
    """A rich progress bar on stderr, or nothing. It counts trajectory frames of all samples, the
    burn-in as one frame per ``record_dt``: done of total, frames/s, elapsed, ETA."""
    if quiet:
        return _Quiet()
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed or 0.0:.1f} frames/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The sidecar of a data folder; FileNotFoundError / ValueError with what to do."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a formers PDE data folder "
                                f"(make one with `formers data pde --out {folder} ...`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} sidecar")
    return meta


def load_shards(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """All samples of a data folder: ``(data, meta)`` with ``data`` of shape
    ``(n_samples, *meta["sample_shape"])`` float32.

    Raises:
        FileNotFoundError: no sidecar, or missing shards (generation unfinished: rerun the same
            ``formers data pde`` command, which resumes).
        ValueError: a shard of the wrong shape or holding NaN/inf.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    missing = [i for i in range(meta["n_shards"]) if not shard_path(folder, i).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of {meta['n_shards']} shards missing "
                                f"(first: {shard_path(folder, missing[0]).name}); the generation did "
                                f"not finish: rerun the same `formers data pde` command to resume")
    parts = []
    for i in range(meta["n_shards"]):
        path = shard_path(folder, i)
        try:
            x = load_file(str(path), device=str(device))["data"]
        except Exception as e:  # safetensors raises its own types for corrupt files
            raise ValueError(f"cannot read {path}: {e}") from None
        want = (_count(meta, i), *meta["sample_shape"])
        if tuple(x.shape) != want:
            raise ValueError(f"{path} holds shape {tuple(x.shape)}, the sidecar says {want}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{path} holds NaN or inf values")
        parts.append(x)
    return torch.cat(parts), meta
