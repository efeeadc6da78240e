"""Streaming attention: softmax attention restricted to attention-sink keys plus a recent window
(Xiao et al., "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453, §3.2),
the attention of LightTransfer's *lazy* layers (Zhang et al., "LightTransfer: Your Long-Context
LLM is Secretly a Hybrid Model with Effortless Adaptation", arXiv 2410.13846, §3).

A query at absolute position q may attend to a key at absolute position k iff

    k <= q  and  (k < sinks  or  q - k < window)

i.e. the first ``sinks`` tokens of the sequence plus the last ``window`` tokens up to and including
the query itself. The pattern goes through the one attention core (:func:`attend` with
``pattern=``), so the SDPA kernel (with a boolean mask) is the default path and the reference path
is the explicit softmax; both are compared in the conformance suite.

Cache: the ``sink-window`` policy (:class:`formers.nn.cache.SinkWindowCache`) with the same
``sinks`` and ``window`` keeps exactly what a later query can see: the first ``sinks`` keys and the
newest ``window - 1`` (the next query is itself the window's last key), so a layer holds
``min(n, sinks + window - 1)`` keys after n tokens instead of n. ``cache_reach`` tells the model
so; ``full`` also works (the pattern masks the rest).

Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model). Time O(n * (sinks + window) *
d) in principle; the dense-mask SDPA path computes all n x n scores (O(n^2 d) time, O(n^2) mask
memory), as the reference's flex-attention block mask would only skip whole blocks.

Conventions and deviations (also in the options below):
- ``window`` counts the query itself. LightTransfer cuts a lazy layer's cache to "the first
  w_sink and the last w_recent keys", and the next token attends to those plus itself, so
  ``sinks = w_sink`` and ``window = w_recent + 1``; the cache then holds ``sinks + window - 1 =
  w_sink + w_recent`` keys, as the paper's memory count says. Defaults: ``sinks = 4``,
  ``window = 1021`` (the paper's w_sink = 4, w_recent = 1020).
  The LightTrans training code (sail-sg/LightTrans ``modeling_lazy_qwq_train.py``) instead masks
  ``(causal and q - k <= 1024) or (q >= 128 and k <= 128)``: 129 sinks and a 1025-key window;
  pass ``sinks=129, window=1025`` for that.
- Positions stay absolute: RoPE rotates keys at their true positions before caching, ALiBi uses
  the true distance. StreamingLLM re-numbers positions inside its rolling cache (positions
  0..cache_len-1) so RoPE never sees distances beyond the cache; here cached decoding equals the
  masked full forward exactly, at the cost of RoPE distances up to the sequence length.
- Causal only: the pattern is defined for decoders (an encoder layer refuses it at build time);
  no cross-attention.
"""

from __future__ import annotations

from typing import Any

import torch

from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.context import Context
from formers.nn.flops import pattern_pairs
from formers.registry import Capabilities, Paper, register

STREAMING_LLM = Paper("Efficient Streaming Language Models with Attention Sinks", "2309.17453",
                      "§3.2 rolling KV cache with attention sinks; LightTransfer (arXiv 2410.13846) §3 "
                      "streaming attention in lazy layers")
LIGHTTRANSFER = Paper("LightTransfer: Your Long-Context LLM is Secretly a Hybrid Model with Effortless "
                      "Adaptation", "2410.13846", "§3 LightTransfer-Train: fixed lazy layers with streaming "
                      "attention")
DEFAULT_SINKS, DEFAULT_WINDOW = 4, 1021  # the paper's w_sink = 4, w_recent = window - 1 = 1020


def check_sink_window(owner: str, sinks: Any, window: Any) -> tuple[int, int]:
    """Validate ``sinks`` (int >= 0) and ``window`` (int >= 1); ValueError naming the bad value."""
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"{owner}: sinks must be an int >= 0, got {sinks!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"{owner}: window must be an int >= 1, got {window!r}")
    return sinks, window


def sink_window_pattern(sinks: int, window: int):
    """The streaming pattern over absolute positions: ``k <= q and (k < sinks or q - k < window)``."""

    def pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (k <= q) & ((k < sinks) | (q - k < window))

    return pattern


