"""MatFormer's nested feed-forward (Devvrit, Kudugunta et al., "MatFormer: Nested Transformer for
Elastic Inference", arXiv 2310.07707, §3.1).

Only the FFN is nested. With hidden width d_ff and granularities m_1 < ... < m_g = d_ff,
granularity i uses the first m_i hidden units:

    GELU:   FFN_i(x) = W_down[:, :m_i] GELU(W_up[:m_i] x + b_up[:m_i]) + b_down
    SwiGLU: FFN_i(x) = W_down[:, :m_i] (SiLU(W_gate[:m_i] x + b_gate[:m_i]) * (W_up[:m_i] x + b_up[:m_i])) + b_down

The output bias b_down is shared by every granularity; the input biases are sliced. For SwiGLU the
gate rows and the up rows are sliced separately (slicing a fused [up; gate] projection as one
block, as MatFormer-OLMo's fused ``ff_proj`` would, is wrong for gated FFNs).

Which granularity runs is a plain attribute of each layer, ``granularity`` (an index into
``widths``; ``None`` = the largest, i.e. the universal model, which is the default). Set it for a
whole model with :func:`formers.nn.matformer.set_granularity` (a call that takes effect at once
and returns a context manager that restores the previous setting), or pass ``granularity=`` to
``forward`` when calling the layer directly. The setting persists across forward calls, so it
stays valid over every step of cached decoding. This replaces the references' hidden state:
``devvrit/matformer`` resets its ``current_subset_hd`` after every forward (so ``generate()``
needs a call before each step) and MatFormer-OLMo uses a global singleton.

Parameter names equal those of the dense ``mlp`` / ``swiglu`` parts (``up``, ``gate``, ``down``),
so the backbone initialises them alike and the largest granularity *is* the plain FFN; extraction
(:func:`formers.nn.matformer.extract`) copies prefix slices into an ordinary dense model.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.ffn.mlp import swiglu_hidden
from formers.nn.presets import preset
from formers.registry import Paper, register

PAPER = Paper("MatFormer: Nested Transformer for Elastic Inference", "2310.07707",
              "§3.1 (nested FFN), §3.3 (Mix'n'Match)")
ACTIVATIONS = ("gelu", "swiglu")
DENSE = {"gelu": "mlp", "swiglu": "swiglu"}
DEFAULT_GRANULARITIES = (0.125, 0.25, 0.5, 1.0)


def resolve_widths(granularities: Sequence[float | int], hidden: int) -> tuple[int, ...]:
    """Hidden widths m_1 < ... < m_g = hidden from fractions (floats in (0, 1], fraction of
    ``hidden``, rounded) or explicit widths (ints).

    Raises:
        ValueError: empty, a non-number, a fraction outside (0, 1] or rounding to 0, a width
        outside [1, hidden], not strictly increasing, or a largest width other than ``hidden``.
    """
    if isinstance(granularities, (str, bytes)) or not isinstance(granularities, Sequence) \
            or len(granularities) == 0:
        raise ValueError(f"matformer: granularities must be a non-empty list, got {granularities!r}")
    widths = []
    for g in granularities:
        if isinstance(g, bool) or not isinstance(g, (int, float)):
            raise ValueError(f"matformer: granularity {g!r} is neither a fraction (float) nor a width (int)")
        if isinstance(g, float):
            if not 0.0 < g <= 1.0:
                raise ValueError(f"matformer: fraction {g} must lie in (0, 1]")
            m = int(round(g * hidden))
            if m < 1:
                raise ValueError(f"matformer: fraction {g} of d_ff = {hidden} rounds to 0 units")
        else:
            m = g
            if not 1 <= m <= hidden:
                raise ValueError(f"matformer: width {m} must lie in [1, d_ff = {hidden}]")
        widths.append(m)
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"matformer: widths {widths} (from {list(granularities)}) must strictly increase")
    if widths[-1] != hidden:
        raise ValueError(
            f"matformer: the largest granularity must use all d_ff = {hidden} units, got "
            f"{widths[-1]} (from {list(granularities)}); otherwise the tail weights are never used")
    return tuple(widths)


@register(
    "ffn",
    "matformer",
    paper=PAPER,
    summary="MatFormer nested FFN: granularity i uses the first m_i hidden units (GELU or SwiGLU)",
)
class MatFormerFFN(nn.Module):
    """Nested FFN: x (batch, seq_len, d_model) -> (batch, seq_len, d_model) through the first
    ``widths[granularity]`` hidden units.

    Args:
        cfg: the model config (d_model, d_ff, bias).
        d_ff: the full hidden width m_g for this layer (default: ``cfg.d_ff``, else 4 d_model for
            GELU or the SwiGLU 8/3 rule rounded to 8, as the dense parts).
        activation: ``gelu`` (tanh approximation, as ``mlp``; MatFormer-OLMo) or ``swiglu``
            (as ``swiglu``; devvrit/matformer's Llama).
        granularities: fractions of d_ff (floats in (0, 1]) or widths (ints), strictly
            increasing, the last one the full width. Default (1/8, 1/4, 1/2, 1) as in the paper.
    Attributes:
        widths: the resolved hidden widths (m_1, ..., m_g).
        granularity: index into ``widths`` used by ``forward`` (None = the largest).
    Raises:
        ValueError: unknown activation or invalid granularities (see :func:`resolve_widths`).

    Paper: arXiv 2310.07707 §3.1. Deviation: none in the forward; the granularity is an explicit
    per-layer attribute instead of the references' reset-after-forward / global state.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None, activation: str = "gelu",
                 granularities: Sequence[float | int] = DEFAULT_GRANULARITIES) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"matformer: activation {activation!r} is not one of {list(ACTIVATIONS)}")
        if activation == "gelu":
            hidden = d_ff or cfg.ffn_hidden
        else:
            hidden = d_ff or cfg.d_ff or swiglu_hidden(cfg.d_model)
        if hidden <= 0:
            raise ValueError(f"matformer: d_ff must be > 0, got {hidden}")
        self.activation, self.hidden, self.d_model = activation, hidden, cfg.d_model
        self.widths = resolve_widths(list(granularities), hidden)
        self.granularity: int | None = None
        if activation == "swiglu":
            self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)

    @property
    def dense_name(self) -> str:
        """Registry name of the dense FFN an extracted layer becomes (``mlp`` or ``swiglu``)."""
        return DENSE[self.activation]

    def check_granularity(self, g: int | None) -> int:
        """The non-negative index of granularity ``g`` (None = largest; negative counts from the end).

        Raises:
            ValueError: ``g`` not an int or out of range.
        """
        n = len(self.widths)
        if g is None:
            return n - 1
        if isinstance(g, bool) or not isinstance(g, int) or not -n <= g < n:
            raise ValueError(f"matformer: granularity {g!r} must be an int index in [{-n}, {n}) "
                             f"for widths {list(self.widths)} (or None for the largest)")
        return g % n

    def width(self, g: int | None = None) -> int:
        """The hidden width m_i of granularity ``g`` (default: the current one)."""
        return self.widths[self.check_granularity(self.granularity if g is None else g)]

    def n_params(self, g: int | None = None) -> int:
        """Parameters of this layer at granularity ``g`` (what an extracted dense layer holds)."""
        m = self.width(g)
        mats = 3 if self.activation == "swiglu" else 2
        n = mats * m * self.d_model
        if self.down.bias is not None:
            n += (mats - 1) * m + self.d_model
        return n

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """The current granularity's slice: (2 or 3 for SwiGLU) x 2 d_model m_i n; MatFormer's
        speed should scale with m_i (:mod:`formers.nn.flops`)."""
        mats = 3 if self.activation == "swiglu" else 2
        return 2.0 * mats * self.d_model * self.width() * seq_len

    def forward(self, x: torch.Tensor, granularity: int | None = None) -> torch.Tensor:
        """x: (batch, seq_len, d_model). ``granularity`` overrides the layer's attribute for this call."""
        m = self.width(granularity)

        def rows(lin: nn.Linear) -> torch.Tensor:
            b = None if lin.bias is None else lin.bias[:m]
            return F.linear(x, lin.weight[:m], b)

        if self.activation == "swiglu":
            h = F.silu(rows(self.gate)) * rows(self.up)
        else:
            h = F.gelu(rows(self.up), approximate="tanh")
        return F.linear(h, self.down.weight[:, :m], self.down.bias)

    def extra_repr(self) -> str:
        return f"activation={self.activation}, widths={list(self.widths)}, granularity={self.granularity}"


