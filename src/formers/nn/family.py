"""Model families with their own config classes: build, rebuild and load by registry kind.

A family is a registry kind (``pinn``, ...) whose entries are ``nn.Module`` classes built as
``Cls(cfg)`` from a dataclass config (a :class:`formers.config.Config`) that has a ``model`` field
holding the entry's name, and that keep ``cfg`` as ``self.cfg``. A saved model is the folder
``config.json`` (``cfg.to_dict()``) + ``model.safetensors`` written by
:func:`formers.nn.io.save_model`; loading never unpickles.

These four functions are the whole family interface a task needs (``model_config``,
``config_from_dict``, ``build_model``, ``load_model`` of :class:`formers.train.task.Task`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.registry import get


def family_config(kind: str, name: str, **fields: Any) -> Any:
    """The config of entry ``name`` of registry ``kind`` with ``fields`` set.

    Raises ValueError for an unknown name (listing the registered ones), an entry registered
    without a config class, or an unknown field (listing the allowed ones)."""
    entry = get(kind, name)
    if entry.config is None:
        raise ValueError(f"{kind} {name!r} was registered without a config class")
    return entry.config.from_dict({**fields, "model": name})


def family_config_from_dict(kind: str, data: dict[str, Any]) -> Any:
    """Rebuild a config of ``kind`` from its ``to_dict()`` (its ``model`` field names the entry)."""
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"a {kind} config dict needs a 'model' field, got {data!r:.200}")
    return family_config(kind, data["model"], **{k: v for k, v in data.items() if k != "model"})


def build_family(kind: str, cfg: Any) -> nn.Module:
    """The module of ``cfg``: the class registered under (``kind``, ``cfg.model``) called with it.

    Raises TypeError when ``cfg`` is not an instance of that entry's config class."""
    entry = get(kind, getattr(cfg, "model", ""))
    if entry.config is not None and not isinstance(cfg, entry.config):
        raise TypeError(f"{kind} {entry.name!r} needs a {entry.config.__name__}, got {type(cfg).__name__}")
    return entry.obj(cfg)


def load_family(kind: str, folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A model of ``kind`` saved as ``config.json`` + ``model.safetensors``.

    Raises FileNotFoundError for a missing file, ValueError for a bad config or weights that do
    not match it."""
    from safetensors.torch import load_model as st_load

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found (a saved model folder holds "
                                    f"config.json and model.safetensors)")
    try:
        cfg = family_config_from_dict(kind, json.loads((folder / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{folder / 'config.json'} is not a valid {kind} config: {e}") from None
    model = build_family(kind, cfg)
    try:
        st_load(model, str(folder / "model.safetensors"), strict=True, device=str(device))
    except Exception as e:  # safetensors raises its own types for corrupt files / shapes
        raise ValueError(f"cannot load {folder / 'model.safetensors'}: {e}") from None
    return model.to(device)
