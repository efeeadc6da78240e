"""Build a registered part from the model config and a dict of per-layer options."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

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
    params = inspect.signature(entry.obj.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p not in ("self", "cfg", *extra)]
    bad = [k for k in options if k not in allowed]
    if bad and not takes_any:
        raise ValueError(f"{kind} {name!r} does not take option(s) {bad}; allowed: {allowed}")
    return entry.obj(cfg, **extra, **options)
