"""The backbone: a stack of blocks built from the config's per-layer pattern."""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.block import Block
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.norm import build_norm


class Stack(nn.Module):
    """``n_layers`` blocks (layer i uses ``cfg.layer_spec(i)``) and, for pre-norm, a final norm.

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model).
    """

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.layer_spec(i), causal=causal, cross=cross) for i in range(n_layers)
        )
        self.norm_f = (
            build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if cfg.prenorm else nn.Identity()
        )

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            ctx.layer = i
            x = block(x, ctx, None if cache is None else cache.layers[i])
        return self.norm_f(x)
