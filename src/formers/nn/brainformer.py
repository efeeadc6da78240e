"""Brainformer heterogeneous blocks as layer patterns (Zhou et al., "Brainformers: Trading
Simplicity for Efficiency", ICML 2023, arXiv 2306.00008, §3-4, Table 1, Figure of block #1).

A Brainformer block is an ordered list of sub-layers, each attention (``a``), sparsely gated MoE
(``m``) or dense FFN (``f``), each a normalised residual sub-layer. :func:`parse_block` turns such a
string into :class:`~formers.nn.config.LayerSpec` entries for our backbone, whose
:class:`~formers.nn.block.Block` always has a token-mixer sub-layer followed by an FFN sub-layer:

* ``a`` followed by ``m`` or ``f`` is one block (attention + that FFN);
* an ``m`` / ``f`` without attention before it is a block with the ``none`` mixer (FFN-only);
* ``a`` followed by ``a`` or at the end has no FFN sub-layer to pair with: refused.

So block #1, ``a m f a m f m f`` (8 sub-layers; the order comes from a figure, transcribed by a
third party and unverified), is 6 of our blocks::

    (softmax, moe) (none, mlp) (softmax, moe) (none, mlp) (none, moe) (none, mlp)

Deviations, named:

* our Block always has both sub-layers; an FFN-only sub-layer is a block with the ``none`` mixer.
  In pre-norm this is exact (x + 0 = x). In post-norm the empty mixer sub-layer still applies its
  norm (norm1(x)), an extra LayerNorm the paper does not have.
* the paper's per-layer widths (smaller expansion ratios than 4x, d_model 1024 at 100M32E) are
  only in a figure; the helpers keep the base config's d_ff for dense layers and experts unless
  given, and ``moe_d_ff`` / ``ffn_d_ff`` set them.
* expert choice (the paper's gating) is not causal, so it is refused in decoders unless
  ``noncausal_ok=True`` (the leak the paper accepts in training). The registered ``brainformer``
  preset therefore uses top-2 gating (also in the paper's search space, Table 1), which is causal
  when dropless.
"""

from __future__ import annotations

from typing import Any

from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.presets import preset
from formers.registry import Paper

PAPER = Paper("Brainformers: Trading Simplicity for Efficiency", "2306.00008",
              "§4 block #1 (figure; order unverified), Table 1 search space")
BLOCK1 = "a m f a m f m f"
"""Brainformer block #1: Attn, MoE, FFN, Attn, MoE, FFN, MoE, FFN (unverified transcription)."""

_TOKENS = {"a": "a", "attn": "a", "attention": "a", "m": "m", "moe": "m", "g": "m",
           "f": "f", "ffn": "f", "dense": "f"}


def parse_block(spec: str | list[str], moe_options: dict[str, Any] | None = None,
                ffn: str = "mlp", ffn_options: dict[str, Any] | None = None,
                attention: str = "softmax",
                attention_options: dict[str, Any] | None = None) -> list[LayerSpec]:
    """Sub-layer string (``"a m f a m f m f"``, tokens a/attn, m/moe/g, f/ffn/dense, separated by
    spaces or commas, or a list of tokens) -> one :class:`LayerSpec` per backbone block, in order.

    Raises:
        ValueError: an unknown token, an empty spec, or an attention with no FFN after it.
    """
    toks = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    if not toks:
        raise ValueError("parse_block: empty block spec")
    kinds = []
    for t in toks:
        k = _TOKENS.get(str(t).lower())
        if k is None:
            raise ValueError(f"parse_block: unknown sub-layer {t!r}; allowed: {sorted(_TOKENS)}")
        kinds.append(k)
    moe_options = dict(moe_options or {})
    layers: list[LayerSpec] = []
    i = 0
    while i < len(kinds):
        mixer = "none"
        if kinds[i] == "a":
            if i + 1 == len(kinds) or kinds[i + 1] == "a":
                raise ValueError(f"parse_block: attention at sub-layer {i + 1} of {toks} has no FFN "
                                 f"sub-layer after it (our Block pairs each mixer with an FFN)")
            mixer, i = attention, i + 1
        f_name, f_opts = ("moe", dict(moe_options)) if kinds[i] == "m" else (ffn, dict(ffn_options or {}))
        layers.append(LayerSpec(attention=mixer, ffn=f_name, ffn_options=f_opts,
                                attention_options=dict(attention_options or {}) if mixer != "none" else {}))
        i += 1
    return layers


def brainformer_layers(block: str = BLOCK1, gating: str = "expert_choice", n_experts: int = 8,
                       capacity_factor: float = 1.0, top_k: int = 2, moe_d_ff: int | None = None,
                       ffn_d_ff: int | None = None, noncausal_ok: bool = False,
                       **moe_extra: Any) -> list[LayerSpec]:
    """The block's layer pattern with MoE options filled in.

    gating: ``expert_choice`` (block #1: capacity factor 1) or ``top2`` (token choice, top_k
    experts per token; dropless, so causal). Extra keywords go to every MoE layer.
    """
    if gating == "expert_choice":
        opts: dict[str, Any] = {"routing": "expert_choice", "capacity_factor": capacity_factor}
    elif gating == "top2":
        opts = {"routing": "top_k", "top_k": top_k, "capacity_factor": None}
    else:
        raise ValueError(f"brainformer: gating must be 'expert_choice' or 'top2', got {gating!r}")
    opts.update(n_experts=n_experts, noncausal_ok=noncausal_ok, **moe_extra)
    if moe_d_ff is not None:
        opts["d_ff"] = moe_d_ff
    return parse_block(block, opts, ffn_options={"d_ff": ffn_d_ff} if ffn_d_ff else None)


def brainformer_config(base: ModelConfig, n_blocks: int = 3, block: str = BLOCK1,
                       **kw: Any) -> ModelConfig:
    """``base`` with ``n_blocks`` Brainformer blocks stacked (the paper stacks block #1 3x at
    100M32E, 6x at 1B, 8x at 8B): n_layers = n_blocks * (backbone blocks per Brainformer block).
    Keywords go to :func:`brainformer_layers`."""
    if not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f"brainformer_config: n_blocks must be an int >= 1, got {n_blocks!r}")
    layers = brainformer_layers(block, **kw)
    return ModelConfig.from_dict(base.replace(layers=layers, n_layers=n_blocks * len(layers)).to_dict())


@preset("brainformer", PAPER, "Brainformer block #1 (attention / dense FFN / MoE in the searched "
        "order), top-2 dropless gating")
def brainformer(c: ModelConfig) -> ModelConfig:
    """Block #1 with top-2 dropless gating (causal and cache-exact; the paper's block uses expert
    choice, which decoders refuse), tiled over the base depth, which must be a multiple of 6."""
    layers = brainformer_layers(BLOCK1, gating="top2")
    if c.n_layers % len(layers):
        raise ValueError(f"brainformer: n_layers = {c.n_layers} must be a multiple of "
                         f"{len(layers)} (backbone blocks per Brainformer block #1)")
    return c.replace(layers=layers)


__all__ = ["BLOCK1", "PAPER", "brainformer", "brainformer_config", "brainformer_layers",
           "parse_block"]
