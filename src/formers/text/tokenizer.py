"""Byte-level tokenizer: ids 0-255 are the UTF-8 bytes, then three specials. No download needed."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Text <-> byte ids. ``vocab_size`` = 259: 256 bytes + <bos> (256), <eos> (257), <pad> (258).

    ``decode`` drops specials and replaces invalid UTF-8 with U+FFFD, so any id sequence decodes.
    """

    bos, eos, pad = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
