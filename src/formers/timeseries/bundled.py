"""Real series that ship inside installed packages: forecasting without any data file.

``co2`` (the forecast task's default data set): the Mauna Loa weekly atmospheric CO2
concentration (Keeling and Whorf, Scripps flask samples), bundled with statsmodels as
``statsmodels.datasets.co2``: 2,284 weekly values (Saturdays, 1958-03-29 to 2001-12-29) in ppm,
one channel ``co2``. Licence: public domain (statsmodels' ``COPYRIGHT`` of the data set).
Missing values: 59 weeks have no measurement (none at either end); they are filled by linear
interpolation between the neighbouring measured weeks (the weeks are evenly spaced, so by
position), and the number filled is recorded. Default look-back 96 weeks (divisible by every
Pathformer patch size of the published ETTh1 lists), horizon 52 weeks; split 70/10/20.

Needs statsmodels (``pip install formers[data]``), imported only when the series is loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from formers.timeseries.data import Table


@dataclass(frozen=True)
class BundledSeries:
    """A series read from an installed package: ``package`` (pip name), the ``loader`` returning
    (dates, column names, values (rows, columns) float64 possibly with NaN), default
    ``look_back`` / ``horizon``, the ``target`` column, ``licence``, ``source`` (in words) and
    the ``missing`` treatment (in words)."""

    name: str
    package: str
    loader: Callable[[], tuple[list[str], list[str], np.ndarray]]
    look_back: int
    horizon: int
    target: str
    licence: str
    source: str
    missing: str
    extra: str = "data"


def _load_co2() -> tuple[list[str], list[str], np.ndarray]:
    try:
        from statsmodels.datasets import co2
    except ImportError:
        raise ImportError("the bundled co2 series needs statsmodels: pip install formers[data] "
                          "(or use --opt dataset=ETTh1 / --data my.csv)") from None
    frame = co2.load_pandas().data
    dates = [str(d.date()) for d in frame.index]
    return dates, ["co2"], frame[["co2"]].to_numpy(dtype=np.float64)


BUNDLED: dict[str, BundledSeries] = {
    "co2": BundledSeries(
        "co2", "statsmodels", _load_co2, look_back=96, horizon=52, target="co2",
        licence="public domain (statsmodels.datasets.co2: Keeling and Whorf, Scripps Institution of "
                "Oceanography, via CDIAC)",
        source="Mauna Loa weekly atmospheric CO2 (ppm), 1958-03-29 to 2001-12-29, 2284 weeks, "
               "bundled with statsmodels",
        missing="linear interpolation between the neighbouring measured weeks (evenly spaced)"),
}


def fill_linear(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaNs of each column of ``values: (rows, columns)`` by linear interpolation over the row
    index; returns (filled copy, number of values filled).

    Raises ValueError for a column that is all NaN or has NaN at its first or last row (there is
    nothing to interpolate from)."""
    out = np.array(values, dtype=np.float64, copy=True)
    filled = 0
    rows = np.arange(out.shape[0])
    for j in range(out.shape[1]):
        bad = np.isnan(out[:, j])
        if not bad.any():
            continue
        if bad.all() or bad[0] or bad[-1]:
            raise ValueError(f"column {j}: missing values at an end of the series cannot be interpolated")
        out[bad, j] = np.interp(rows[bad], rows[~bad], out[~bad, j])
        filled += int(bad.sum())
    return out, filled


def load_bundled(name: str) -> tuple[Table, dict]:
    """The bundled series ``name`` as a :class:`~formers.timeseries.data.Table` (missing values
    filled as its spec says) and facts to record (package and version, rows, values filled,
    sha256 of the filled values, licence, missing-value treatment).

    Raises ValueError for an unknown name, ImportError (naming the extra) without the package."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled series {name!r}; known: {sorted(BUNDLED)}")
    spec = BUNDLED[name]
    dates, names, raw = spec.loader()
    values, filled = fill_linear(raw)
    from importlib.metadata import version

    info = {"bundled": name, "package": f"{spec.package} {version(spec.package)}", "source": spec.source,
            "licence": spec.licence, "missing_filled": filled, "missing_treatment": spec.missing,
            "values_sha256": hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()}
    return Table(names, values, dates, f"{spec.package}:{name}"), info
