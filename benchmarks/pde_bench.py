"""Shared output helpers of the PDE-surrogate benchmarks (factformer_scaling, kolmogorov_compare,
ifactformer_3d): the device tag, the JSON / Markdown / PNG files, a two-panel figure."""

from __future__ import annotations

from pathlib import Path

from typing import Any, Callable

import torch

from formers.atomic import atomic_write, write_json, write_text


def device_tag(device: str, smoke: bool) -> str:
    """``cpu`` or the CUDA device name (spaces as underscores), ``-smoke`` appended for smoke runs."""
    tag = torch.cuda.get_device_name(device).replace(" ", "_") if device.startswith("cuda") else "cpu"
    return tag + ("-smoke" if smoke else "")


def write_all(base: Path, result: dict[str, Any], heading: str, md: str,
              draw: Callable[[Path], Any] | None = None) -> None:
    """Write ``base``.json (``result``), .md (``heading`` + ``md``) and, with ``draw``, .png; print."""
    write_json(base.with_suffix(".json"), result)
    write_text(base.with_suffix(".md"), f"{heading}\n\n{md}")
    if draw is not None:
        draw(base.with_suffix(".png"))
    print(md)
    print(f"written: {base}.json / .md" + (" / .png" if draw is not None else ""))


def two_panels(path: Path, title: str, panels: list[dict]) -> Path:
    """Write a 1 x 2 figure atomically. Each panel: ``xlabel``, ``ylabel``, ``title``, ``scale``
    (``loglog``, ``semilogy`` or ``linear``) and ``series``: (x, y, matplotlib style, label) tuples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, panel in zip(axes, panels):
        draw = {"loglog": ax.loglog, "semilogy": ax.semilogy, "linear": ax.plot}[panel.get("scale", "linear")]
        for x, y, style, label in panel["series"]:
            if len(x):
                draw(x, y, style, label=label)
        ax.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"], title=panel["title"])
        if panel["series"]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
