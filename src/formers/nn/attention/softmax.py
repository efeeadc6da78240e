"""Multi-head softmax attention (MHA / GQA / MQA), self or cross, through the one attention core."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.attention.core import attend
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops, dense_pairs
from formers.registry import Capabilities, Paper, register


def self_attention_keys(k: torch.Tensor, v: torch.Tensor | None, pos: torch.Tensor, ctx: Context,
                        cache=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The keys, values, key positions and score bias a self-attention layer attends over.

    Applies the backbone's value-residual rule when one is set (it mixes V with the first layer's
    values and updates the cache itself), otherwise appends to the layer's cache; then asks the
    position scheme for its score bias (ALiBi) between the queries at ``pos`` and the keys.
    k, v: (batch, kv_heads, new_len, head_dim); v is None for layers without W_V (SVFormer).
    A static cache (:class:`formers.nn.cache.StaticCache`) returns its whole buffers; its
    position mask (0 / -inf) is then added to the bias, so mixers using this function need a
    score bias (they declare ``static_cache = True``).
    Returns k, v: (batch, kv_heads, k_len, head_dim), k_pos: (k_len,), bias or None.
    Raises ValueError for a layer without values and no value-residual rule.
    """
    k_pos = pos
    if ctx.value_residual is not None:
        k, v, k_pos = ctx.value_residual(k, v, pos, ctx, cache)
    elif v is None:
        raise ValueError("a self-attention layer without W_V (own_values=False) needs a "
                         "value-residual rule in ctx (value_residual='shared')")
    elif cache is not None:
        k, v, k_pos = cache.update(k, v, pos)
    bias = ctx.position.bias(pos, k_pos) if ctx.position is not None else None
    if cache is not None and getattr(cache, "static", False):
        # the static policy returns fixed-size buffers: mask the keys after each query (and the
        # slots not yet written) by absolute position, as an additive 0 / -inf bias
        mask = cache.key_bias(pos, k_pos)
        bias = mask if bias is None else bias + mask
    return k, v, k_pos, bias


# SoftmaxAttention.fuse_qkv = None fuses W_Q, W_K, W_V on CUDA for calls of this many tokens or more
FUSE_QKV_MIN_TOKENS = 4096


