"""The mechanism of analytic FLOP counts: how a part declares its count and how counts are summed.

A module declares the forward FLOPs of one sequence through itself and all its submodules with

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float

* ``seq_len``: tokens of the sequence (batch 1);
* ``causal``: the layer runs its causal form (decoder stacks);
* ``square``: dense attention counts the full n x n score square even where the causal mask
  hides half of it (the ``6 N + 12 L d T`` convention); False counts only the pairs a causal
  kernel computes. Patterned and kernelised mixers count what they compute whatever ``square``.

Counts are matmul FLOPs, 2 per multiply-add; see :mod:`formers.bench.flops` for the full
conventions and the public API (``forward_flops(model, seq_len)``). This module holds what the
parts need (it lives in ``nn/`` because parts may import nothing above ``nn/``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def module_flops(module: nn.Module, seq_len: int, causal: bool, square: bool) -> float:
    """Forward FLOPs of ``module`` on one sequence: its own declaration when it has one; else
    2 x in x out x seq_len for an ``nn.Linear``; else the sum over its children (modules without
    matmuls, such as norms, embeddings and activations, count 0)."""
    declare = getattr(module, "forward_flops", None)
    if callable(declare):
        return float(declare(seq_len, causal, square))
    if isinstance(module, nn.Linear):
        return 2.0 * module.in_features * module.out_features * seq_len
    return children_flops(module, seq_len, causal, square)


def children_flops(module: nn.Module, seq_len: int, causal: bool, square: bool,
                   skip: tuple[str, ...] = ()) -> float:
    """Sum of :func:`module_flops` over the direct children of ``module`` (not ``module`` itself),
    leaving out the children named in ``skip``. A part whose projections all run once per token
    declares ``children_flops(...)`` plus its own extra terms."""
    causal_here = getattr(module, "causal", None)
    if isinstance(causal_here, bool) and causal:  # a stack says whether its layers run causally
        causal = causal_here
    return float(sum(module_flops(m, seq_len, causal, square)
                     for name, m in module.named_children() if name not in skip))


def dense_pairs(n_q: int, n_k: int, causal: bool, square: bool = True) -> float:
    """(query, key) score pairs of dense attention: n_q n_k, or with ``causal`` and not
    ``square`` only the pairs with key <= query (queries aligned to the end of the keys):
    sum_i min(n_k, n_k - n_q + i + 1), = n (n + 1) / 2 for n_q = n_k = n."""
    if square or not causal:
        return float(n_q * n_k)
    hi = n_k  # the last query sees every key; query i sees max(0, n_k - n_q + 1 + i) keys
    lo = max(1, n_k - n_q + 1)
    return float((lo + hi) * (hi - lo + 1) // 2) if hi >= lo else 0.0


def pattern_pairs(pattern: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n: int,
                  causal: bool, rows: int = 1024) -> float:
    """(query, key) pairs over positions 0 .. n - 1 that ``pattern(q_pos[:, None], k_pos[None, :])``
    allows (and key <= query when ``causal``): the scores a block-sparse kernel needs. Evaluated
    ``rows`` queries at a time on the CPU (memory rows x n)."""
    k = torch.arange(n)
    total = 0
    for start in range(0, n, rows):
        q = torch.arange(start, min(n, start + rows))
        ok = pattern(q[:, None], k[None, :]).expand(len(q), n)
        if causal:
            ok = ok & (k[None, :] <= q[:, None])
        total += int(ok.sum())
    return float(total)


def attention_flops(pairs: float, heads: int, qk_dim: int, v_dim: int | None = None) -> float:
    """Scores and weighted sum over ``pairs`` (query, key) pairs per head: 2 pairs heads (qk_dim +
    v_dim) (Q K^T and P V, 2 FLOPs per multiply-add)."""
    return 2.0 * pairs * heads * (qk_dim + (qk_dim if v_dim is None else v_dim))


__all__ = ["attention_flops", "children_flops", "dense_pairs", "module_flops", "pattern_pairs"]
