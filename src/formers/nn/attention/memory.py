"""MemoryFormer's attention side (Ding et al., "MemoryFormer: Minimize Transformer Computation by
Removing Fully-Connected Layers", NeurIPS 2024, arXiv 2411.12992, §3, MemoryFormer block).

    X_bar = Norm(X);  Q, K, V = ML_Q(X_bar), ML_K(X_bar), ML_V(X_bar);  Z = X + MHA(Q, K, V)

The three projections are hashing memory layers (:class:`formers.nn.ffn.memory.MemoryLayer`)
that share one hashing of X_bar (the hash has no parameters, so sharing it only saves work: the
codes and weights are the same for all three; only the tables differ). The multi-head softmax
attention itself is unchanged and runs through the one attention core (SDPA by default). There is
no output projection W_O: the concatenated heads (n_heads * head_dim = d_model wide) are added to
the residual stream directly. Norm(X) is the backbone's pre-mixer norm (``prenorm=True``; with
post-norm blocks the hash sees un-normalised inputs, which the paper warns against).

Deviations: RoPE / ALiBi / learned positions, GQA, KV caching and value residual are the
backbone's (inherited from :class:`~formers.nn.attention.softmax.SoftmaxAttention`); the paper's
Pythia base uses partial (25%) rotary. The reference's ``zero_pad_residual`` (attention output
narrower than d) never arises here because n_heads * head_dim = d_model. Cross-attention is not
offered (encoder-decoder models keep the backbone's dense cross-attention).
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.ffn.memory import PAPER, MemoryLayer, SharedHash
from formers.nn.flops import attention_flops
from formers.registry import Capabilities, register


@register(
    "attention",
    "memory-attention",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, backend="sdpa (flash / mem-efficient / math); reference"),
    summary="softmax attention with hashing memory-layer Q/K/V (one shared hash) and no W_O",
)
class MemoryAttention(SoftmaxAttention):
    """MemoryFormer attention: Q, K, V = ML_Q/K/V(x) with one shared hash, softmax attention over
    heads, no output projection (arXiv 2411.12992 §3).

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, n_heads * head_dim = d_model).
    ``q``: MemoryLayer(d_model -> n_heads*head_dim); ``k``, ``v``: MemoryLayer(d_model ->
    n_kv_heads*head_dim), each with K = d_model / tau tables of 2^tau rows; ``o`` is the identity.

    Options: ``tau`` (8; must divide d_model), ``score`` (``paper`` | ``reference``, see
    :mod:`formers.nn.ffn.memory`), ``temperature`` (1.0), ``backend``.
    """

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, tau: int = 8, score: str = "paper",
                 temperature: float = 1.0) -> None:
        if cross:
            raise ValueError("memory-attention: cross-attention is not offered (use 'softmax')")
        super().__init__(cfg, cross=False, backend=backend, own_values=own_values)
        d, hd = cfg.d_model, cfg.head_dim

        def ml(out: int) -> MemoryLayer:
            return MemoryLayer(d, out, tau, cfg.bias, score, temperature)

        self.q = ml(self.n_heads * hd)
        self.k = ml(self.n_kv_heads * hd)
        self.v = ml(self.n_kv_heads * hd) if own_values else None
        self.o = nn.Identity()
        self._shared = SharedHash()
        for layer in (self.q, self.k, self.v):
            if layer is not None:
                layer.shared = self._shared

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Q, K, V memory layers sharing one hash (paid once, by Q), no W_O, and dense softmax
        attention as :class:`SoftmaxAttention` counts it."""
        total = self.q.forward_flops(seq_len, causal, square)
        for layer in (self.k, self.v):
            if layer is not None:
                total += layer.forward_flops(seq_len, causal, square, hashing=False)
        return total + attention_flops(self.score_pairs(seq_len, causal, square), self.n_heads,
                                       self.head_dim)

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        self._shared.pin(x, self.q)  # one hash of Norm(X) for Q, K and V
        try:
            return super().forward(x, ctx, cache)
        finally:
            self._shared.clear()


__all__ = ["MemoryAttention"]
