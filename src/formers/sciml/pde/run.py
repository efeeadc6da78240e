"""What every PDE generator shares: parameter checks, the run from initial fields to saved frames
(:func:`simulate`, :func:`run`), and the blow-up error."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from formers.sciml.pde.spectral import real_dtype


def check_grid(owner: str, grid: int, minimum: int = 8) -> None:
    """Grid sizes must be even ints >= ``minimum`` (the 2/3 rule and the Nyquist mode need it)."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < minimum or grid % 2:
        raise ValueError(f"{owner}.grid must be an even int >= {minimum}, got {grid!r}")


def check_nonneg(owner: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {v!r}")


def check_pos(owner: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"{owner}.{name} must be a finite number > 0, got {v!r}")


def check_run(owner: str, cfg: Any) -> None:
    """The time fields every generator config has: ``n_steps`` (int >= 1), ``record_dt`` and
    ``burn_in`` whole multiples of ``dt``, ``dtype`` float32/float64."""
    if isinstance(cfg.n_steps, bool) or not isinstance(cfg.n_steps, int) or cfg.n_steps < 1:
        raise ValueError(f"{owner}.n_steps must be an int >= 1, got {cfg.n_steps!r}")
    steps_per(cfg.record_dt, cfg.dt, f"{owner}.record_dt")
    steps_per(cfg.burn_in, cfg.dt, f"{owner}.burn_in")
    real_dtype(cfg.dtype, f"{owner}.dtype")


class BlowUpError(ValueError):
    """A PDE simulation produced NaN or inf (a time step too large for the flow, usually)."""


def check_finite(x: torch.Tensor, what: str, hint: str) -> None:
    """Raise :class:`BlowUpError` if ``x`` holds NaN or inf (one device sync)."""
    if not bool(torch.isfinite(x).all()):
        raise BlowUpError(f"{what} is not finite (NaN/inf): the simulation blew up; {hint}")


def steps_per(interval: float, dt: float, name: str) -> int:
    """``interval / dt`` as an int; ValueError naming ``name`` if it is not a whole multiple."""
    r = interval / dt
    n = round(r)
    if abs(r - n) > 1e-6 * max(1.0, r):
        raise ValueError(f"{name} = {interval!r} must be a whole multiple of dt = {dt!r} "
                         f"(ratio {r:.6g})")
    return n


def burn_chunks(cfg: Any) -> int:
    """How many progress ticks the burn-in gives: one per ``record_dt`` of burn-in (rounded up)."""
    per, burn = steps_per(cfg.record_dt, cfg.dt, "record_dt"), steps_per(cfg.burn_in, cfg.dt, "burn_in")
    return -(-burn // per)


def simulate(solver, w0: torch.Tensor, n_steps: int, steps_per_frame: int, burn_steps: int,
             what: str, progress: Callable[[int], None] | None = None,
             burn_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run ``solver`` (``to_spectral``/``step``/``to_physical``/``hint``) from physical ``w0``: ``burn_steps``
    steps, then ``n_steps`` frames ``steps_per_frame`` apart. ``progress(1)`` is called after each
    saved frame, ``burn_progress(1)`` after each ``steps_per_frame`` steps of burn-in. Returns
    (batch, n_steps, *field) float32 on the CPU; BlowUpError (a ValueError) at the first
    non-finite frame."""
    w_hat = solver.to_spectral(w0)
    done = 0
    while done < burn_steps:
        k = min(steps_per_frame, burn_steps - done)
        w_hat = solver.step(w_hat, k)
        done += k
        if burn_progress is not None:
            burn_progress(1)
    frames = []
    for t in range(n_steps):
        if t:
            w_hat = solver.step(w_hat, steps_per_frame)
        w = solver.to_physical(w_hat)
        check_finite(w, f"{what} at frame {t} (t = burn_in + {t} * record_dt)", solver.hint())
        frames.append(w.to(device="cpu", dtype=torch.float32))
        if progress is not None:
            progress(1)
    return torch.stack(frames, dim=1)


def run(solver, n_samples: int, seed: int, first_index: int, what: str,
        progress: Callable[[int], None] | None = None,
        burn_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Check ``n_samples``, draw the initial fields of samples ``first_index ...`` from ``seed`` and
    :func:`simulate` ``solver.cfg``'s burn-in and frames: (n_samples, n_steps, *field) float32, CPU."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    c = solver.cfg
    return simulate(solver, solver.initial(n_samples, seed, first_index), c.n_steps,
                    steps_per(c.record_dt, c.dt, "record_dt"), steps_per(c.burn_in, c.dt, "burn_in"),
                    what, progress, burn_progress)
