"""LightTransfer (Zhang, Zhang, Du, Du, Pang, Gao, Lin, "LightTransfer: Your Long-Context LLM is
Secretly a Hybrid Model with Effortless Adaptation", arXiv 2410.13846, §3 and Table 1): find the
*lazy* layers of a trained model and turn them into streaming layers (attention sinks + a recent
window, :mod:`formers.nn.attention.streaming`) with a ``sink-window`` KV cache.

**Lazy ratio** of layer i on one prompt of n tokens (§3, eq. for r_i; Table 1's code):

    r_i = 1/(H * w_last) * sum_h sum_{q in last w_last queries} sum_{k in S} A_i^h(q, k)
    S   = {first w_sink keys} U {last w_recent keys}

A_i^h is the layer's *causal* softmax attention (scale 1/sqrt(head_dim), the model's ALiBi bias if
any), so each term is the attention mass a final query puts on the keys a streaming cache keeps.
Cheap form (no n x n matrix): log sum_{k in S} A(q, k) = logsumexp_{k in S, k <= q}(s_qk) - LSE_q
with s_qk = q.k * scale (+ bias) and LSE_q = logsumexp_{k <= q}(s_qk), the log-normaliser that a
FlashAttention kernel returns for free (here computed from the w_last x n scores, or passed in).

**Selection** (LightTransfer-Test, during prefill): layers run in order; each pushes (r_i, i) into
a max-priority queue of capacity P (:class:`LazyLayerQueue`); when it holds more than P, the layer
with the largest ratio is popped, marked lazy, and its cache is cut to the first w_sink and last
w_recent keys at once. After the prefill exactly L - P layers are lazy: the L - P largest ratios.
Decoding then runs those layers as streaming attention (:func:`prefill`, :func:`convert`).

**LightTransfer-Train**: a fixed lazy set (the layers most often lazy over calibration prompts,
:func:`count_lazy`) trained with streaming masks: :func:`formers.nn.attention.streaming.with_streaming_layers`
gives the config; load the trained weights (same names and shapes) and fine-tune it. ``formers
train`` has no start-from-weights option, so use the Trainer API (as benchmarks/lighttransfer.py
does)::

    cfg = convert_config(model.cfg, lazy, sinks, window)
    tr = Trainer(task, cfg, train_cfg, out_dir)
    tr.model.load_state_dict(model.state_dict())   # in place: the optimizer keeps its parameters
    tr.fit()

Conventions and deviations:
- The paper's Table 1 listing omits the softmax scale and the causal mask; both are applied here
  (the last w_last queries overlap the recent keys, so future keys must be masked).
- Sizes: ``sinks`` = w_sink, ``window`` = w_recent + 1 (the streaming mixer's window counts the
  query itself), so a lazy layer's cache holds ``min(n, sinks + window - 1)`` keys, the paper's
  w_sink + w_recent. The ratio's recent set is the last ``window - 1`` prompt keys: exactly the keys
  the cut cache keeps.
- GQA: key heads are repeated to the query heads before the ratio (one ratio per query head).
- Per layer, averaged over heads (the paper's choice); per-head ratios are returned too. The
  paper is per prompt; with a batch of prompts :func:`prefill` averages the ratio over the batch
  so the batch shares one lazy set (pass one prompt for the paper's behaviour).
- The test-time code is not released (sail-sg/LightTrans holds only the training model with a
  hard-coded ``lazy_list`` and 129 sinks + a 1025-key window); w_last is not stated in the paper
  (default 16 here; the paper's ablation finds 8-64 robust).
- Positions stay absolute after the cut (RoPE keys cached rotated at their true positions). The
  prompt itself is prefilled with full attention in every layer, as in the paper, so decoding
  from the cut cache equals decoding from the uncut cache with the lazy layers' old keys dropped,
  not the converted model's masked full forward over prompt + continuation (that model's own
  cached decoding, from an empty cache, does equal its masked full forward).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.attention.streaming import (
    DEFAULT_SINKS, DEFAULT_WINDOW, StreamingAttention, check_sink_window, with_streaming_layers,
)
from formers.nn.cache import KVCache, SinkWindowCache
from formers.nn.config import ModelConfig
from formers.nn.models import TransformerLM, build_model

DEFAULT_LAST = 16


# ------------------------------------------------------------------------------ lazy ratio
def kept_keys(n: int, sinks: int, recent: int, device: torch.device | None = None) -> torch.Tensor:
    """(n,) bool: True for the first ``sinks`` and the last ``recent`` of n keys (their union)."""
    j = torch.arange(n, device=device)
    return (j < sinks) | (j >= n - recent)


def _check_ratio_args(q: torch.Tensor, k: torch.Tensor, sinks: int, recent: int) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"lazy ratio: expected q (B, H, m, D) and k (B, Hkv, n, D), got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"lazy ratio: n_kv_heads = {k.shape[1]} must divide n_heads = {q.shape[1]}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"lazy ratio: {q.shape[2]} queries but only {k.shape[2]} keys")
    for name, v in (("sinks", sinks), ("recent", recent)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"lazy ratio: {name} must be an int >= 0, got {v!r}")


def lazy_ratio(q_last: torch.Tensor, k: torch.Tensor, sinks: int, recent: int,
               bias: torch.Tensor | None = None, lse: torch.Tensor | None = None,
               scale: float | None = None) -> torch.Tensor:
    """Per-head lazy ratio from log-sum-exps (the paper's cheap form; no n x n matrix).

    Args:
        q_last: (batch, n_heads, m, head_dim) the queries of the LAST m prompt positions
            (n - m .. n - 1), after RoPE.
        k: (batch, n_kv_heads, n, head_dim) all prompt keys (after RoPE); repeated for GQA.
        sinks, recent: w_sink and w_recent: the kept keys are the first ``sinks`` and the last
            ``recent`` of the n keys.
        bias: additive score bias broadcastable to (batch, n_heads, m, n) (ALiBi), or None.
        lse: (batch, n_heads, m) log-normalisers of these queries over their causal keys, as an
            attention kernel returns them; computed from the m x n scores when None.
        scale: softmax scale, default 1/sqrt(head_dim).
    Returns:
        (batch, n_heads): mean over the m queries of the causal attention mass on the kept keys.
    Time O(m n d), memory O(m n).
    """
    _check_ratio_args(q_last, k, sinks, recent)
    b, h, m, d = q_last.shape
    n = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    acc = torch.promote_types(q_last.dtype, torch.float32)
    k = k.repeat_interleave(h // k.shape[1], dim=1).to(acc)
    q_pos = torch.arange(n - m, n, device=k.device)[:, None]
    k_pos = torch.arange(n, device=k.device)[None, :]
    causal = k_pos <= q_pos                                   # (m, n)
    keep = kept_keys(n, sinks, recent, k.device)
    if lse is None:
        s = torch.matmul(q_last.to(acc), k.transpose(-1, -2)) * scale
        if bias is not None:
            s = s + bias.to(acc)
        lse = s.masked_fill(~causal, float("-inf")).logsumexp(-1)
        s_kept = s[..., keep]
    else:  # only the m x |S| scores of the kept keys are needed
        s_kept = torch.matmul(q_last.to(acc), k[:, :, keep].transpose(-1, -2)) * scale
        if bias is not None:
            s_kept = s_kept + bias.to(acc).expand(b, h, m, n)[..., keep]
    lse_kept = s_kept.masked_fill(~causal[:, keep], float("-inf")).logsumexp(-1)
    return (lse_kept - lse.to(acc)).exp().mean(-1)


def lazy_ratio_explicit(q: torch.Tensor, k: torch.Tensor, sinks: int, recent: int, last: int,
                        bias: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """The lazy ratio from the explicit (batch, n_heads, n, n) causal attention matrix (a plain
    reference for tests; O(n^2) memory).

    q: (batch, n_heads, n, head_dim) ALL prompt queries; k: (batch, n_kv_heads, n, head_dim);
    bias broadcastable to (batch, n_heads, n, n). Returns (batch, n_heads): the mass that the
    attention rows of the last ``last`` queries put on the first ``sinks`` and last ``recent``
    keys, averaged over those rows.
    """
    _check_ratio_args(q, k, sinks, recent)
    from formers.nn.attention.core import attend

    n = k.shape[2]
    if not 1 <= last <= n:
        raise ValueError(f"lazy ratio: last must be in [1, {n}], got {last!r}")
    _, a = attend(q, k, k, causal=True, bias=bias, scale=scale, backend="reference", return_weights=True)
    rows = a[:, :, n - last:, :]                              # (B, H, last, n)
    return rows[..., kept_keys(n, sinks, recent, k.device)].sum(-1).mean(-1)


# ------------------------------------------------------------------------- priority queue
class LazyLayerQueue:
    """LightTransfer's max-priority queue of capacity P over layers (§3, Fig. 2).

    ``push(layer, ratio)`` inserts a layer; when the queue then holds more than P layers, the one
    with the LARGEST ratio leaves it and is returned: that layer is lazy from now on. Online, so a
    layer can be cut during the prefill as soon as it is known to be lazy. After all L layers,
    ``kept`` holds the P layers with the smallest ratios and ``lazy`` the L - P others (ties: the
    later layer becomes lazy first).
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"LazyLayerQueue: capacity P must be an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self._heap: list[tuple[float, int]] = []              # (-ratio, -layer): a max-heap
        self.lazy: list[int] = []                             # in the order they were popped
        self._seen: set[int] = set()

    def push(self, layer: int, ratio: float) -> int | None:
        """Add ``layer`` with lazy ratio ``ratio``; return the layer made lazy by it, or None."""
        if layer in self._seen:
            raise ValueError(f"LazyLayerQueue: layer {layer} pushed twice")
        r = float(ratio)
        if math.isnan(r):
            raise ValueError(f"LazyLayerQueue: layer {layer} has a NaN lazy ratio")
        self._seen.add(layer)
        heapq.heappush(self._heap, (-r, -layer))
        if len(self._heap) > self.capacity:
            _, neg = heapq.heappop(self._heap)
            self.lazy.append(-neg)
            return -neg
        return None

    @property
    def kept(self) -> list[int]:
        return sorted(-neg for _, neg in self._heap)

    def __len__(self) -> int:
        return len(self._heap)


def select_lazy_layers(ratios: Sequence[float], capacity: int) -> list[int]:
    """The lazy layers (sorted) that the queue of capacity P picks from per-layer ``ratios``."""
    q = LazyLayerQueue(capacity)
    for i, r in enumerate(ratios):
        q.push(i, r)
    return sorted(q.lazy)


# ------------------------------------------------------------------------- prefill + cut
def _softmax_layers(model: nn.Module) -> list[SoftmaxAttention]:
    if not isinstance(model, TransformerLM) or model.cfg.arch != "decoder":
        raise ValueError(f"LightTransfer works on a decoder TransformerLM, got {type(model).__name__}"
                         f"{'' if not isinstance(model, TransformerLM) else ' arch ' + model.cfg.arch}")
    if model.cfg.value_residual != "none":
        raise ValueError(f"LightTransfer: value_residual={model.cfg.value_residual!r} is not supported "
                         f"(its layers share values through the cache)")
    mixers = [blk.mixer for blk in model.stack.blocks]
    for i, m in enumerate(mixers):
        if type(m) not in (SoftmaxAttention, StreamingAttention) or not isinstance(m.q, nn.Linear):
            raise ValueError(f"LightTransfer: layer {i} is {type(m).__name__}; only softmax attention "
                             f"layers have a lazy ratio and convert to streaming layers")
    return mixers


def cut_cache(layer_cache, sinks: int, window: int) -> SinkWindowCache:
    """A ``sink-window`` cache holding what ``layer_cache`` (a full cache) keeps of its keys: the
    first ``sinks`` and the newest ``window - 1`` (positions kept absolute)."""
    c = SinkWindowCache(sinks=sinks, window=window)
    if layer_cache.k is not None:
        c.update(layer_cache.k, layer_cache.v, layer_cache.pos)
    return c


@dataclass
class Prefill:
    """The outcome of :func:`prefill`.

    logits: (batch, n, vocab) of the prompt (full attention in every layer, as in the paper).
    model: the converted model (lazy layers streaming, same weights) to decode with.
    cache: the KV cache after the prefill, lazy layers cut to a sink-window cache.
    ratios: (n_layers,) lazy ratio per layer (mean over heads and the batch).
    head_ratios: (n_layers, batch, n_heads). lazy: sorted lazy layers; order: the order popped.
    """

    logits: torch.Tensor
    model: TransformerLM | None
    cache: KVCache
    ratios: torch.Tensor
    head_ratios: torch.Tensor
    lazy: list[int]
    order: list[int] = field(default_factory=list)


@torch.no_grad()
def prefill(model: TransformerLM, ids: torch.Tensor, capacity: int, sinks: int = DEFAULT_SINKS,
            window: int = DEFAULT_WINDOW, last: int = DEFAULT_LAST, convert_model: bool = True) -> Prefill:
    """LightTransfer-Test: prefill ``ids`` (batch, n) with full attention, computing each layer's
    lazy ratio as the layer finishes, pushing it into a :class:`LazyLayerQueue` of capacity P and
    cutting the cache of every popped (lazy) layer to sinks + window - 1 keys right away. Returns the
    prompt's logits, the converted model (:func:`convert`) and the cut cache: continue decoding
    with ``out.model(next_ids, cache=out.cache)``. ``convert_model=False`` leaves ``model`` None
    (when only the ratios or the lazy set are wanted).

    ``model`` must be a decoder whose layers are all ``softmax`` attention with the ``full``/auto
    cache. ``last`` (w_last, >= 1) is cut to n for a shorter prompt. Raises ValueError otherwise,
    or for bad sizes.
    """
    mixers = _softmax_layers(model)
    L = len(mixers)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 0 <= capacity <= L:
        raise ValueError(f"prefill: capacity P must be an int in [0, {L}], got {capacity!r}")
    check_sink_window("prefill", sinks, window)
    if ids.dim() != 2:
        raise ValueError(f"prefill: ids must be (batch, seq_len), got shape {tuple(ids.shape)}")
    n = ids.shape[1]
    if isinstance(last, bool) or not isinstance(last, int) or last < 1:
        raise ValueError(f"prefill: last (w_last) must be an int >= 1, got {last!r}")
    last = min(last, n)  # a prompt shorter than w_last: every query
    for i, m in enumerate(mixers):
        if type(m) is not SoftmaxAttention:
            raise ValueError(f"prefill: layer {i} is already streaming; prefill a full-attention model")
    cache = model.new_cache()
    if any(type(c).__name__ != "FullCache" for c in cache.layers):
        raise ValueError("prefill: every layer needs the full cache policy before conversion")

    queue = LazyLayerQueue(capacity)
    heads: list[torch.Tensor | None] = [None] * L
    stash: dict[int, tuple[torch.Tensor, object]] = {}

    def pre(i):
        def hook(mod, args):
            x, ctx = args[0], args[1]
            q = mod._heads(mod.q(x[:, -last:]), mod.n_heads)
            if ctx.position is not None:
                q = ctx.position.rotate(q, ctx.positions[-last:])
            stash[i] = (q, ctx)
        return hook

    def post(i):
        def hook(mod, args, out):
            q, ctx = stash.pop(i)
            lc = cache.layers[i]
            bias = ctx.position.bias(ctx.positions[-last:], lc.pos) if ctx.position is not None else None
            r = lazy_ratio(q, lc.k, sinks, window - 1, bias=bias)      # (B, H)
            heads[i] = r
            popped = queue.push(i, r.mean().item())
            if popped is not None:
                cache.layers[popped] = cut_cache(cache.layers[popped], sinks, window)
        return hook

    handles = []
    try:
        for i, m in enumerate(mixers):
            handles.append(m.register_forward_pre_hook(pre(i)))
            handles.append(m.register_forward_hook(post(i)))
        logits = model(ids, cache=cache)
    finally:
        for h in handles:
            h.remove()
    head_ratios = torch.stack([h.float() for h in heads])
    lazy = sorted(queue.lazy)
    return Prefill(logits, convert(model, lazy, sinks, window) if convert_model else None, cache,
                   head_ratios.mean(dim=(1, 2)), head_ratios, lazy, list(queue.lazy))


@torch.no_grad()
def lazy_ratios(model: TransformerLM, ids: torch.Tensor, sinks: int = DEFAULT_SINKS,
                window: int = DEFAULT_WINDOW, last: int = DEFAULT_LAST) -> torch.Tensor:
    """(n_layers,) lazy ratio of each layer on the prompt(s) ``ids`` (a prefill with P = L)."""
    return prefill(model, ids, len(model.stack.blocks), sinks, window, last, convert_model=False).ratios


@torch.no_grad()
def count_lazy(model: TransformerLM, prompts: Iterable[torch.Tensor], capacity: int,
               sinks: int = DEFAULT_SINKS, window: int = DEFAULT_WINDOW,
               last: int = DEFAULT_LAST) -> tuple[list[int], list[int]]:
    """LightTransfer-Train's offline choice: over ``prompts`` (each (1, n) or (batch, n) ids),
    count how often each layer is lazy under a queue of capacity P; return (the L - P layers with
    the highest counts (ties: higher summed ratio), the counts)."""
    L = len(model.stack.blocks)
    counts, total = [0] * L, [0.0] * L
    for p in prompts:
        out = lazy_ratios(model, p, sinks, window, last)
        for i in select_lazy_layers(out.tolist(), capacity):
            counts[i] += 1
        for i, r in enumerate(out.tolist()):
            total[i] += r
    order = sorted(range(L), key=lambda i: (counts[i], total[i]), reverse=True)
    return sorted(order[:L - capacity]), counts


# ------------------------------------------------------------------------------- convert
def convert_config(cfg: ModelConfig, lazy: Iterable[int], sinks: int = DEFAULT_SINKS,
                   window: int = DEFAULT_WINDOW) -> ModelConfig:
    """``cfg`` with layers ``lazy`` turned into streaming attention + ``sink-window`` cache."""
    return with_streaming_layers(cfg, sorted(lazy), sinks, window)


def convert(model: TransformerLM, lazy: Iterable[int], sinks: int = DEFAULT_SINKS,
            window: int = DEFAULT_WINDOW) -> TransformerLM:
    """A new model whose layers ``lazy`` are streaming (sinks, window) with a sink-window cache;
    every weight is copied unchanged (same names and shapes), same device, dtype and train/eval
    mode. The input model is not modified."""
    _softmax_layers(model)
    cfg = convert_config(model.cfg, lazy, sinks, window)
    p = next(model.parameters())
    new = build_model(cfg).to(device=p.device, dtype=p.dtype)
    new.load_state_dict(model.state_dict())
    return new.train(model.training)


def kv_cache_bytes(cfg: ModelConfig, n_tokens: int, lazy: Iterable[int] = (), sinks: int = DEFAULT_SINKS,
                   window: int = DEFAULT_WINDOW, batch: int = 1, element_size: int = 4) -> int:
    """Bytes of keys and values a decoder of ``cfg`` caches after ``n_tokens`` tokens when layers
    ``lazy`` keep a sink-window cache: full layers n tokens, lazy layers min(n, sinks + window - 1);
    each token costs 2 (K and V) * batch * n_kv_heads * head_dim * element_size bytes."""
    lazy = set(lazy)
    per_token = 2 * batch * cfg.kv_heads * cfg.head_dim * element_size
    kept = min(n_tokens, sinks + window - 1)
    return per_token * ((cfg.n_layers - len(lazy)) * n_tokens + len(lazy) * kept)


def kv_bytes_saved(cfg: ModelConfig, n_tokens: int, n_lazy: int, sinks: int = DEFAULT_SINKS,
                   window: int = DEFAULT_WINDOW, batch: int = 1, element_size: int = 4) -> int:
    """The paper's saving (L - P) * (n - w_sink - w_recent) * 2 * n_kv * d_h * bytes (times the
    batch), with w_recent = window - 1 and no saving for a prompt shorter than the cut cache."""
    return (n_lazy * max(0, n_tokens - (sinks + window - 1))
            * 2 * batch * cfg.kv_heads * cfg.head_dim * element_size)


__all__ = ["LazyLayerQueue", "Prefill", "convert", "convert_config", "count_lazy", "cut_cache",
           "kept_keys", "kv_bytes_saved", "kv_cache_bytes", "lazy_ratio", "lazy_ratio_explicit",
           "lazy_ratios", "prefill", "select_lazy_layers"]
