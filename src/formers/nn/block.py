"""One block: norm -> token mixer -> residual -> [norm -> cross-attention -> residual] ->
norm -> channel mixer (feed-forward) -> residual. Pre-norm or post-norm by config."""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.build import build_part
from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.context import Context
from formers.nn.norm import build_norm
from formers.registry import get


class Block(nn.Module):
    """A transformer block. x: (batch, seq_len, d_model) -> same shape.

    Args:
        cfg: the model config. spec: this layer's :class:`LayerSpec`.
        causal: whether this block runs causally (checked against the mixer's capabilities).
        cross: add a cross-attention sublayer over ``ctx.memory`` (encoder-decoder decoders).
    Raises:
        ValueError: the mixer cannot run causally / bidirectionally as asked, ALiBi with a mixer
            that takes no score bias, or unknown parts.
    """

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, causal: bool, cross: bool = False) -> None:
        super().__init__()
        caps = get("attention", spec.attention).caps
        if causal and not caps.causal:
            raise ValueError(f"attention {spec.attention!r} cannot run causally (decoder layers)")
        if not causal and not caps.bidirectional:
            raise ValueError(f"attention {spec.attention!r} is causal-only; it cannot be an encoder layer "
                             f"(use a decoder: ModelConfig arch='decoder', or --opt arch=decoder / "
                             f"arch=auto for tasks that offer it)")
        if cfg.position == "alibi" and not caps.score_bias:
            raise ValueError(f"attention {spec.attention!r} has no score matrix to add ALiBi's bias to; "
                             f"use position 'rope', 'learned', 'sinusoidal' or 'none'")
        self.prenorm = cfg.prenorm

        def norm() -> nn.Module:
            return build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)

        self.norm1 = norm()
        self.mixer = build_part("attention", spec.attention, cfg, spec.attention_options)
        self.norm_cross = norm() if cross else None
        self.cross = build_part("attention", "softmax", cfg, cross=True) if cross else None
        self.norm2 = norm()
        self.ffn = build_part("ffn", spec.ffn, cfg, spec.ffn_options)
        self.drop = nn.Dropout(cfg.dropout)

    def _sub(self, x: torch.Tensor, norm: nn.Module, f) -> torch.Tensor:
        if self.prenorm:
            return x + self.drop(f(norm(x)))
        return norm(x + self.drop(f(x)))

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        x = self._sub(x, self.norm1, lambda h: self.mixer(h, ctx, cache))
        if self.cross is not None:
            x = self._sub(x, self.norm_cross, lambda h: self.cross(h, ctx, cache))
        ffn = (lambda h: self.ffn(h, ctx)) if getattr(self.ffn, "takes_context", False) else self.ffn
        x = self._sub(x, self.norm2, ffn)
        if ctx.capture is not None:
            ctx.record("resid", x)
        return x
