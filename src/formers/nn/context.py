"""The context object every token mixer receives beside its input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Context:
    """What a layer needs to know besides ``x``.

    positions: (seq_len,) int64 absolute positions of the current tokens (offset by the cache).
    causal: whether self-attention is causal.
    position: the model's position module (for RoPE rotation and ALiBi bias), or None.
    key_mask: (batch, seq_len_k) bool, True where a key may be attended (padding mask), or None.
    memory: (batch, src_len, d_model) encoder output for cross-attention, or None.
    memory_mask: (batch, src_len) bool padding mask of ``memory``, or None.
    v_first: (batch, n_kv_heads, seq_len, head_dim) the first layer's values of the current tokens
        (after the value projection and head split, before attention and before any cache), for
        value-residual schemes; written by layer 1's mixer through ``value_residual``.
    v_first_cached: (batch, n_kv_heads, kept_len, head_dim) the first layer's values of every key
        it attends to (cache included) and ``v_first_pos`` (kept_len,) their positions; SVFormer's
        later layers read their values here.
    value_residual: the stack's value-residual rule (:class:`formers.nn.value_residual.ValueResidual`)
        or None; mixers that support it call it on their keys/values (set by the backbone).
    capture: a dict the layers write named intermediates into (the explainer), or None.
    layer: index of the layer being run.
    """

    positions: torch.Tensor
    causal: bool = True
    position: Any = None
    key_mask: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    v_first: torch.Tensor | None = None
    v_first_cached: torch.Tensor | None = None
    v_first_pos: torch.Tensor | None = None
    value_residual: Any = None
    capture: dict[str, torch.Tensor] | None = None
    layer: int = 0

    def record(self, name: str, value: torch.Tensor) -> None:
        """Store ``value`` under ``layer{i}.{name}`` when capturing (detached, no copy of work)."""
        if self.capture is not None:
            self.capture[f"layer{self.layer}.{name}"] = value.detach()
