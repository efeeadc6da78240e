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


@register("cache", "static", caps=Capabilities(kv_cache=True),
          summary="preallocated fixed-shape key/value buffers written in place at a position "
                  "tensor (torch.compile / CUDA graphs without recompiling per token)")
class StaticCache(FullCache):
    """Static-shape policy: keys and values live in preallocated buffers
    ``k, v: (batch, n_kv_heads, max_len, head_dim)`` (zeros at first; allocated at the first
    update, from the shape, dtype and device of the keys), written in place at the absolute
    positions ``pos`` (a tensor, so a decoding step has the same shapes and graph inputs at every
    position). ``update`` returns the whole buffers and ``pos = arange(max_len)``; slots that are
    not yet written (and, for a prefill chunk, keys after each query) are masked by
    :meth:`key_bias`, an additive 0 / -inf score bias that the self-attention keys path
    (:func:`formers.nn.attention.softmax.self_attention_keys`) adds to the position bias. Masked
    slots get exactly zero attention weight, so the result equals the full policy's.

    Buffers are marked as static addresses for torch.compile (CUDA graphs replay in place). Works
    with mixers that take their keys through ``self_attention_keys`` and a score bias (softmax
    with MHA / GQA / MQA, RoPE, ALiBi, learned / sinusoidal positions, pattern mixers, Key-Value
    attention, value residual); ``make_cache`` refuses the others.

    Options: ``max_len`` (int >= 1): the longest sequence the buffers hold (``make_cache`` gives
    the model's ``max_seq_len``). Raises ValueError for bad options and IndexError-like errors
    (from ``index_copy_``) for a position >= max_len.
    Memory: 2 * batch * n_kv_heads * max_len * head_dim elements per layer, from the start.
    """

    static = True

    def __init__(self, max_len: int = 0, **options: Any) -> None:
        super().__init__(**options)
        self.max_len = _check_count("static", "max_len", max_len, 1)

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        b, h, _, d = k.shape
        self.k = k.new_zeros(b, h, self.max_len, d)
        self.v = v.new_zeros(b, v.shape[1], self.max_len, v.shape[-1])
        self.pos = torch.arange(self.max_len, device=k.device)
        mark = getattr(torch._dynamo, "mark_static_address", None)
        if mark is not None:
            for t in (self.k, self.v, self.pos):
                mark(t, guard=False)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """Write k, v (batch, n_kv_heads, new_len, head_dim) at positions ``pos`` (new_len,) int64;
        return the buffers (batch, n_kv_heads, max_len, head_dim) and ``arange(max_len)``."""
        if self.k is None or self.k.shape[0] != k.shape[0] or self.k.shape[1] != k.shape[1] \
                or self.k.dtype != k.dtype or self.k.device != k.device:
            self._allocate(k, v)
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        return self.k, self.v, self.pos

    def key_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(q_len, max_len) float32: 0 where key position <= query position, -inf elsewhere (the
        causal mask by absolute positions, which also hides the slots not yet written)."""
        ok = k_pos[None, :] <= q_pos[:, None]
        return torch.zeros(ok.shape, device=ok.device).masked_fill(~ok, float("-inf"))

    def __len__(self) -> int:
        return 0 if self.k is None else self.max_len

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows in place (the buffers keep their addresses; ``index`` keeps the batch
        size), plus the cross-attention keys and states as the full policy does."""
        if self.k is not None:
            if index.shape[0] != self.k.shape[0]:
                raise ValueError(f"cache 'static': reorder keeps the batch size {self.k.shape[0]}, "
                                 f"got an index of {index.shape[0]} rows")
            self.k.copy_(self.k[index])
            self.v.copy_(self.v[index])
        if self.cross is not None:
            self.cross = (self.cross[0][index], self.cross[1][index])
        self.state = {n: t[index] for n, t in self.state.items()}


class KVCache:
    """The cache of one generation: ``layers[i]`` is layer i's cache; ``offset`` counts the tokens
    already processed (the absolute position of the next token).

    When every layer has the ``static`` policy the cache is *static*: the next position is then a
    device tensor ``position`` (0-dim int64, advanced in place by :meth:`advance`), so that a
    compiled decoding step reads no Python number that changes per token; ``offset`` reads it back
    (a host sync: for callers outside the loop). Mixing static and other policies raises ValueError.
    """

    def __init__(self, policies: list[str], options: list[dict[str, Any]] | None = None) -> None:
        from formers.registry import get

        options = options or [{} for _ in policies]
        self.layers = [get("cache", p).obj(**dict(o)) for p, o in zip(policies, options)]
        flags = [bool(getattr(c, "static", False)) for c in self.layers]
        if any(flags) and not all(flags):
            raise ValueError(f"KVCache: the 'static' policy must be every layer's policy (the layers "
                             f"share one position tensor), got {policies}")
        self.static = bool(flags) and all(flags)
        self.position: torch.Tensor | None = None
        self._offset = 0

    @property
    def offset(self) -> int:
        if self.static:
            return 0 if self.position is None else int(self.position)
        return self._offset

    @offset.setter
    def offset(self, value: int) -> None:
        if self.static:
            raise ValueError("KVCache: a static cache's position is a tensor; use reset() / advance()")
        self._offset = value

    def start(self, device: torch.device) -> torch.Tensor | int:
        """The position of the next token: an int, or for a static cache its 0-dim int64 device
        tensor (created at 0 on first use and marked as a static address for torch.compile)."""
        if not self.static:
            return self._offset
        if self.position is None or self.position.device != torch.device(device):
            self.position = torch.zeros((), dtype=torch.long, device=device)
            mark = getattr(torch._dynamo, "mark_static_address", None)
            if mark is not None:
                mark(self.position, guard=False)
        return self.position

    def advance(self, n: int) -> None:
        """Count ``n`` more processed tokens (in place on the position tensor when static)."""
        if self.static:
            self.position.add_(n)
        else:
            self._offset += n

    def reset(self) -> None:
        """Start a new sequence: position 0 (a static cache keeps its buffers: the stale keys are
        masked by position; cross-attention keys and states are dropped)."""
        if self.static and self.position is not None:
            self.position.zero_()
        self._offset = 0
        for c in self.layers:
            c.cross, c.state = None, {}
            if not getattr(c, "static", False):
                c.k = c.v = c.pos = None

    def reorder(self, index: torch.Tensor) -> None:
        for c in self.layers:
            c.reorder(index)

    def nbytes(self) -> int:
        """Bytes held by cached self-attention keys and values."""
        return sum(c.nbytes() for c in self.layers)


__all__ = ["FullCache", "KVCache", "RecurrentCache", "SinkWindowCache", "StaticCache", "WindowCache"]
