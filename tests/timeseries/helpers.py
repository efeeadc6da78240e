"""Small CSV files for the time-series tests (made here; no external data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ETTh1.csv"


def write_csv(path: Path, n_rows: int = 400, n_cols: int = 3, seed: int = 0,
              names: list[str] | None = None) -> Path:
    """Hourly dates and ``n_cols`` daily sinusoids with noise; the last column is ``OT``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows)
    names = names or [f"c{i}" for i in range(n_cols - 1)] + ["OT"]
    lines = ["date," + ",".join(names)]
    for i in t:
        vals = [np.sin(2 * np.pi * i / 24 + k) * (k + 1) + 0.1 * rng.standard_normal() + k
                for k in range(n_cols)]
        lines.append(f"2020-01-{1 + i // 24:02d} {i % 24:02d}:00:00," + ",".join(f"{v:.5f}" for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path
