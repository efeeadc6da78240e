"""Long-horizon forecasting data: finding, reading and splitting multivariate series.

Where a data set comes from (first hit wins), :func:`find_dataset`:

1. ``data_dir`` (the task's ``data`` option / ``formers train --data``): a CSV file or a folder;
2. the folder in the environment variable ``FORMERS_DATA``;
3. ``../shared/data/`` next to the repository (a development checkout), when it exists;
4. the user cache ``~/.cache/formers/data`` (``$XDG_CACHE_HOME/formers/data``);
5. a download from the data set's canonical public address into that cache, checked against
   the recorded sha256 (only for files whose sha256 is recorded; nothing is ever downloaded
   unverified). Without network, a :class:`FileNotFoundError` names the folders searched and the
   address to fetch the file from.

Splits (:func:`split_borders`), as in Informer / Autoformer / Time-Series-Library / PatchTST /
SAMformer / Pathformer (``data_provider/data_loader.py`` of thuml/Time-Series-Library):

* ``ett_hour`` (ETTh1/ETTh2): 12/4/4 months of 30 days: train rows [0, 8640), validation rows
  [8640 - L, 11520), test rows [11520 - L, 14400); the remaining rows are never used;
* ``ett_minute`` (ETTm1/ETTm2): the same borders times 4 (34560 / 11520 / 11520 rows);
* ``ratio`` (every other CSV): 70/10/20 chronological, ``n_train = int(0.7 n)``,
  ``n_test = int(0.2 n)``, ``n_val = n - n_train - n_test``; validation starts at n_train - L and
  test at n - n_test - L.

The validation and test windows start L (look-back) rows before their split so that every target
row of the split is predicted; windows use stride 1. The scaler (per-column mean and population
standard deviation, as sklearn's ``StandardScaler``; a constant column gets scale 1) is fitted on
the training rows only and applied to all rows.

Licences: ETTh1/ETTh2/ETTm1/ETTm2 (zhouhaoyi/ETDataset) are CC BY-ND 4.0: they are read
unmodified from where they lie and never copied into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ETT_COMMIT = "1d16c8f4f943005d613b5bc962e9eeb06058cf07"
ETT_LICENCE = "CC BY-ND 4.0 (zhouhaoyi/ETDataset): use unmodified, attribute"
_ETT_URL = f"https://raw.githubusercontent.com/zhouhaoyi/ETDataset/{ETT_COMMIT}/ETT-small/{{}}.csv"

MISSING = {"", "na", "nan", "null", "none", "?", "n/a"}
DATE_NAMES = {"date", "time", "timestamp", "datetime", "ds"}


@dataclass(frozen=True)
class DatasetSpec:
    """A known data set: ``filename`` to look for, the ``url`` to download it from, its ``sha256``
    (None: never downloaded, place the file by hand), the ``split`` rule, the default ``target``
    column, the ``licence`` and the expected number of data ``rows`` (None: unchecked)."""

    name: str
    filename: str
    url: str
    sha256: str | None
    split: str
    target: str = "OT"
    licence: str = ETT_LICENCE
    rows: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    "ETTh1": DatasetSpec("ETTh1", "ETTh1.csv", _ETT_URL.format("ETTh1"),
                         "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066",
                         "ett_hour", rows=17420),
    "ETTh2": DatasetSpec("ETTh2", "ETTh2.csv", _ETT_URL.format("ETTh2"), None, "ett_hour", rows=17420),
    "ETTm1": DatasetSpec("ETTm1", "ETTm1.csv", _ETT_URL.format("ETTm1"), None, "ett_minute", rows=69680),
    "ETTm2": DatasetSpec("ETTm2", "ETTm2.csv", _ETT_URL.format("ETTm2"), None, "ett_minute", rows=69680),
}

SPLITS = ("ett_hour", "ett_minute", "ratio")


# ------------------------------------------------------------------------------------ finding
def repo_shared_data() -> Path | None:
    """``../shared/data`` beside the repository holding this source tree, when it exists."""
    repo = Path(__file__).resolve().parents[3]
    p = repo.parent / "shared" / "data"
    return p if p.is_dir() else None


def cache_dir() -> Path:
    """The user cache for downloaded data: ``$XDG_CACHE_HOME/formers/data`` or ``~/.cache/formers/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "formers" / "data"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for a named data set, in order (see the module docstring)."""
    out: list[Path] = []
    if data_dir is not None:
        out.append(Path(data_dir))
    env = os.environ.get("FORMERS_DATA")
    if env:
        out.append(Path(env))
    shared = repo_shared_data()
    if shared is not None:
        out.append(shared)
    out.append(cache_dir())
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(spec: DatasetSpec, dest_dir: Path, timeout: float = 30.0) -> Path:
    """Fetch ``spec.url`` into ``dest_dir/spec.filename``, verifying ``spec.sha256`` before the file
    is moved into place (atomic rename).

    Raises:
        FileNotFoundError: no checksum is recorded, or the network fails (with where to put the file).
        ValueError: the downloaded bytes do not have the recorded sha256 (nothing is kept).
    """
    if spec.sha256 is None:
        raise FileNotFoundError(f"no sha256 is recorded for {spec.name}, so it is not downloaded "
                                f"automatically; fetch {spec.url} and put it into one of the folders above")
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.filename
    tmp = dest_dir / f".{spec.filename}.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(spec.url, timeout=timeout) as r, open(tmp, "wb") as f:
            while True:
                block = r.read(1 << 20)
                if not block:
                    break
                f.write(block)
        got = sha256_file(tmp)
        if got != spec.sha256:
            raise ValueError(f"downloaded {spec.url} has sha256 {got}, expected {spec.sha256}; "
                             f"the file was not kept")
        os.replace(tmp, final)
    except OSError as e:  # URLError is an OSError
        raise FileNotFoundError(f"could not download {spec.url} ({e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def find_dataset(name: str, data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """The CSV file of data set ``name`` (a key of :data:`DATASETS`), or of ``data_dir`` when that
    is a file.

    Raises:
        ValueError: unknown ``name`` (and ``data_dir`` is not a file).
        FileNotFoundError: the file is nowhere and cannot be downloaded; the message lists the
            folders searched and the address of the file.
    """
    if data_dir is not None and Path(data_dir).is_file():
        return Path(data_dir)
    if data_dir is not None and not Path(data_dir).exists():
        raise FileNotFoundError(f"data path {data_dir} does not exist")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}, or pass a CSV file "
                         f"with --data my.csv (a date column and numeric columns)")
    spec = DATASETS[name]
    dirs = search_dirs(data_dir)
    for d in dirs:
        if (d / spec.filename).is_file():
            return d / spec.filename
    where = ", ".join(str(d) for d in dirs)
    if allow_download:
        try:
            return download(spec, cache_dir())
        except FileNotFoundError as e:
            reason = str(e)
    else:
        reason = "downloads are off"
    raise FileNotFoundError(
        f"{spec.filename} not found in {where}; {reason}. Put the unmodified file ({spec.url}, "
        f"{spec.licence}) into one of those folders, set FORMERS_DATA=/folder, or pass --data /path/"
        f"{spec.filename}")


# ------------------------------------------------------------------------------------ reading
@dataclass
class Table:
    """A CSV's numeric content: ``values`` (n_rows, n_columns) float64 with column ``names``;
    ``dates`` are the date column's strings (None when the file has none)."""

    names: list[str]
    values: np.ndarray
    dates: list[str] | None
    path: str


