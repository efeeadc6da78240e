"""Finding and loading the model the explainer shows (safetensors + JSON only, never a pickle).

Accepted paths: a model folder (``config.json`` + ``model.safetensors``), its ``model.safetensors``
file, a run folder written by the trainer (``config.yaml`` + ``ckpt/``; its latest complete
checkpoint, checked against the sha256 recorded at save time), or a folder holding exactly one
such run (``runs/demo/baseline`` with one ``seed0``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


class ByteText:
    """The byte-level tokenizer of formers' text models (vocab 259: 256 bytes + 3 specials)."""

    kind = "bytes"
    hint = "type any text; each UTF-8 byte is one token"

    def __init__(self) -> None:
        from formers.text.tokenizer import ByteTokenizer

        self.tok = ByteTokenizer()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def label(self, i: int) -> str:
        """A readable label of one token: the character, or a visible stand-in."""
        names = {256: "<bos>", 257: "<eos>", 258: "<pad>", 10: "\u21b5", 32: "\u2423", 9: "\u21e5"}
        if i in names:
            return names[i]
        return chr(i) if 33 <= i < 127 else f"<0x{i:02X}>"

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


class IdText:
    """Models with another vocabulary: the text is token ids separated by spaces."""

    kind = "ids"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.hint = f"type token ids in [0, {vocab_size}) separated by spaces"

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(t) for t in text.split()]
        except ValueError:
            raise ValueError(f"this model's vocabulary is not bytes: {self.hint}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside [0, {self.vocab_size})")
        return ids

    def label(self, i: int) -> str:
        return str(i)

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i) for i in ids)


@dataclass
class Loaded:
    """A model ready to explain: ``model`` (eval mode), its ``tokenizer``, a display ``name`` and
    the ``folder`` its weights came from."""

    model: nn.Module
    tokenizer: Any
    name: str
    folder: Path


def model_folder(path: str | Path) -> Path:
    """The folder holding ``config.json`` + ``model.safetensors`` for ``path`` (see module doc).

    Raises FileNotFoundError when nothing loadable is there, ValueError for a corrupt checkpoint.
    """
    from formers.train.checkpoint import find_checkpoint, verify_checkpoint

    p = Path(path)
    if p.is_file() and p.name == "model.safetensors":
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return p
    if (p / "config.yaml").is_file():
        ckpt = find_checkpoint(p)
        if ckpt is None:
            best = p / "best"
            if (best / "config.json").is_file():
                return best
            raise FileNotFoundError(f"{p} holds no checkpoint (ckpt/): the run has not saved yet")
        verify_checkpoint(ckpt)
        return ckpt
    runs = [c for c in sorted(p.iterdir()) if c.is_dir() and (c / "config.yaml").is_file()] if p.is_dir() else []
    if len(runs) == 1:
        return model_folder(runs[0])
    found = ", ".join(c.name for c in runs[:6])
    raise FileNotFoundError(
        f"{p} is not a model folder (config.json + model.safetensors) nor a run folder (config.yaml + "
        f"ckpt/)" + (f"; it holds several runs ({found}): pass one of them" if runs else ""))


def load(path: str | Path, name: str | None = None) -> Loaded:
    """Load the language model at ``path`` for the explainer (CPU, eval mode).

    Raises FileNotFoundError (nothing to load), ValueError (a model of another family, such as a
    forecaster, an encoder-decoder, or weights that do not match the config).
    """
    from formers.nn.config import ModelConfig
    from formers.nn.io import load_model

    folder = model_folder(path)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or "arch" not in raw or "vocab_size" not in raw:
        family = raw.get("model") if isinstance(raw, dict) else None
        raise ValueError(
            f"{path} holds a model of another family ({family or 'unknown'!s}: its config.json has no "
            f"'arch' / 'vocab_size'); formers explain shows transformer language models "
            f"(decoder-only or encoder-only) such as those of `formers compare lm`")
    cfg = ModelConfig.from_dict(raw)
    if cfg.arch == "encoder-decoder":
        raise ValueError(f"{path} is an encoder-decoder model; formers explain shows decoder-only and "
                         f"encoder-only language models")
    model = load_model(folder).eval()
    tokenizer = ByteText() if cfg.vocab_size == 259 else IdText(cfg.vocab_size)
    return Loaded(model, tokenizer, name or _display_name(Path(path)), folder)


def _display_name(p: Path) -> str:
    parts = [x for x in p.resolve().parts if x not in ("ckpt", "best", "model.safetensors")]
    return "/".join(parts[-2:]) if parts else str(p)
