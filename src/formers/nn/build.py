"""Build a registered part from the model config and a dict of per-layer options."""

from __future__ import annotations

from typing import Any

from torch import nn

from formers.config import check_options
from formers.nn.config import ModelConfig
from formers.registry import get


def build_part(kind: str, name: str, cfg: ModelConfig, options: dict[str, Any] | None = None,
               **extra: Any) -> nn.Module:
    """``registry[kind][name](cfg, **extra, **options)`` with option names checked first.

    Raises:
        ValueError: unknown part name, or an option the part does not take (naming the allowed ones).
    """
    entry = get(kind, name)
    options = dict(options or {})
    # set by the backbone (SVFormer layers get own_values=False), not user options: kept out of the
    # "allowed" list of the error message
    backbone = {k: options.pop(k) for k in ("cross", "own_values") if kind == "attention" and k in options}
    check_options(f"{kind} {name!r}", entry.obj.__init__, options,
                  reserved=("cfg", *(("cross", "own_values") if kind == "attention" else ()), *extra))
    return entry.obj(cfg, **extra, **backbone, **options)
