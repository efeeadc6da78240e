"""Position-wise feed-forwards: the GELU MLP and SwiGLU. Input and output (batch, seq_len, d_model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.flops import children_flops
from formers.registry import Paper, register


@register(
    "ffn",
    "mlp",
    paper=Paper("Attention Is All You Need", "1706.03762", "eq. 2 (GELU as in GPT-2)"),
    summary="Linear -> GELU -> Linear",
)
class MLP(nn.Module):
    """W2 GELU(W1 x + b1) + b2 with hidden width ``d_ff`` (default 4*d_model).

    Args: cfg (d_model, d_ff, bias); d_ff overrides cfg.d_ff for this layer.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        hidden = d_ff or cfg.ffn_hidden
        if hidden <= 0:
            raise ValueError(f"mlp: d_ff must be > 0, got {hidden}")
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Its linears (dense or low-rank LED units) on every token: 2 x 2 d_model d_ff n dense."""
        return children_flops(self, seq_len, causal, square)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


def swiglu_hidden(d_model: int) -> int:
    """The 2/3 * 4 * d_model rule of Shazeer (2020), rounded up to a multiple of 8."""
    return -(-(8 * d_model // 3) // 8) * 8


@register(
    "ffn",
    "swiglu",
    paper=Paper("GLU Variants Improve Transformer", "2002.05202", "eq. 6 (FFN_SwiGLU)"),
    summary="W2 (SiLU(W x) * V x)",
)
class SwiGLU(nn.Module):
    """W2 (SiLU(W x) * (V x)); hidden width d_ff (default: 8/3 d_model rounded up to 8)."""

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None) -> None:
        super().__init__()
        hidden = d_ff or cfg.d_ff or swiglu_hidden(cfg.d_model)
        if hidden <= 0:
            raise ValueError(f"swiglu: d_ff must be > 0, got {hidden}")
        self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Its linears (dense or low-rank LED units) on every token: 3 x 2 d_model d_ff n dense."""
        return children_flops(self, seq_len, causal, square)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
