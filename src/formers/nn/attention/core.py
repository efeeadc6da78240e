"""The one attention core: every softmax-attention variant computes through :func:`attend`.

``attend`` uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash /
memory-efficient / math kernels) whenever the call does not need the attention matrix, and an
explicit reference path otherwise (``backend="reference"`` or ``return_weights=True``). Both
paths take the same masks and biases and agree to float rounding (tested in the conformance
suite). ``CALLS`` counts which path ran, so tests can assert the fast path is taken.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "reference")
CALLS: Counter[str] = Counter()


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, k_len) bool, True where query i may see key j.

    Queries are aligned to the end of the keys (query i sits at key position k_len - q_len + i),
    which is what cached decoding needs.
    """
    i = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    bias: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    pattern: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention softmax(q k^T * scale + bias + mask) v.

    Args:
        q: (batch, n_heads, q_len, head_dim).
        k, v: (batch, n_kv_heads, k_len, head_dim); n_kv_heads must divide n_heads (GQA/MQA).
        causal: mask keys after each query (bottom-right aligned when q_len < k_len).
        bias: additive float bias broadcastable to (batch, n_heads, q_len, k_len) (e.g. ALiBi).
        key_mask: (batch, k_len) bool, True = keep (padding mask).
        pattern: a sparsity pattern ``pattern(q_pos[:, None], k_pos[None, :]) -> bool`` over
            absolute positions, True = may attend (sliding window, global tokens, blocks ...);
            applied on top of ``causal`` and ``key_mask``. Positions, not indices, so a cache that
            evicts keys keeps the pattern right.
        q_pos, k_pos: (q_len,), (k_len,) int64 absolute positions; needed with ``pattern``.
        scale: defaults to 1/sqrt(head_dim).
        backend: ``auto`` (SDPA unless weights are requested), ``sdpa`` or ``reference``.
        return_weights: also return the (batch, n_heads, q_len, k_len) probabilities (reference).
    Returns:
        (out, weights): out is (batch, n_heads, q_len, head_dim); weights is None unless asked.
    Raises:
        ValueError: unknown backend, mismatched shapes, ``sdpa`` with ``return_weights``, or a
            ``pattern`` without positions of the right lengths.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attend: backend {backend!r} is not one of {list(BACKENDS)}")
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attend: expected q (B,H,Tq,D) and k=v (B,Hkv,Tk,D), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if pattern is not None and (q_pos is None or k_pos is None or q_pos.shape != (q.shape[-2],)
                                or k_pos.shape != (k.shape[-2],)):
        raise ValueError(f"attend: a pattern needs q_pos ({q.shape[-2]},) and k_pos ({k.shape[-2]},), "
                         f"got {None if q_pos is None else tuple(q_pos.shape)} and "
                         f"{None if k_pos is None else tuple(k_pos.shape)}")
    h, hkv = q.shape[1], k.shape[1]
    if h % hkv:
        raise ValueError(f"attend: n_kv_heads = {hkv} must divide n_heads = {h}")
    if backend == "sdpa" and return_weights:
        raise ValueError("attend: backend='sdpa' cannot return attention weights; use 'reference'")
    if hkv != h:
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    tq, tk = q.shape[-2], k.shape[-2]

    # One boolean "may attend" mask (or None), shared by both paths.
    allowed = None
    if causal and tq > 1:
        allowed = causal_mask(tq, tk, q.device)
    if pattern is not None:
        pm = pattern(q_pos[:, None], k_pos[None, :]).to(torch.bool)
        allowed = pm if allowed is None else (allowed & pm)
    if key_mask is not None:
        km = key_mask[:, None, None, :].to(torch.bool)
        allowed = km if allowed is None else (allowed & km)

    use_ref = backend == "reference" or return_weights
    if not use_ref:
        if not torch.compiler.is_compiling():
            CALLS["sdpa"] += 1
        if bias is None and causal and pattern is None and key_mask is None and tq == tk and tq > 1:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale
            )
        else:
            mask = allowed
            if bias is not None:
                mask = bias.to(q.dtype)
                if allowed is not None:
                    mask = mask.masked_fill(~allowed, float("-inf"))
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale
            )
        return out, None

    if not torch.compiler.is_compiling():
        CALLS["reference"] += 1
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 at least, float64 kept
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias.to(acc)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if allowed is not None:  # a query that may see no key gets zeros (as SDPA does), not NaN
        weights = weights.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    p = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(p, v.to(acc)).to(q.dtype)
    return out, (weights if return_weights else None)
