"""The generated data sets of the field-forecasting tasks (``kolmogorov``: 2-D Kolmogorov-flow
vorticity from :func:`formers.sciml.pde.navier_stokes.navier_stokes_2d`; ``turbulence3d``: 3-D
velocity from :func:`formers.sciml.pde.navier_stokes_3d.navier_stokes_3d`): generated on first use
and cached in the data directory in the project's shard format (:mod:`formers.sciml.pde.shards`:
safetensors shards and a ``meta.json`` sidecar with every parameter, written atomically,
resumable).

Data directory: the task's ``data`` option (``--data DIR``), else ``$FORMERS_DATA``, else the user
cache ``$XDG_CACHE_HOME/formers/data`` (``~/.cache/formers/data``); the folder
``DIR/fields/<equation>-<grid>-<hash>/`` carries a hash of every generation parameter, so other
settings never reuse it. ``formers data pde --equation ns2d|ns3d ...`` makes the same format.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from formers.config import Config


@dataclass
class FieldDataSpec(Config):
    """What to generate (the part every equation shares): ``n_trajectories`` of ``n_frames`` frames
    on a ``grid``-point periodic box per axis, from generator ``seed``. Subclasses add the physics
    and name the equation of :mod:`formers.sciml.pde.shards`."""

    grid: int = 64
    n_trajectories: int = 36
    n_frames: int = 80
    seed: int = 0
    equation: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name in ("grid", "n_trajectories", "n_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{type(self).__name__}.{name} must be an int > 0, got {v!r}")
        from formers.sciml.pde.shards import GENERATORS

        GENERATORS[self.equation][0](**self.solver_fields())  # the solver's own checks, before any work

    def solver_fields(self) -> dict[str, Any]:
        """The generator config's fields (everything but the sample count and the seed)."""
        raise NotImplementedError

    def expected_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class KolmogorovDataSpec(FieldDataSpec):
    """2-D Kolmogorov flow (equation ``ns2d``): vorticity frames ``record_dt`` seconds apart after
    ``burn_in`` seconds, solver step ``dt``, viscosity ``nu`` (1/Re), forcing -n cos(n y) with
    n = ``forcing_wavenumber`` (8; at most grid/3). Drag 0.1 and the GRF initial fields are the
    generator's defaults: FactFormer's KM2D data (arXiv 2305.17560 §4).
    Raises ValueError naming a bad field (the solver checks the physics)."""

    record_dt: float = 1.0 / 16
    burn_in: float = 2.0
    dt: float = 1.0 / 1024
    nu: float = 1e-3
    forcing_wavenumber: int = 8
    equation: ClassVar[str] = "ns2d"

    def solver_fields(self) -> dict[str, Any]:
        return {"grid": self.grid, "nu": self.nu, "dt": self.dt, "record_dt": self.record_dt,
                "n_steps": self.n_frames, "burn_in": self.burn_in,
                "forcing_wavenumber": self.forcing_wavenumber}

    def expected_shape(self) -> tuple[int, ...]:
        return (self.n_trajectories, self.n_frames, self.grid, self.grid)


@dataclass
class Turbulence3DDataSpec(FieldDataSpec):
    """3-D forced isotropic turbulence (equation ``ns3d``): velocity frames ``record_dt`` apart after
    ``burn_in``, solver step ``dt``, viscosity ``nu``, energy forcing of the band |k| <= ``forcing_k``
    (the generator's defaults otherwise): the synthetic stand-in for IFactFormer's channel flow
    (arXiv 2412.18840, notes §3(c)). Raises ValueError naming a bad field."""

    grid: int = 32
    n_trajectories: int = 26
    record_dt: float = 0.1
    burn_in: float = 2.0
    dt: float = 0.01
    nu: float = 0.03
    forcing_k: float = 3.0
    equation: ClassVar[str] = "ns3d"

    def solver_fields(self) -> dict[str, Any]:
        return {"grid": self.grid, "nu": self.nu, "dt": self.dt, "record_dt": self.record_dt,
                "n_steps": self.n_frames, "burn_in": self.burn_in, "forcing_k": self.forcing_k}

    def expected_shape(self) -> tuple[int, ...]:
        return (self.n_trajectories, self.n_frames, self.grid, self.grid, self.grid, 3)


def data_root(data: str | os.PathLike | None = None) -> Path:
    """``data``, else ``$FORMERS_DATA``, else ``$XDG_CACHE_HOME/formers/data`` (``~/.cache/...``)."""
    if data is not None:
        return Path(data)
    if os.environ.get("FORMERS_DATA"):
        return Path(os.environ["FORMERS_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "formers" / "data"


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_or_generate(spec: FieldDataSpec, data: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", quiet: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The data set of ``spec``: read from ``DATA/fields/<equation>-<grid>-<hash>/`` (the shard
    format of :mod:`formers.sciml.pde.shards`), or generated there first (progress bar; a killed
    generation resumes at the next missing shard). Returns (fields ``spec.expected_shape()``
    float32, info: folder, sha256 of the shards, spec and the solver's parameters).

    Raises ValueError when a shard holds NaN/inf or has the wrong shape (the message names the
    file; delete the folder to regenerate it), or when the solver blows up (BlowUpError names the
    frame and the settings)."""
    from formers.sciml.pde.shards import generate_shards, load_shards, shard_path

    folder = data_root(data) / "fields" / f"{spec.equation}-{spec.grid}-{spec.key()}"
    try:
        w, meta = load_shards(folder)
    except FileNotFoundError:
        generate_shards(spec.equation, folder, spec.n_trajectories, seed=spec.seed, device=str(device),
                        quiet=quiet, **spec.solver_fields())
        w, meta = load_shards(folder)
    want = spec.expected_shape()
    if tuple(w.shape) != want:
        raise ValueError(f"{folder}: the data have shape {tuple(w.shape)}, expected {want}; delete the "
                         f"folder to regenerate it")
    info = {"folder": folder.name, "sha256": _sha256([shard_path(folder, i) for i in range(meta["n_shards"])]),
            "spec": spec.to_dict(), "solver": meta["params"], "std": float(w.std())}
    return w, info
