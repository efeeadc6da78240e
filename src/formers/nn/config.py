"""Model configs: :class:`ModelConfig` (the single source of a model's shape) and :class:`LayerSpec`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from formers.config import Config, check_choice, check_positive

ARCHS = ("decoder", "encoder", "encoder-decoder")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
VALUE_RESIDUALS = ("none", "mix", "learned", "shared")


@dataclass
class LayerSpec(Config):
    """What one layer uses: the token mixer, the feed-forward and the cache policy (registry names).

    ``attention_options`` / ``ffn_options`` / ``cache_options`` are passed to that part's
    constructor as keywords (e.g. ``cache="window", cache_options={"window": 128}``). ``cache``
    ``auto`` picks ``recurrent`` for a mixer that decodes from a state and ``full`` otherwise.
    """

    attention: str = "softmax"
    ffn: str = "mlp"
    cache: str = "auto"
    cache_options: dict[str, Any] = field(default_factory=dict)
    attention_options: dict[str, Any] = field(default_factory=dict)
    ffn_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig(Config):
    """Shape of a formers model.

    Attributes:
        arch: ``decoder`` (causal LM), ``encoder`` (bidirectional) or ``encoder-decoder``.
        vocab_size: number of token ids (> 0).
        d_model: residual stream width. n_layers: blocks (the decoder's, for encoder-decoder).
        n_heads: query heads; ``d_model`` must be divisible by it. head_dim = d_model / n_heads.
        n_kv_heads: key/value heads (GQA; 1 = MQA; None = n_heads = MHA); must divide n_heads.
        d_ff: feed-forward hidden width; None gives 4*d_model (``mlp``) or the 2/3 rule rounded
            up to a multiple of 8 (``swiglu``).
        max_seq_len: longest sequence (positions) the model accepts.
        position: ``learned``, ``sinusoidal`` (added to embeddings), ``rope`` (rotates q, k),
            ``alibi`` (linear attention bias) or ``none``.
        norm: registry name (``layernorm`` / ``rmsnorm``). prenorm: pre-norm (True) or post-norm.
        attention / ffn: default registry names for every layer; ``layers`` overrides per layer:
            a list of :class:`LayerSpec` whose length divides n_layers, tiled over the depth.
        n_encoder_layers: encoder depth for ``encoder-decoder`` (None = n_layers).
        tie_embeddings: share the token embedding with the output projection.
        residual: the stream scheme of the backbone loop (registry kind ``residual``): ``plain``
            (ordinary residual stream) or ``dwa`` (DenseFormer depth-weighted averaging, arXiv
            2402.02622; see :mod:`formers.nn.residual`).
        dwa_dilation / dwa_period: DenseFormer's k and p (a "k x p DenseFormer"); 1 x 1 is the full
            DenseFormer. Used only when ``residual='dwa'``.
        value_residual: ``none``; ``mix`` (ResFormer, arXiv 2410.17897: layers n >= 2 use
            V'_n = value_lambda_first * V_1 + value_lambda_self * V_n, fixed); ``learned`` (the same
            mix with one learnable (lambda_1, lambda_2) pair per layer, initialised to the two fields);
            ``shared`` (SVFormer: layers >= 2 use V_1 and have no value projection, so their KV cache
            holds keys only). See :mod:`formers.nn.value_residual`.
        value_lambda_first / value_lambda_self: lambda_1 and lambda_2 of the mix (paper: 0.5, 0.5).
    Raises:
        ValueError: on any field outside its allowed range, naming the field and the value.
    """

    arch: Literal["decoder", "encoder", "encoder-decoder"] = "decoder"
    vocab_size: int = 260
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    position: Literal["learned", "sinusoidal", "rope", "alibi", "none"] = "learned"
    rope_base: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    prenorm: bool = True
    attention: str = "softmax"
    ffn: str = "mlp"
    layers: list[LayerSpec] | None = None
    n_encoder_layers: int | None = None
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    init_std: float = 0.02
    residual: str = "plain"
    dwa_dilation: int = 1
    dwa_period: int = 1
    value_residual: Literal["none", "mix", "learned", "shared"] = "none"
    value_lambda_first: float = 0.5
    value_lambda_self: float = 0.5

    def __post_init__(self) -> None:
        o = "ModelConfig"
        check_choice(o, "arch", self.arch, ARCHS)
        check_choice(o, "position", self.position, POSITIONS)
        check_positive(
            o,
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            d_ff=self.d_ff,
            max_seq_len=self.max_seq_len,
            n_encoder_layers=self.n_encoder_layers,
            rope_base=self.rope_base,
            norm_eps=self.norm_eps,
            dwa_dilation=self.dwa_dilation,
            dwa_period=self.dwa_period,
        )
        check_choice(o, "value_residual", self.value_residual, VALUE_RESIDUALS)
        for name in ("value_lambda_first", "value_lambda_self"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"ModelConfig.{name} must be a finite number, got {v!r}")
        for name in ("dwa_dilation", "dwa_period"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"ModelConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}"
            )
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"ModelConfig.n_kv_heads = {self.n_kv_heads} must divide n_heads = {self.n_heads}"
            )
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig: position='rope' needs an even head_dim, got "
                f"d_model/n_heads = {self.d_model}/{self.n_heads} = {self.head_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.layers is not None:
            if len(self.layers) == 0 or self.n_layers % len(self.layers):
                raise ValueError(
                    f"ModelConfig.layers has {len(self.layers)} entries; it must be non-empty and "
                    f"its length must divide n_layers = {self.n_layers}"
                )
            self.layers = [
                s if isinstance(s, LayerSpec) else LayerSpec.from_dict(dict(s)) for s in self.layers
            ]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_hidden(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return 4 * self.d_model

    def layer_spec(self, i: int) -> LayerSpec:
        """The :class:`LayerSpec` of decoder/encoder layer ``i`` (pattern tiled over depth)."""
        if self.layers is None:
            return LayerSpec(attention=self.attention, ffn=self.ffn)
        return self.layers[i % len(self.layers)]