def read_table(path: str | os.PathLike) -> Table:
    """Read a CSV with a header row, an optional date column and numeric columns.

    The date column is the one named date/time/timestamp/datetime/ds (any case), else the first
    column when its first value is not a number. Every other column must be numeric.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, ragged rows, duplicate column names, a missing value (empty, NA,
            NaN, null, ?) or a non-numeric value (naming the row, counted from 1 after the header,
            and the column), or a non-finite value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row and at least one data row, got {len(rows)} row(s)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: duplicate column names in header {header}")
    body = rows[1:]
    for i, r in enumerate(body, 1):
        if len(r) != len(header):
            raise ValueError(f"{path}: data row {i} has {len(r)} fields, the header has {len(header)}")
    date_col = next((j for j, h in enumerate(header) if h.lower() in DATE_NAMES), None)
    if date_col is None and not _is_number(body[0][0]):
        date_col = 0
    num_cols = [j for j in range(len(header)) if j != date_col]
    if not num_cols:
        raise ValueError(f"{path}: no numeric columns besides the date column {header[date_col]!r}")
    values = np.empty((len(body), len(num_cols)), dtype=np.float64)
    for i, r in enumerate(body):
        for k, j in enumerate(num_cols):
            cell = r[j].strip()
            if cell.lower() in MISSING:
                raise ValueError(f"{path}: missing value in data row {i + 1}, column {header[j]!r}; "
                                 f"fill or drop missing values before forecasting")
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(f"{path}: column {header[j]!r} is not numeric (data row {i + 1} "
                                 f"holds {cell!r}); every column but the date must be numeric") from None
            if not math.isfinite(v):
                raise ValueError(f"{path}: non-finite value {cell!r} in data row {i + 1}, "
                                 f"column {header[j]!r}")
            values[i, k] = v
    dates = [r[date_col] for r in body] if date_col is not None else None
    return Table([header[j] for j in num_cols], values, dates, str(path))


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return s.strip().lower() in MISSING


# ------------------------------------------------------------------------------------ splits
def split_borders(n_rows: int, look_back: int, horizon: int, split: str) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of train / val / test (val and test start ``look_back`` early).

    Raises:
        ValueError: unknown ``split``, a series too short for the ETT borders, or a split with
            fewer rows than look_back + horizon (no window), naming the numbers.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    L = look_back
    if split in ("ett_hour", "ett_minute"):
        m = 1 if split == "ett_hour" else 4
        tr, va, te = 12 * 30 * 24 * m, 4 * 30 * 24 * m, 4 * 30 * 24 * m
        need = tr + va + te
        if n_rows < need:
            raise ValueError(f"split {split!r} needs {need} rows (12/4/4 months), the series has {n_rows}")
        b = {"train": (0, tr), "val": (tr - L, tr + va), "test": (tr + va - L, tr + va + te)}
    else:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        b = {"train": (0, n_train), "val": (n_train - L, n_train + n_val),
             "test": (n_rows - n_test - L, n_rows)}
    for name, (s, e) in b.items():
        if s < 0 or e - s < L + horizon:
            raise ValueError(
                f"too few rows for look_back + horizon = {L} + {horizon}: the {name} split has rows "
                f"[{s}, {e}) of {n_rows} ({e - max(s, 0)} rows incl. the look-back); use a shorter "
                f"look_back / horizon or a longer series")
    return b


# ------------------------------------------------------------------------------------ prepare
@dataclass
class ForecastData:
    """A split and normalised series ready for windowing.

    ``train`` / ``val`` / ``test``: (rows, n_channels) float32 arrays on the normalised scale
    (val and test include their leading look-back rows). ``mean`` / ``std``: the scaler (fitted
    on training rows). ``columns``: channel names (the target last). ``info``: facts to record.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    columns: list[str]
    look_back: int
    horizon: int
    borders: dict[str, tuple[int, int]]
    info: dict[str, Any] = field(default_factory=dict)

    def n_windows(self, split: str) -> int:
        return getattr(self, split).shape[0] - self.look_back - self.horizon + 1