@register(
    "ffn",
    "matformer-swiglu",
    paper=PAPER,
    summary="MatFormer nested SwiGLU FFN (gate and up rows sliced separately)",
)
class MatFormerSwiGLU(MatFormerFFN):
    """:class:`MatFormerFFN` with ``activation='swiglu'`` by default (devvrit/matformer's
    ``ModifiedLlamaMLP``: ``gate_proj[:k]``, ``up_proj[:k]``, ``down_proj[:, :k]``).

    x (batch, seq_len, d_model) -> (batch, seq_len, d_model). Paper: arXiv 2310.07707 §3.1.
    """

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None, activation: str = "swiglu",
                 granularities: Sequence[float | int] = DEFAULT_GRANULARITIES) -> None:
        super().__init__(cfg, d_ff=d_ff, activation=activation, granularities=granularities)


# ------------------------------------------------------------------------------------ presets
def _with_ffn(c: ModelConfig, name: str) -> ModelConfig:
    """``c`` with every layer's feed-forward set to ``name`` (options of the old FFN dropped)."""
    if c.layers is None:
        return c.replace(ffn=name)
    return c.replace(ffn=name, layers=[s.replace(ffn=name, ffn_options={}) for s in c.layers])


@preset("matformer", PAPER, "baseline with MatFormer nested GELU FFNs (granularities d_ff/8..d_ff)")
def matformer(c: ModelConfig) -> ModelConfig:
    return _with_ffn(c, "matformer")


@preset("matformer-swiglu", PAPER,
        "llama-style (RoPE, RMSNorm, no biases) with MatFormer nested SwiGLU FFNs")
def matformer_swiglu(c: ModelConfig) -> ModelConfig:
    return _with_ffn(c.replace(position="rope", norm="rmsnorm", bias=False, d_ff=None),
                     "matformer-swiglu")


__all__ = ["MatFormerFFN", "MatFormerSwiGLU", "resolve_widths"]