@register(
    "attention",
    "streaming",
    paper=STREAMING_LLM,
    caps=Capabilities(causal=True, bidirectional=False, kv_cache=True,
                      backend="sdpa (boolean sink+window mask); reference"),
    summary="softmax attention over the first `sinks` keys plus a `window` of recent keys "
            "(StreamingLLM; LightTransfer's lazy layers)",
)
class StreamingAttention(SoftmaxAttention):
    """Softmax attention over attention sinks plus a sliding window (StreamingLLM §3.2;
    LightTransfer §3). Query at position q sees keys k with ``k <= q and (k < sinks or
    q - k < window)``.

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); same projections (and so
    the same weights) as :class:`SoftmaxAttention`, which makes converting a trained full layer
    into a streaming layer a change of config only.

    Options: ``sinks`` (int >= 0, default 4), ``window`` (int >= 1, default 1021 = the paper's
    w_recent + 1; counts the query itself), ``backend``. With ``sinks + window >= seq_len`` it is exactly causal softmax
    attention. Pair it with the ``sink-window`` cache policy of the same ``sinks``/``window``
    (``cache_reach``) to hold ``min(n, sinks + window - 1)`` keys per layer.

    Raises ValueError for ``cross=True`` (no cross-attention), bad ``sinks``/``window``, and (at
    build time, by the block) for encoder layers.
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, sinks: int = DEFAULT_SINKS,
                 window: int = DEFAULT_WINDOW) -> None:
        if cross:
            raise ValueError("streaming: cross-attention is not offered (the sink + window pattern is "
                             "over the decoder's own positions); use 'softmax'")
        super().__init__(cfg, cross=False, backend=backend, own_values=own_values)
        self.sinks, self.window = check_sink_window("streaming", sinks, window)
        self.pattern = sink_window_pattern(self.sinks, self.window)

    @classmethod
    def cache_reach(cls, options: dict[str, Any]) -> tuple[int, int]:
        """(sinks, window) this mixer may attend to, from its ``attention_options``."""
        return check_sink_window("streaming", options.get("sinks", DEFAULT_SINKS),
                                 options.get("window", DEFAULT_WINDOW))

    def extra_repr(self) -> str:
        return f"sinks={self.sinks}, window={self.window}"

    def score_pairs(self, seq_len: int, causal: bool, square: bool) -> float:
        """Sink + window pairs (always causal): about n (sinks + window) for n >> window."""
        return pattern_pairs(self.pattern, seq_len, True)

    def attention_pattern(self, ctx: Context, k_len: int):
        if not ctx.causal:
            raise ValueError("streaming attention is causal only (decoder layers)")
        return self.pattern


def streaming_spec(base: LayerSpec, sinks: int = DEFAULT_SINKS, window: int = DEFAULT_WINDOW) -> LayerSpec:
    """``base`` with its token mixer turned into ``streaming`` (sinks, window) and its cache into the
    matching ``sink-window`` policy; feed-forward and other options unchanged. ``base`` must use
    ``softmax`` or ``streaming`` attention (the two share their weights)."""
    if base.attention not in ("softmax", "streaming"):
        raise ValueError(f"only 'softmax' (or 'streaming') layers convert to streaming layers, "
                         f"got attention {base.attention!r}")
    check_sink_window("streaming_spec", sinks, window)
    extra = {k: v for k, v in base.attention_options.items() if k not in ("sinks", "window")}
    return base.replace(attention="streaming", attention_options={**extra, "sinks": sinks, "window": window},
                        cache="sink-window", cache_options={"sinks": sinks, "window": window})


def with_streaming_layers(cfg: ModelConfig, layers, sinks: int = DEFAULT_SINKS,
                          window: int = DEFAULT_WINDOW) -> ModelConfig:
    """A copy of ``cfg`` whose layers ``layers`` (indices) are streaming attention with a
    ``sink-window`` cache; every other layer keeps its spec. The parameter names and shapes do not
    change, so a state dict of ``cfg``'s model loads into the new model as is.

    This is the config of LightTransfer-Train (a fixed lazy set trained with streaming masks) and
    of the model LightTransfer-Test converts to. Raises ValueError for an index outside
    [0, n_layers), a repeated index, or a layer that is not softmax attention.
    """
    idx = list(layers)
    n = cfg.n_layers
    bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(f"streaming layer indices must be ints in [0, {n}), got {bad}")
    if len(set(idx)) != len(idx):
        raise ValueError(f"streaming layer indices repeat: {idx}")
    lazy = set(idx)
    specs = [streaming_spec(cfg.layer_spec(i), sinks, window) if i in lazy else cfg.layer_spec(i)
             for i in range(n)]
    return ModelConfig.from_dict(cfg.replace(layers=specs).to_dict())


# ------------------------------------------------------------------------------------ presets
from formers.nn.presets import preset  # noqa: E402


def _window_for(c: ModelConfig) -> int:
    """The paper's window (1021 keys) or max_seq_len / 4 if that is smaller."""
    return max(1, min(DEFAULT_WINDOW, c.max_seq_len // 4))


@preset("streaming", STREAMING_LLM,
        "every layer streaming attention (4 sinks, window min(1021, max_seq_len/4)) with a sink-window cache")
def streaming(c: ModelConfig) -> ModelConfig:
    """The paper's 4 sinks + 1020 cached keys, with the window shrunk to max_seq_len / 4 at small
    context lengths (as ``lighttransfer``) so that the layers really drop keys there."""
    return with_streaming_layers(c, range(c.n_layers), DEFAULT_SINKS, _window_for(c))


@preset("lighttransfer", LIGHTTRANSFER,
        "LightTransfer-Train layout: every second layer streaming (4 sinks, window min(1021, "
        "max_seq_len/4)), the others full")
def lighttransfer(c: ModelConfig) -> ModelConfig:
    """Half the layers (the odd ones) lazy. The paper picks the lazy set per model by counting lazy
    ratios (``formers.nn.lighttransfer.identify``); this preset fixes an alternating set so that the
    variant trains from scratch in ``formers compare``. The window shrinks to max_seq_len / 4 below
    the paper's 1021 so that the streaming layers drop keys at small context lengths."""
    return with_streaming_layers(c, range(1, c.n_layers, 2), DEFAULT_SINKS, _window_for(c))


__all__ = ["StreamingAttention", "check_sink_window", "sink_window_pattern", "streaming_spec",
           "with_streaming_layers"]
