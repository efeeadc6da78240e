"""Where a benchmark's record goes: ``<stem>.json`` (the record), ``<stem>.md`` (its table) and,
when the benchmark draws one, ``<stem>.png``, each written atomically."""

from __future__ import annotations

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
