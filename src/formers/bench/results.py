"""Where a benchmark's record goes: ``<stem>.json`` (the record), ``<stem>.md`` (its table) and,
when the benchmark draws one, ``<stem>.png``, each written atomically; and the checks shared by
the benchmarks' ``--compare`` (read a stored record, name the settings that differ, refuse to
overwrite the record compared against)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from formers.atomic import write_json, write_text


def write_result_files(out_dir: str | Path, stem: str, record: dict[str, Any],
                       markdown: Callable[[dict[str, Any]], str],
                       plot: Callable[[dict[str, Any], Path], Any] | None = None) -> dict[str, Path]:
    """Write ``record`` as JSON, ``markdown(record)`` as .md and (with ``plot``) ``plot(record, path)``
    as .png in ``out_dir``; returns the paths by suffix (``json``, ``md``, ``png``)."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    write_json(paths["json"], record)
    write_text(paths["md"], markdown(record))
    if plot is not None:
        paths["png"] = out_dir / f"{stem}.png"
        plot(record, paths["png"])
    return paths


def read_result(path: str | os.PathLike, benchmark: str, key: str) -> dict[str, Any]:
    """The stored record at ``path``, checked to be a ``benchmark`` result holding ``key``.

    Raises:
        ValueError: no such file, or not a ``benchmark`` record with ``key``.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--compare: no such file {str(p)!r}")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or data.get("benchmark") != benchmark or key not in data:
        raise ValueError(f"--compare: {str(p)!r} is not a {benchmark} result (benchmark {benchmark!r} with {key})")
    return data


def settings_differ(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """A ``settings differ: ...`` line naming each of ``keys`` whose value differs between the two
    records (threads, dtype, torch version ...: a change that is not the code's), or None."""
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ("settings differ: " + ", ".join(diff) + " (the change is not the code's alone)") if diff else None


def refuse_overwrite(compare: str | os.PathLike, out_dir: str | os.PathLike, stem: str,
                     remedy: str = "pass another --out") -> None:
    """ValueError when the run would write ``out_dir/stem.json``, the very file ``--compare`` reads;
    the message ends with ``remedy``."""
    if (Path(out_dir) / f"{stem}.json").resolve() == Path(compare).resolve():
        raise ValueError(f"--compare {compare} is the file this run would write (--out {out_dir}); {remedy}")
