"""The backbone: a stack of blocks built from the config's per-layer pattern.

Stream-level ideas live in this loop, switched by config:
  * ``cfg.residual``: the residual-stream scheme (registry kind ``residual``): ``plain``, or
    ``dwa`` = DenseFormer depth-weighted averaging (arXiv 2402.02622, :mod:`formers.nn.residual`).
  * ``cfg.value_residual``: ResFormer / SVFormer value residual (arXiv 2410.17897,
    :mod:`formers.nn.value_residual`); the rule travels to the mixers in ``Context.value_residual``.
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.block import Block
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.norm import build_norm
from formers.nn.value_residual import ValueResidual
from formers.registry import get


class Stack(nn.Module):
    """``n_layers`` blocks (layer i uses ``cfg.layer_spec(i)``) and, for pre-norm, a final norm.

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model). With X_0 = x and X_i = block_i(Y_{i-1}),
    the stream Y_i comes from ``self.residual`` (Y_i = X_i for ``plain``; DenseFormer DWA for ``dwa``)
    and the output is norm_f(Y_d).

    Raises:
        ValueError: unknown residual scheme, or value residual with a token mixer that does not
        support it (mixers opt in with ``supports_value_residual = True``).
    """

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        specs = [cfg.layer_spec(i) for i in range(n_layers)]
        if cfg.value_residual != "none":
            for i, s in enumerate(specs):
                if not getattr(get("attention", s.attention).obj, "supports_value_residual", False):
                    raise ValueError(
                        f"layer {i}: attention {s.attention!r} does not support value_residual="
                        f"{cfg.value_residual!r} (supported: mixers with supports_value_residual)")
            if cfg.value_residual == "shared":  # SVFormer: layers >= 2 have no value projection
                specs = [s if i == 0 else s.replace(
                    attention_options={**s.attention_options, "own_values": False})
                    for i, s in enumerate(specs)]
        self.blocks = nn.ModuleList(
            Block(cfg, specs[i], causal=causal, cross=cross) for i in range(n_layers)
        )
        self.norm_f = (
            build_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if cfg.prenorm else nn.Identity()
        )
        self.residual = get("residual", cfg.residual).obj(cfg, n_layers)
        self.value_residual = (
            ValueResidual(cfg, n_layers) if cfg.value_residual != "none" else None
        )

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        ctx.value_residual = self.value_residual
        if self.value_residual is not None:
            self.value_residual.begin(ctx)
        state = self.residual.begin(x)
        for i, block in enumerate(self.blocks):
            ctx.layer = i
            x = block(x, ctx, None if cache is None else cache.layers[i])
            if i == 0 and self.value_residual is not None and ctx.v_first is None:
                raise ValueError(  # a mixer that claims support but never called the rule
                    "value residual: layer 1's token mixer did not hand its values to "
                    "ctx.value_residual (it must call the rule in its self-attention)")
            x = self.residual.after_block(i + 1, x, state, ctx)
        return self.norm_f(x)
