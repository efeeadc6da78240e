"""The ``none`` token mixer: a layer without token mixing, so that a block is FFN-only.

Brainformers (Zhou et al., "Brainformers: Trading Simplicity for Efficiency", arXiv 2306.00008,
§3-4) stack attention, dense-FFN and MoE sub-layers in a non-uniform order, e.g. several FFN
sub-layers in a row. Our :class:`formers.nn.block.Block` always has a mixer sub-layer followed by
an FFN sub-layer, so an FFN-only sub-layer is a block whose mixer is ``none``.
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.registry import Capabilities, Paper, register


@register(
    "attention",
    "none",
    paper=Paper("Brainformers: Trading Simplicity for Efficiency", "2306.00008",
                "§3 (FFN-only sub-layers of a heterogeneous block)"),
    # kv_cache=True: it keeps nothing, so cached decoding is trivially exact.
    caps=Capabilities(causal=True, bidirectional=True, kv_cache=True, mixes_tokens=False,
                      backend="none (no token mixing)"),
    summary="no token mixing: the mixer sub-layer adds zero (FFN-only layers)",
)
class NoMixer(nn.Module):
    """Adds nothing: x (batch, seq_len, d_model) -> zeros of the same shape.

    In a pre-norm block the mixer sub-layer becomes x + 0 = x, so the block is exactly norm ->
    FFN -> residual. Deviations, named:

    * post-norm blocks still apply their first norm: norm1(x + 0) = norm1(x); the sub-layer is not
      an exact identity there (our Block always has a mixer then an FFN sub-layer).
    * the zeros are ``h * 0`` (attached to the graph), so the block's first norm receives a zero
      gradient instead of none: DDP without ``find_unused_parameters`` and the conformance
      gradient check both require every parameter to take part.
    """

    static_cache = True  # never touches the cache

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """No matmuls: 0 (:mod:`formers.nn.flops`)."""
        return 0.0

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        return x * 0.0
