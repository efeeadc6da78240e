"""Corpora as byte streams with a fixed train/validation split by file.

The default corpus is the Python standard library's own source: the ``*.py`` files directly in
the running interpreter's ``Lib/`` folder (``sysconfig.get_paths()['stdlib']``). It needs no
download, but its content depends on the Python version, so every run records the file count,
total bytes and a sha256 over the files.

Split rule (fixed, order-independent): a file goes to validation when crc32 of its path relative
to the corpus root is divisible by 10 (about 10% of files); the rest is training data. A corpus of
a single file is split by bytes instead: its last 10% is validation.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".json", ".csv", ".tex", ".c", ".h", ".html", ".js", ""}


@dataclass
class Corpus:
    """train / val: uint8 arrays of bytes; info: what the corpus is (recorded with each run)."""

    train: np.ndarray
    val: np.ndarray
    info: dict

    def unigram_entropy(self) -> float:
        """Entropy of the training bytes' unigram distribution, in bits per byte (a scale for bpb)."""
        counts = np.bincount(self.train, minlength=256).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log2(p)).sum())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(root, file) pairs: files as given, folders walked recursively for text-like files."""
    out: list[tuple[Path, Path]] = []
    for p in paths:
        if str(p).strip() in ("", "."):
            raise ValueError(f"data path {str(p)!r} is empty or the current folder; name the files "
                             f"or folders to read")
        if not p.exists():
            raise FileNotFoundError(f"data path does not exist: {p}")
        if p.is_file():
            out.append((p.parent, p))
        else:
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            out.extend((p, f) for f in found)
    return out


def load_corpus(paths: list[str | Path] | None = None) -> Corpus:
    """Load ``paths`` (files or folders) or, when None/empty, the stdlib corpus.

    Raises:
        FileNotFoundError: a path does not exist.  ValueError: no bytes found, or the split leaves
        train or validation empty.
    """
    if paths:
        pairs = _files([Path(p) for p in paths])
        name = "files"
    else:
        root = stdlib_root()
        pairs = [(root, f) for f in sorted(root.glob("*.py"))]
        name = "python-stdlib"
    if not pairs:
        raise ValueError(f"no text files found under {[str(p) for p in paths or [stdlib_root()]]}")
    sha = hashlib.sha256()
    train, val = [], []
    for root, f in pairs:
        data = f.read_bytes()
        rel = f.relative_to(root).as_posix()
        sha.update(rel.encode() + b"\0" + data)
        (val if zlib.crc32(rel.encode()) % 10 == 0 else train).append(data)
    total = sum(len(d) for d in train) + sum(len(d) for d in val)
    if total == 0:
        raise ValueError(f"the corpus {[str(f) for _, f in pairs][:3]} holds no bytes")
    split = "crc32(relative path) % 10 == 0 -> val"
    if len(pairs) == 1 or not train or not val:
        stream = b"\n".join(train + val)
        cut = math.floor(0.9 * len(stream))
        train, val = [stream[:cut]], [stream[cut:]]
        split = "bytes: first 90% train, last 10% val (one file, or no file fell to either side)"
    info = {
        "name": name,
        "files": len(pairs),
        "bytes": total,
        "sha256": sha.hexdigest(),
        "root": str(pairs[0][0]) if not paths else [str(p) for p in paths],
        "split": split,
    }
    tr = np.frombuffer(b"\n".join(train), dtype=np.uint8)
    va = np.frombuffer(b"\n".join(val), dtype=np.uint8)
    info.update(train_bytes=int(tr.size), val_bytes=int(va.size))
    return Corpus(tr, va, info)
