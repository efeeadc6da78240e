"""Decoding caches: one :class:`KVCache` per generation, one layer cache per layer, whose class
is that layer's cache *policy* (registry kind ``cache``).

A layer cache stores keys, values and the absolute positions of the cached keys, so policies that
evict entries (sliding window, sink + window) keep position-dependent biases right. Cross-attention
keys/values of the encoder memory are computed once and kept in ``cross``.
"""

from __future__ import annotations

from typing import Any

import torch

from formers.registry import Capabilities, Paper, register


@register("cache", "full", caps=Capabilities(kv_cache=True), summary="keep every key and value")
class FullCache:
    """Keeps all keys/values: k, v are (batch, n_kv_heads, cached_len, head_dim)."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise ValueError(f"cache 'full' takes no options, got {sorted(options)}")
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.cross: tuple[torch.Tensor, torch.Tensor] | None = None
        self.state: dict[str, torch.Tensor] = {}

    def update(
        self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append new keys/values at absolute positions ``pos`` (new_len,); return everything kept."""
        if self.k is None:
            self.k, self.v, self.pos = k, v, pos
        else:
            self.k = torch.cat([self.k, k], dim=2)
            self.v = torch.cat([self.v, v], dim=2)
            self.pos = torch.cat([self.pos, pos])
        return self.k, self.v, self.pos

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search): every cached tensor is indexed along dim 0."""
        if self.k is not None:
            self.k, self.v = self.k[index], self.v[index]
        if self.cross is not None:
            self.cross = (self.cross[0][index], self.cross[1][index])
        self.state = {n: t[index] for n, t in self.state.items()}

    def nbytes(self) -> int:
        ts = [t for t in (self.k, self.v) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


class KVCache:
    """The cache of one generation: ``layers[i]`` is layer i's cache; ``offset`` counts the tokens
    already processed (the absolute position of the next token)."""

    def __init__(self, policies: list[str], options: list[dict[str, Any]] | None = None) -> None:
        from formers.registry import get

        options = options or [{} for _ in policies]
        self.layers = [get("cache", p).obj(**o) for p, o in zip(policies, options)]
        self.offset = 0

    def reorder(self, index: torch.Tensor) -> None:
        for c in self.layers:
            c.reorder(index)

    def nbytes(self) -> int:
        """Bytes held by cached self-attention keys and values."""
        return sum(c.nbytes() for c in self.layers)


__all__ = ["FullCache", "KVCache", "Paper"]
