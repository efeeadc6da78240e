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
            raise ValueError(f"cache {type(self).__name__}: unknown options {sorted(options)} (it takes no others)")
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


def _check_count(policy: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"cache {policy!r}: {name} must be an int >= {minimum}, got {value!r}")
    return value


@register("cache", "window", caps=Capabilities(kv_cache=True),
          paper=Paper("Longformer: The Long-Document Transformer", "2004.05150", "§3.1 sliding window"),
          summary="keep the last window - 1 keys (for sliding-window attention of that window)")
class WindowCache(FullCache):
    """Sliding-window policy: after each update keeps only the newest ``window - 1`` keys/values,
    which is all that a query at a later position can see under a sliding window of ``window``
    keys (itself included). Memory per layer: O(window) instead of O(length).

    ``update`` still returns every key the *current* queries may need (the kept ones plus the new
    chunk), so a chunk of any length decodes correctly; the mixer's pattern masks the rest. Use it
    only with a mixer whose pattern reaches back at most ``window`` keys (the model checks this
    when it builds the cache).

    Options: ``window`` (int >= 1). Raises ValueError for anything else.
    """

    def __init__(self, window: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.window = _check_count("window", "window", window, 1)
        self.sinks = 0

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        k, v, pos = super().update(k, v, pos)
        keep_tail = self.window - 1
        if self.k.shape[2] > self.sinks + keep_tail:
            idx = torch.cat([torch.arange(self.sinks, device=k.device),
                             torch.arange(self.k.shape[2] - keep_tail, self.k.shape[2], device=k.device)])
            self.k, self.v, self.pos = self.k[:, :, idx], self.v[:, :, idx], self.pos[idx]
        return k, v, pos


@register("cache", "sink-window", caps=Capabilities(kv_cache=True),
          paper=Paper("Efficient Streaming Language Models with Attention Sinks", "2309.17453",
                      "§3.2; LightTransfer arXiv 2410.13846 §3 streaming layers"),
          summary="keep the first `sinks` keys plus the last window - 1 (StreamingLLM / LightTransfer)")
class SinkWindowCache(WindowCache):
    """Sink + window (streaming) policy: keeps the first ``sinks`` keys of the sequence (the
    attention sinks) and the newest ``window - 1``; for mixers whose pattern is
    ``k < sinks or q - k < window`` (causal). Positions stay absolute (StreamingLLM re-numbers
    positions inside the cache; here the pattern and RoPE use the true positions, so cached
    decoding equals the masked full forward).

    Options: ``sinks`` (int >= 0), ``window`` (int >= 1).
    """

    def __init__(self, sinks: int = 0, window: int = 0, **options: Any) -> None:
        super().__init__(window=window, **options)
        self.sinks = _check_count("sink-window", "sinks", sinks, 0)


@register("cache", "recurrent", caps=Capabilities(kv_cache=True),
          summary="hold a fixed-size recurrent state (linear attention, causal Flowformer)")
class RecurrentCache(FullCache):
    """Recurrent-state policy: holds no keys or values, only the mixer's running state tensors in
    ``state`` (e.g. sum_j phi(k_j) v_j^T for linear attention), so decoding costs O(1) memory and
    time per token. ``update`` raises: a mixer that needs keys cannot use this policy."""

    def update(self, k, v, pos):
        raise ValueError("cache 'recurrent' holds a state, not keys/values: this layer's mixer "
                         "needs a key/value policy ('full', 'window', 'sink-window')")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


class KVCache:
    """The cache of one generation: ``layers[i]`` is layer i's cache; ``offset`` counts the tokens
    already processed (the absolute position of the next token)."""

    def __init__(self, policies: list[str], options: list[dict[str, Any]] | None = None) -> None:
        from formers.registry import get

        options = options or [{} for _ in policies]
        self.layers = [get("cache", p).obj(**dict(o)) for p, o in zip(policies, options)]
        self.offset = 0

    def reorder(self, index: torch.Tensor) -> None:
        for c in self.layers:
            c.reorder(index)

    def nbytes(self) -> int:
        """Bytes held by cached self-attention keys and values."""
        return sum(c.nbytes() for c in self.layers)


__all__ = ["FullCache", "KVCache", "RecurrentCache", "SinkWindowCache", "WindowCache"]