@register(
    "attention",
    "softmax",
    paper=Paper("Attention Is All You Need", "1706.03762", "§3.2 eq. 1; GQA: arXiv 2305.13245"),
    caps=Capabilities(kv_cache=True, cross=True, backend="sdpa (flash / mem-efficient / math); reference"),
    summary="multi-head scaled dot-product attention (MHA / GQA / MQA)",
)
class SoftmaxAttention(nn.Module):
    """softmax(Q K^T / sqrt(head_dim) + bias) V over heads, with n_kv_heads key/value heads.

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model). Queries have n_heads heads,
    keys/values ``cfg.kv_heads`` heads shared by n_heads / n_kv_heads queries each (GQA; MQA at 1).

    Args:
        cfg: the model config (d_model, n_heads, n_kv_heads, bias, dropout).
        cross: attend to ``ctx.memory`` (encoder output) instead of ``x``; never causal, no RoPE.
        backend: ``auto`` | ``sdpa`` | ``reference`` (see :func:`attend`).
        own_values: False for an SVFormer layer >= 2 (arXiv 2410.17897): no value projection, the
            values come from the first layer (``ctx.value_residual``); set by the backbone.

    Value residual (ResFormer / SVFormer): when ``ctx.value_residual`` is set, self-attention hands
    its keys and values (after the head split, before the cache) to that rule, which records or
    mixes in the first layer's values and updates the cache (see :mod:`formers.nn.value_residual`).
    """

    supports_value_residual = True
    static_cache = True  # keys through self_attention_keys, masks taken as a score bias
    fuse_qkv: bool | None = None  # one GEMM for W_Q, W_K, W_V (None: on CUDA, long calls); see _self_projections

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True) -> None:
        super().__init__()
        if cross and not own_values:
            raise ValueError("SoftmaxAttention: cross-attention always has its own values (own_values=True)")
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.cross, self.backend, self.dropout = cross, backend, cfg.dropout
        d, hd = cfg.d_model, cfg.head_dim
        self.q = nn.Linear(d, self.n_heads * hd, bias=cfg.bias)
        self.k = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.bias)
        self.v = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.bias) if own_values else None
        self.o = nn.Linear(self.n_heads * hd, d, bias=cfg.bias)

    def attention_pattern(self, ctx: Context, k_len: int):
        """The self-attention sparsity pattern over absolute positions (see :func:`attend`), or
        None for dense attention. Pattern mixers (sparse, streaming) override this hook only."""
        return None

    def _heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, n, self.head_dim).transpose(1, 2)

    def _self_projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q, k, v projections of ``x`` (batch, seq_len, d_model) before the head split; v is None
        without W_V. With ``fuse_qkv`` (default None: on CUDA for calls of at least
        ``FUSE_QKV_MIN_TOKENS`` tokens, i.e. training and long prefills, not decoding steps, where
        the per-call weight concatenation would add memory traffic to memory-bound GEMVs) and
        W_Q, W_K, W_V plain ``nn.Linear`` layers they run as one GEMM over their concatenated
        weights (one (d, (h + 2 h_kv) hd) matmul instead of three narrower ones, which the GPU
        runs at a higher fraction of its peak; the parameters and the state dict stay three
        separate layers). The result equals the three calls up to float rounding, so CPU runs
        (and their exact tests) keep the separate calls unless ``fuse_qkv=True``. Subclasses whose
        projections are other modules (low-rank, memory layers) take the three separate calls."""
        q, k, v = self.q, self.k, self.v
        fuse = self.fuse_qkv
        if fuse is None:
            fuse = x.is_cuda and x.numel() >= FUSE_QKV_MIN_TOKENS * x.shape[-1]
        if fuse and v is not None and type(q) is type(k) is type(v) is nn.Linear and \
                (q.bias is None) == (k.bias is None) == (v.bias is None):
            w = torch.cat((q.weight, k.weight, v.weight))
            b = None if q.bias is None else torch.cat((q.bias, k.bias, v.bias))
            nq, nk = q.out_features, k.out_features
            qx, kx, vx = F.linear(x, w, b).split((nq, nk, nk), dim=-1)
            return qx, kx, vx
        return q(x), k(x), (v(x) if v is not None else None)

    def score_pairs(self, seq_len: int, causal: bool, square: bool) -> float:
        """(query, key) pairs per head whose scores this mixer computes (see
        :mod:`formers.nn.flops`): dense n x n (causal and not ``square``: n (n + 1) / 2); a
        cross-attention layer attends to ``seq_len`` memory positions, never causally. Pattern
        mixers override this hook only."""
        return dense_pairs(seq_len, seq_len, causal and not self.cross, square)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Forward FLOPs of one sequence (:mod:`formers.nn.flops`): the q, k, v, o projections on
        every token plus 2 x 2 x pairs x n_heads x head_dim for Q K^T and P V."""
        pairs = self.score_pairs(seq_len, causal, square)
        return children_flops(self, seq_len, causal, square) + attention_flops(
            pairs, self.n_heads, self.head_dim)

    def self_qkv(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uncached self-attention q, k, v, each (batch, n_heads, seq_len, head_dim): RoPE applied
        to q and k, GQA key/value heads repeated to the query heads (for mixers that transform the
        keys along the sequence: Linformer, Nystromformer, Sinkhorn)."""
        if self.v is None:
            raise ValueError("self_qkv needs a layer with its own values (W_V)")
        qx, kx, vx = self._self_projections(x)
        q, k, v = self._heads(qx, self.n_heads), self._heads(kx, self.n_kv_heads), self._heads(vx, self.n_kv_heads)
        if ctx.position is not None:
            q, k = ctx.position.rotate(q, ctx.positions), ctx.position.rotate(k, ctx.positions)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        bias, key_mask, causal = None, ctx.key_mask, ctx.causal
        pattern = pos = k_pos = None
        if self.cross:
            q = self._heads(self.q(x), self.n_heads)
            if ctx.memory is None:
                raise ValueError("cross-attention needs ctx.memory (the encoder output)")
            if cache is not None and cache.cross is not None:
                k, v = cache.cross
            else:
                k = self._heads(self.k(ctx.memory), self.n_kv_heads)
                v = self._heads(self.v(ctx.memory), self.n_kv_heads)
                if cache is not None:
                    cache.cross = (k, v)
            key_mask, causal = ctx.memory_mask, False
        else:
            qx, kx, vx = self._self_projections(x)
            q, k = self._heads(qx, self.n_heads), self._heads(kx, self.n_kv_heads)
            v = self._heads(vx, self.n_kv_heads) if vx is not None else None
            pos = ctx.positions
            if ctx.position is not None:
                q, k = ctx.position.rotate(q, pos), ctx.position.rotate(k, pos)
            k, v, k_pos, bias = self_attention_keys(k, v, pos, ctx, cache)
            pattern = self.attention_pattern(ctx, k.shape[-2])
        args = dict(causal=causal, bias=bias, key_mask=key_mask, pattern=pattern, q_pos=pos, k_pos=k_pos)
        out, _ = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                        backend=self.backend, **args)
        if ctx.capture is not None:
            # the explainer's view comes from a second, reference-path call, so that capturing
            # leaves the output (computed above on the usual path) bit-for-bit unchanged
            stages: dict[str, torch.Tensor] = {}
            _, w = attend(q, k, v, backend="reference", return_weights=True, stages=stages, **args)
            tag = "cross" if self.cross else "attn"
            ctx.record(f"{tag}.q", q)
            ctx.record(f"{tag}.k", k)
            ctx.record(f"{tag}.v", v)
            ctx.record(f"{tag}.weights", w)
            for name, value in stages.items():
                ctx.record(f"{tag}.{name}", value)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
