"""The ODEFormer model: a point embedder (one encoder token per time point, no positional
embedding) in front of the formers encoder-decoder backbone, trained with cross-entropy on the
prefix tokens of the system.

Source: d'Ascoli, Becker, Mathis, Schwaller, Kilbertus, "ODEFormer: Symbolic Regression of
Dynamical Systems with Transformers" (ICLR 2024, arXiv 2310.05573), §3 and the reference code
``model/embedders.py::LinearPointEmbedder`` and ``model/transformer.py`` (XLM-style post-norm).

Shapes:
    points: (batch, n_points, (1 + max_dimension) * 3) int64 -- the three float tokens (sign,
        mantissa, exponent) of t, x_1 .. x_D, then ``pad_id`` tokens up to ``max_dimension``;
    point_mask: (batch, n_points) bool, True for real points (None = all real);
    tgt: (batch, tgt_len) int64 output-vocabulary ids (BOS, prefix tokens, EOS, PAD);
    encode -> memory (batch, n_points, d_model); decode -> logits (batch, tgt_len, vocab_size).

Deviations from the reference (also in docs/papers.md):
    * the feed-forward is formers' ``mlp`` part (GELU); the reference XLM code has its own FFN;
    * the default config is a CPU-sized model (``odeformer``); the paper's shape is the named
      config ``odeformer-paper`` (d_model 512, 4 encoder / 12 decoder layers, 16 heads, point
      token width 64, max_dimension 6: 71.7M parameters here with the codec vocabulary; the paper
      reports ~86M, which suggests 16 decoder layers);
    * weights other than the point embedder use formers' GPT-2 initialisation (N(0, 0.02)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from formers.config import Config, check_positive
from formers.nn.cache import KVCache
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.models import EncoderDecoder, make_cache
from formers.registry import Paper, register

PAPER = Paper("ODEFormer: Symbolic Regression of Dynamical Systems with Transformers", "2310.05573",
              "§3 (model, tokenisation, inference)")

FLOAT_TOKENS = 3  # sign, mantissa, exponent (the paper's float_descriptor_length)
KIND = "symbolic"  # registry kind of the ODEFormer variants


@dataclass
class ODEFormerConfig(Config):
    """Shape of an ODEFormer.

    Attributes:
        model: the variant name (``odeformer``, ``odeformer-tiny``, ``odeformer-gpu``,
            ``odeformer-paper``); informational, saved with the weights.
        input_vocab_size: ids of the float tokens of the points (pad included); set by the task
            from the codec's vocabulary.
        pad_id: the input id that fills the components beyond a system's dimension
            (the reference's ``<OUTPUT_PAD>``).
        vocab_size: ids of the output (prefix) vocabulary, special tokens included.
        max_dimension: D_max, the largest state dimension the model reads (paper: 6).
        token_dim: width of each float token's embedding (paper ``emb_emb_dim`` = 64).
        embedder_hidden: hidden width of the embedder MLP (None = (1 + D_max) * 3 * token_dim,
            the paper's 1344 at D_max 6, width 64).
        d_model, n_heads, n_encoder_layers, n_decoder_layers, d_ff (None = 4 d_model), dropout:
            the backbone (paper: 512, 16, 4, 12, 2048, 0).
        prenorm: False = post-LayerNorm blocks as the reference (with a LayerNorm on the
            embeddings); True = pre-norm.
        max_output_len: longest decoder sequence (BOS + prefix + EOS).
    Raises:
        ValueError: a non-positive size, d_model not divisible by n_heads, pad_id outside the
            input vocabulary or dropout outside [0, 1), naming the field and the value.
    """

    model: str = "odeformer"
    input_vocab_size: int = 10300
    pad_id: int = 0
    vocab_size: int = 10300
    max_dimension: int = 2
    token_dim: int = 32
    embedder_hidden: int | None = None
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int | None = None
    dropout: float = 0.0
    prenorm: bool = False
    max_output_len: int = 256

    def __post_init__(self) -> None:
        o = "ODEFormerConfig"
        for name in ("input_vocab_size", "vocab_size", "max_dimension", "token_dim", "embedder_hidden",
                     "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
                     "max_output_len", "pad_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"{o}.{name} must be an int, got {v!r}")
        check_positive(o, input_vocab_size=self.input_vocab_size, vocab_size=self.vocab_size,
                       max_dimension=self.max_dimension, token_dim=self.token_dim,
                       embedder_hidden=self.embedder_hidden, d_model=self.d_model, n_heads=self.n_heads,
                       n_encoder_layers=self.n_encoder_layers, n_decoder_layers=self.n_decoder_layers,
                       d_ff=self.d_ff, max_output_len=self.max_output_len)
        if not 0 <= self.pad_id < self.input_vocab_size:
            raise ValueError(f"{o}.pad_id = {self.pad_id} must lie in [0, input_vocab_size = "
                             f"{self.input_vocab_size})")
        if self.d_model % self.n_heads:
            raise ValueError(f"{o}.d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{o}.dropout must be in [0, 1), got {self.dropout}")

    @property
    def max_seq_len(self) -> int:
        """The decoder's longest sequence (``max_output_len``; the name formers' ``generate`` reads)."""
        return self.max_output_len

    @property
    def point_tokens(self) -> int:
        """Tokens per time point: (1 + max_dimension) * 3."""
        return (1 + self.max_dimension) * FLOAT_TOKENS

    def backbone(self) -> ModelConfig:
        """The formers encoder-decoder config of the backbone (decoder: learned positions, tied
        input/output embeddings)."""
        return ModelConfig(arch="encoder-decoder", vocab_size=self.vocab_size, d_model=self.d_model,
                           n_layers=self.n_decoder_layers, n_encoder_layers=self.n_encoder_layers,
                           n_heads=self.n_heads, d_ff=self.d_ff, max_seq_len=self.max_output_len,
                           position="learned", prenorm=self.prenorm, dropout=self.dropout,
                           tie_embeddings=True)


# The named shapes (the vocabulary fields are filled in by the task from the codec).
VARIANTS: dict[str, dict[str, Any]] = {
    "odeformer": dict(max_dimension=2, token_dim=32, d_model=128, n_heads=4, n_encoder_layers=2,
                      n_decoder_layers=2, max_output_len=256),
    "odeformer-tiny": dict(max_dimension=2, token_dim=8, d_model=32, n_heads=2, n_encoder_layers=1,
                           n_decoder_layers=1, max_output_len=128),
    "odeformer-gpu": dict(max_dimension=6, token_dim=64, d_model=256, n_heads=8, n_encoder_layers=4,
                          n_decoder_layers=6, max_output_len=512),
    "odeformer-paper": dict(max_dimension=6, token_dim=64, d_model=512, n_heads=16, n_encoder_layers=4,
                            n_decoder_layers=12, max_output_len=512),
}


def variant_config(name: str, **fields: Any) -> ODEFormerConfig:
    """The config of named variant ``name`` (see :data:`VARIANTS`) with ``fields`` set on top.
    Unless given, the vocabulary fields come from :mod:`formers.sciml.ode.tokens` (the codec's
    float tokens + pad for the points, ``expr.vocabulary(max_dimension)`` for the outputs).

    Raises ValueError for an unknown variant (naming the known ones) or a bad field."""
    from formers.sciml.ode import tokens

    if name not in VARIANTS:
        raise ValueError(f"unknown ODEFormer variant {name!r}; known: {sorted(VARIANTS)}")
    merged = {**VARIANTS[name], **fields, "model": name}
    d = merged["max_dimension"]
    if isinstance(d, int) and not isinstance(d, bool) and d >= 1:
        merged.setdefault("input_vocab_size", len(tokens.INPUT_VOCAB))
        merged.setdefault("pad_id", tokens.INPUT_PAD_ID)
        merged.setdefault("vocab_size", tokens.output_vocab_size(d))
    return ODEFormerConfig.from_dict(merged)


class PointEmbedder(nn.Module):
    """One vector per time point from its float tokens (the paper's ``LinearPointEmbedder``).

    forward(points (batch, n_points, (1 + D_max) * 3) int64) -> (batch, n_points, d_model):
    each token is embedded (token_dim), the (1 + D_max) * 3 embeddings of a point are
    concatenated, then Linear -> SiLU -> Linear. No positional information is added: the time
    value is inside the point's tokens.

    Raises ValueError for a wrong last dimension or ids outside the input vocabulary.
    """

    def __init__(self, cfg: ODEFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        width = cfg.point_tokens * cfg.token_dim
        hidden = cfg.embedder_hidden or width
        self.tok = nn.Embedding(cfg.input_vocab_size, cfg.token_dim)
        nn.init.normal_(self.tok.weight, std=cfg.token_dim ** -0.5)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, cfg.d_model))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        if points.dim() != 3 or points.shape[-1] != c.point_tokens:
            raise ValueError(f"points must be (batch, n_points, {c.point_tokens}) = (1 + max_dimension "
                             f"{c.max_dimension}) * 3 tokens per point, got shape {tuple(points.shape)}")
        if points.numel() and (int(points.min()) < 0 or int(points.max()) >= c.input_vocab_size):
            raise ValueError(f"point token ids must lie in [0, {c.input_vocab_size}), got range "
                             f"[{int(points.min())}, {int(points.max())}]")
        e = self.tok(points)  # (batch, n_points, point_tokens, token_dim)
        return self.mlp(e.flatten(-2))


class ODEFormer(EncoderDecoder):
    """ODEFormer: point embedder -> bidirectional encoder (no positions) -> causal decoder with
    cross-attention, learned positions and tied output embedding (formers' EncoderDecoder).

    encode(points (batch, n_points, (1+D_max)*3), point_mask (batch, n_points) bool | None)
        -> memory (batch, n_points, d_model)
    decode(tgt (batch, tgt_len), memory, memory_mask, cache) -> logits (batch, tgt_len, vocab_size)
    forward(points, tgt, point_mask=None) -> logits.

    With ``prenorm=False`` (the reference) a LayerNorm follows the embeddings of both the points
    and the decoder tokens, as in the XLM transformer the reference builds on. ``self.cfg`` is the
    :class:`ODEFormerConfig`; ``self.backbone_cfg`` the formers :class:`ModelConfig`.
    Source: arXiv 2310.05573, §3.
    """

    def __init__(self, cfg: ODEFormerConfig) -> None:
        if not isinstance(cfg, ODEFormerConfig):
            raise TypeError(f"ODEFormer expects an ODEFormerConfig, got {type(cfg).__name__}")
        backbone = cfg.backbone()
        super().__init__(backbone)
        self.cfg = cfg  # type: ignore[assignment]
        self.backbone_cfg = backbone
        self.points = PointEmbedder(cfg)
        emb_norm = (lambda: nn.LayerNorm(cfg.d_model)) if not cfg.prenorm else nn.Identity
        self.points_norm = emb_norm()
        # the decoder's embedding: token + learned position, then (post-norm) LayerNorm, dropout
        self.embed.drop = nn.Sequential(emb_norm(), nn.Dropout(cfg.dropout))
        self.points_drop = nn.Dropout(cfg.dropout)

    def new_cache(self) -> KVCache:
        return make_cache(self.backbone_cfg, self.backbone_cfg.n_layers)

    def encode(self, points: torch.Tensor, point_mask: torch.Tensor | None = None,
               capture: dict | None = None) -> torch.Tensor:
        if point_mask is not None and tuple(point_mask.shape) != tuple(points.shape[:2]):
            raise ValueError(f"point_mask must be (batch, n_points) = {tuple(points.shape[:2])}, "
                             f"got {tuple(point_mask.shape)}")
        x = self.points_drop(self.points_norm(self.points(points)))
        positions = torch.arange(points.shape[1], device=points.device)  # unused: no position module
        ctx = Context(positions=positions, causal=False, position=None, key_mask=point_mask,
                      capture=capture)
        return self.encoder(x, ctx)

    def forward(self, points: torch.Tensor, tgt: torch.Tensor,  # type: ignore[override]
                point_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt, self.encode(points, point_mask), point_mask)


def build_odeformer(cfg: ODEFormerConfig) -> ODEFormer:
    """The module of ``cfg``."""
    return ODEFormer(cfg)


def load_odeformer(folder: str | Path, device: str | torch.device = "cpu") -> ODEFormer:
    """An ODEFormer saved as ``config.json`` + ``model.safetensors`` (a run's ``ckpt/`` or ``best/``
    folder, or :func:`formers.nn.io.save_model`'s output), in eval mode. Never unpickles.

    Raises FileNotFoundError for missing files, ValueError for a bad config or mismatched weights."""
    from formers.nn.family import load_family

    return load_family(KIND, folder, device).eval()


for _name in VARIANTS:  # one class, one registry entry per named shape (cfg.model names it)
    register(KIND, _name, config=ODEFormerConfig, paper=PAPER,
             summary=f"ODEFormer {_name}: point embedder + encoder-decoder, prefix tokens out")(ODEFormer)
