"""The Kolmogorov-flow data set of the ``kolmogorov`` task: generated on first use with the
project's solver (:func:`formers.sciml.pde.navier_stokes.navier_stokes_2d`) and cached in the data
directory as one safetensors file with its parameters (a JSON sidecar and the file's metadata).

Data directory: the task's ``data`` option (``--data DIR``), else ``$FORMERS_DATA``, else the user
cache ``$XDG_CACHE_HOME/formers/data`` (``~/.cache/formers/data``); files go to ``DIR/kolmogorov/``.
The file name carries a hash of every generation parameter, so other settings never reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from formers.atomic import atomic_write, write_json
from formers.config import Config


@dataclass
class KolmogorovDataSpec(Config):
    """What to generate: ``n_trajectories`` of ``n_frames`` vorticity frames on a ``grid`` x ``grid``
    box, ``record_dt`` seconds apart after ``burn_in`` seconds, solver step ``dt``, viscosity ``nu``
    (1/Re), forcing -n cos(n y) with n = ``forcing_wavenumber`` (8; at most grid/3), the generator
    ``seed``. The other physics (drag 0.1, GRF initial fields) are the generator's defaults,
    FactFormer's KM2D data (arXiv 2305.17560 §4).
    Raises ValueError naming a bad field (the solver checks the rest)."""

    grid: int = 64
    n_trajectories: int = 36
    n_frames: int = 80
    record_dt: float = 1.0 / 16
    burn_in: float = 2.0
    dt: float = 1.0 / 1024
    nu: float = 1e-3
    forcing_wavenumber: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        from formers.sciml.pde.navier_stokes import NS2DConfig

        for name in ("grid", "n_trajectories", "n_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"KolmogorovDataSpec.{name} must be an int > 0, got {v!r}")
        NS2DConfig(**self.solver_fields())  # the solver's own checks, before any work

    def solver_fields(self) -> dict[str, Any]:
        return {"grid": self.grid, "nu": self.nu, "dt": self.dt, "record_dt": self.record_dt,
                "n_steps": self.n_frames, "burn_in": self.burn_in,
                "forcing_wavenumber": self.forcing_wavenumber}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def data_root(data: str | os.PathLike | None = None) -> Path:
    """``data``, else ``$FORMERS_DATA``, else ``$XDG_CACHE_HOME/formers/data`` (``~/.cache/...``)."""
    if data is not None:
        return Path(data)
    if os.environ.get("FORMERS_DATA"):
        return Path(os.environ["FORMERS_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "formers" / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def generate(spec: KolmogorovDataSpec, device: str | torch.device = "cpu", chunk: int = 8,
             quiet: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Run the solver for ``spec`` in chunks of ``chunk`` trajectories with a progress bar (frames,
    rate, ETA). Returns (vorticity (n_trajectories, n_frames, grid, grid) float32, parameters)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from formers.sciml.pde.navier_stokes import navier_stokes_2d

    parts, params = [], {}
    total = spec.n_trajectories * spec.n_frames
    columns = (TextColumn("kolmogorov data"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=quiet) as bar:
        task = bar.add_task("generate", total=total)
        for first in range(0, spec.n_trajectories, chunk):
            n = min(chunk, spec.n_trajectories - first)
            w, params = navier_stokes_2d(n, **spec.solver_fields(), seed=spec.seed, first_index=first,
                                         device=device, progress=lambda k: bar.advance(task, k * n))
            parts.append(w)
    params = {**params, "first_index": 0, "n_samples": spec.n_trajectories}
    return torch.cat(parts), params


def load_or_generate(spec: KolmogorovDataSpec, data: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", quiet: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The data set of ``spec``: read from the data directory, or generated (progress bar) and
    written there atomically first. Returns (vorticity (n_trajectories, n_frames, grid, grid),
    info: file, sha256, spec and the solver's parameters).

    Raises ValueError when the file holds NaN/inf or has the wrong shape (delete it to regenerate),
    or when the solver blows up (its BlowUpError names the frame and settings)."""
    from safetensors.torch import load_file, save_file

    folder = data_root(data) / "kolmogorov"
    path = folder / f"ns2d-{spec.grid}-{spec.key()}.safetensors"
    if not path.is_file():
        w, params = generate(spec, device, quiet=quiet)
        meta = {"spec": spec.to_dict(), "params": params}
        atomic_write(path, lambda tmp: save_file({"vorticity": w.contiguous()}, tmp,
                                                 metadata={"json": json.dumps(meta, default=str)}))
        write_json(path.with_suffix(".json"), meta)
    w = load_file(str(path))["vorticity"]
    want = (spec.n_trajectories, spec.n_frames, spec.grid, spec.grid)
    if tuple(w.shape) != want:
        raise ValueError(f"{path}: vorticity has shape {tuple(w.shape)}, expected {want}; delete the "
                         f"file to regenerate it")
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{path}: the data hold {bad} NaN/inf values; delete the file to regenerate "
                         f"it (or lower dt)")
    info = {"file": path.name, "sha256": _sha256(path), "spec": spec.to_dict(),
            "seconds_per_frame": spec.record_dt, "vorticity_std": float(w.std()),
            "frames_total": math.prod(w.shape[:2])}
    return w, info
