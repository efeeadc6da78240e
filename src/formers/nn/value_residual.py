"""Value residual learning (ResFormer) and single-value attention (SVFormer).

    Zhou et al., "Value Residual Learning For Alleviating Attention Concentration In
    Transformers", arXiv 2410.17897 (v2: §3, eq. 7; SVFormer §3 / §4.5; lambda sweep Fig. 8).

Layer 1 runs plain attention and hands on its values V_1 = H_1 W_V^1 (after the value projection
and head split, no RoPE, **not** detached). Layer n >= 2 then attends with

    V'_n = lambda_1 V_1 + lambda_2 V_n,    U_n = softmax(Q_n K_n^T / sqrt(d_h) + mask) V'_n,

(paper default lambda_1 = lambda_2 = 0.5; A_n is linear in V, so this equals
lambda_1 A_n V_1 + lambda_2 A_n V_n). Modes (``ModelConfig.value_residual``):

* ``mix``: fixed (lambda_1, lambda_2) = (``value_lambda_first``, ``value_lambda_self``);
  ``(1, 1)`` with any lambda_1 gives the paper's lambda sweep U = A(V_n + lambda V_1).
* ``learned``: one learnable pair per layer n >= 2, parameter ``value_residual.lambdas.layer<n-1>``
  of shape (2,), initialised to the two config values. This is the paper's later "learnable"
  variant in a general form; the modded-nanogpt speedrun's single lambda with
  (1 - lambda, lambda) is the special case lambda_1 + lambda_2 = 1.
* ``shared`` (SVFormer): layers n >= 2 use V_1 outright (U_n = A_n V_1) and have no W_V. Their KV
  cache stores keys only (a zero-width value tensor), and they read layer 1's cached values, so a
  decoding cache holds the values once.

Decoding: ``mix`` / ``learned`` cache the already-mixed V'_n (the mix is per position, so this
equals mixing the cached values). ``shared`` needs every layer's cache to keep the same positions
as layer 1's (checked at run time: a sliding window on layer 1 only would be an error).

Deviations from the paper's code (``Zcchill/Value-Residual-Learning``, HF Llama copies):
  * V_1 is kept after the head split, (batch, n_kv_heads, seq_len, head_dim) rather than before the
    reshape; the mix is element-wise, so it is the same. All layers share ``n_kv_heads`` (GQA is a
    global setting here); a shape mismatch raises ``ValueError``.
  * The learnable lambdas are 1-D parameters, so formers' AdamW grouping gives them no weight decay
    (the notes' advice) and the GPT-2 initialiser leaves them alone.
  * It applies to each stack separately: an encoder-decoder's encoder and decoder each have their
    own V_1 (the paper is decoder-only). Cross-attention is never mixed.
The mixers opt in with a class attribute ``supports_value_residual = True`` and call the rule on
their self-attention keys/values (see :class:`formers.nn.attention.softmax.SoftmaxAttention`).
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.registry import Paper

PAPER = Paper("Value Residual Learning For Alleviating Attention Concentration In Transformers",
              "2410.17897", "§3, eq. 7")


class ValueResidual(nn.Module):
    """The value-residual rule of one stack (``cfg.value_residual`` in ``mix|learned|shared``).

    Called by a supporting self-attention mixer as ``k, v, k_pos = rule(k, v, pos, ctx, cache)``
    with k: (batch, n_kv_heads, seq_len, head_dim) (already rotated), v: the same shape, or None for
    an SVFormer layer without W_V, pos: (seq_len,) positions. It records V_1 (layer 0), mixes V
    (layers >= 1), updates the layer's cache and returns the keys / values to attend over with
    their positions. Paper: ResFormer, arXiv 2410.17897 §3 eq. 7.
    """

    def __init__(self, cfg: ModelConfig, n_layers: int) -> None:
        super().__init__()
        if cfg.value_residual == "none":
            raise ValueError("ValueResidual needs ModelConfig.value_residual != 'none'")
        self.mode = cfg.value_residual
        self.n_layers, self.value_width = n_layers, cfg.kv_heads * cfg.head_dim
        self.first, self.self_ = float(cfg.value_lambda_first), float(cfg.value_lambda_self)
        self.lambdas = nn.ParameterDict()
        if self.mode == "learned":
            for n in range(1, n_layers):
                self.lambdas[f"layer{n}"] = nn.Parameter(torch.tensor([self.first, self.self_]))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, lambda_first={self.first}, lambda_self={self.self_}"

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """The mixes V'_n = lambda_1 V_1 + lambda_2 V_n of layers 2..L: 2 multiply-adds per value
        entry (4 FLOPs x n_kv_heads head_dim per token and layer); ``shared`` mixes nothing (its
        saving, the missing W_V, shows in the mixers' projections)."""
        if self.mode == "shared":
            return 0.0
        return 4.0 * self.value_width * seq_len * (self.n_layers - 1)

    @staticmethod
    def begin(ctx: Context) -> None:
        """Forget the previous pass's V_1 (call before layer 0 runs)."""
        ctx.v_first = ctx.v_first_cached = ctx.v_first_pos = None

    def mix(self, layer: int) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(lambda_1, lambda_2) of 0-based layer ``layer`` >= 1."""
        if self.mode == "shared":
            return 1.0, 0.0
        if self.mode == "learned":
            lam = self.lambdas[f"layer{layer}"]
            return lam[0], lam[1]
        return self.first, self.self_

    def forward(self, k: torch.Tensor, v: torch.Tensor | None, pos: torch.Tensor, ctx: Context,
                cache=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if ctx.layer == 0:
            if v is None:
                raise ValueError("value residual: layer 1 must compute its own values")
            ctx.v_first = v
            k_pos = pos
            if cache is not None:
                k, v, k_pos = cache.update(k, v, pos)
            ctx.v_first_cached, ctx.v_first_pos = v, k_pos
            return k, v, k_pos
        v1 = ctx.v_first
        if v1 is None:
            raise ValueError(
                f"value residual at layer {ctx.layer}: no layer-1 values (the first layer's token "
                f"mixer must support value residual)")
        want = v1.shape if v is None else v.shape
        if v1.shape != want or v1.shape[:-1] != k.shape[:-1]:
            raise ValueError(
                f"value residual at layer {ctx.layer}: V_1 has shape {tuple(v1.shape)} but this layer's "
                f"keys/values have {tuple(k.shape)}; every layer must share n_kv_heads and head_dim")
        l1, l2 = self.mix(ctx.layer)
        if ctx.capture is not None:
            ctx.record("value_residual.mix", torch.stack([torch.as_tensor(l1), torch.as_tensor(l2)]).float())
        if self.mode == "shared":
            if v is not None:
                raise ValueError(f"SVFormer layer {ctx.layer} must not have its own value projection")
            if cache is None:
                return k, v1, pos
            b, h, t, _ = k.shape
            k, _, k_pos = cache.update(k, k.new_empty((b, h, t, 0)), pos)
            kept = ctx.v_first_pos
            if kept is None or kept.shape != k_pos.shape or not torch.equal(kept, k_pos):
                raise ValueError(
                    f"SVFormer layer {ctx.layer}: its cache keeps different positions from layer 1's; "
                    f"every layer needs the same cache policy as the first")
            return k, ctx.v_first_cached, k_pos
        if v is None:
            raise ValueError(f"value residual ({self.mode}) layer {ctx.layer} has no values")
        if isinstance(l1, torch.Tensor):
            l1, l2 = l1.to(v.dtype), l2.to(v.dtype)
        v = l1 * v1 + l2 * v
        k_pos = pos
        if cache is not None:
            k, v, k_pos = cache.update(k, v, pos)
        return k, v, k_pos


# ------------------------------------------------------------------------------------ presets
from formers.nn.presets import preset  # noqa: E402


@preset("value-residual", PAPER, "ResFormer: layers >= 2 attend over 0.5 V_1 + 0.5 V_n (fixed)")
def value_residual(c: ModelConfig) -> ModelConfig:
    return c.replace(value_residual="mix", value_lambda_first=0.5, value_lambda_self=0.5)


@preset("value-residual-learned", PAPER,
        "ResFormer with a learnable (lambda_1, lambda_2) per layer, initialised to (0.5, 0.5)")
def value_residual_learned(c: ModelConfig) -> ModelConfig:
    return c.replace(value_residual="learned", value_lambda_first=0.5, value_lambda_self=0.5)


@preset("svformer", Paper(PAPER.title, PAPER.arxiv, "§3 SVFormer"),
        "SVFormer: layers >= 2 reuse layer 1's values (no W_V; values cached once)")
def svformer(c: ModelConfig) -> ModelConfig:
    return c.replace(value_residual="shared")
