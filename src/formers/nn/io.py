"""Saving and loading models: ``config.json`` + ``model.safetensors`` in a folder. Never unpickles."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from formers.atomic import atomic_write, write_json
from formers.nn.config import ModelConfig
from formers.nn.models import build_model


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` atomically (tied weights once)."""
    from safetensors.torch import save_model as st_save

    folder = Path(folder)
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    atomic_write(folder / "model.safetensors", lambda tmp: st_save(model, tmp))
    write_json(folder / "config.json", cfg.to_dict())
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``.

    Raises:
        FileNotFoundError: a file is missing.  ValueError: the config is invalid, or the weights do
        not match it (missing / unexpected / mis-shaped tensors), or the file is corrupt.
    """
    from safetensors.torch import load_model as st_load

    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found (a formers model folder holds "
                                    f"config.json and model.safetensors)")
    try:
        cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{folder / 'config.json'} is not a valid model config: {e}") from None
    model = build_model(cfg)
    try:
        missing, unexpected = st_load(model, folder / "model.safetensors", strict=False, device=str(device))
    except Exception as e:  # safetensors raises its own error types for corrupt files / shapes
        raise ValueError(f"cannot load {folder / 'model.safetensors'}: {e}") from None
    if missing or unexpected:
        raise ValueError(
            f"{folder / 'model.safetensors'} does not match config.json: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device)