def prepare(path: str | os.PathLike | Table, *, look_back: int, horizon: int, target: str | None = "OT",
            features: str = "M", split: str = "ratio") -> ForecastData:
    """Read ``path`` (a CSV file, or an already read :class:`Table` such as a bundled series),
    pick the channels, split, and normalise with training statistics.

    features: ``M`` (every numeric column, the target moved last as in Time-Series-Library) or
    ``S`` (the target column only). target: a column name; None or a name that is absent with
    ``M`` when the default ``OT`` is not there -> the last column.

    Raises:
        ValueError: bad look_back / horizon / features, an unknown target column (listing the
            columns), bad data (see :func:`read_table`), too few rows (see :func:`split_borders`).
    """
    for name, v in (("look_back", look_back), ("horizon", horizon)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be an int > 0, got {v!r}")
    if features not in ("M", "S"):
        raise ValueError(f"features must be 'M' (all columns) or 'S' (the target only), got {features!r}")
    tab = path if isinstance(path, Table) else read_table(path)
    names = list(tab.names)
    if target is None:
        target = names[-1]
    if target not in names:
        raise ValueError(f"{path}: unknown target column {target!r}; columns: {names}")
    t = names.index(target)
    order = [j for j in range(len(names)) if j != t] + [t] if features == "M" else [t]
    values = tab.values[:, order]
    borders = split_borders(values.shape[0], look_back, horizon, split)
    s, e = borders["train"]
    mean = values[s:e].mean(axis=0)
    std = values[s:e].std(axis=0)  # population std (ddof 0), as StandardScaler
    std = np.where(std > 0, std, 1.0)
    z = ((values - mean) / std).astype(np.float32)
    parts = {k: np.ascontiguousarray(z[a:b]) for k, (a, b) in borders.items()}
    if isinstance(path, Table):
        info: dict[str, Any] = {"file_name": tab.path}
    else:
        info = {"file": str(Path(path).resolve()), "file_name": Path(path).name,
                "bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
    info.update({"rows": int(values.shape[0]), "columns": [names[j] for j in order],
            "target": target, "features": features, "split": split,
            "borders": {k: list(v) for k, v in borders.items()},
            "first_date": tab.dates[0] if tab.dates else None,
            "last_date": tab.dates[-1] if tab.dates else None})
    return ForecastData(parts["train"], parts["val"], parts["test"], mean, std,
                        [names[j] for j in order], look_back, horizon, borders, info)
