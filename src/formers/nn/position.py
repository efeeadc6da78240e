"""Position schemes: learned and sinusoidal (added to embeddings), RoPE (rotates q and k) and
ALiBi (a linear bias on attention scores). All share one interface so the backbone can treat
them alike:

- ``embed(positions)`` -> (seq_len, d_model) to add to token embeddings, or None;
- ``rotate(x, positions)`` -> x rotated (RoPE) or unchanged; x: (batch, heads, seq_len, head_dim);
- ``bias(q_pos, k_pos)`` -> (n_heads, q_len, k_len) additive score bias (ALiBi), or None.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.registry import Capabilities, Paper, register

VASWANI = Paper("Attention Is All You Need", "1706.03762", "§3.5")


class Position(nn.Module):
    """No position information (``position='none'``); the base of the other schemes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.max_seq_len = cfg.max_seq_len

    def embed(self, positions: torch.Tensor) -> torch.Tensor | None:
        return None

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        return None


register("position", "none")(Position)


@register("position", "learned", paper=VASWANI, summary="learned absolute embeddings (GPT-2)")
class LearnedPosition(Position):
    """A learned (max_seq_len, d_model) table added to the token embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.table = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        nn.init.normal_(self.table.weight, std=cfg.init_std)

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table(positions)


def sinusoid_table(n: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """(n, d) table PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(...) (Vaswani eq. §3.5)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return pe.float()


@register("position", "sinusoidal", paper=VASWANI, summary="fixed sinusoids added to embeddings")
class SinusoidalPosition(Position):
    """Fixed (max_seq_len, d_model) sin/cos table (:func:`sinusoid_table`) added to the embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("table", sinusoid_table(cfg.max_seq_len, cfg.d_model), persistent=False)

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        return self.table[positions]


@register(
    "position",
    "rope",
    paper=Paper("RoFormer: Enhanced Transformer with Rotary Position Embedding", "2104.09864", "eq. 34"),
    summary="rotary embeddings on q and k (half-split pairing)",
)
class RotaryPosition(Position):
    """RoPE: rotates each (x_i, x_{i+d/2}) pair of q and k by angle p * base^(-2i/d).

    Uses the half-split pairing (GPT-NeoX / Llama convention) rather than the paper's adjacent
    pairs; the two are the same rotation up to a fixed permutation of head dimensions.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        d = cfg.head_dim
        inv = cfg.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.arange(cfg.max_seq_len, dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", torch.cos(ang).float(), persistent=False)
        self.register_buffer("sin", torch.sin(ang).float(), persistent=False)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos = self.cos[positions].to(x.dtype)
        sin = self.sin[positions].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes of ALiBi: 2^(-8h/n) for a power-of-two n; otherwise the paper's rule of the
    closest power of two plus every other slope of the next one (Press et al., §3)."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(pow2(n_heads))
    m = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(pow2(m) + pow2(2 * m)[0::2][: n_heads - m])


@register(
    "position",
    "alibi",
    paper=Paper(
        "Train Short, Test Long: Attention with Linear Biases Enables Input Length Extrapolation",
        "2108.12409",
        "§3",
    ),
    summary="linear distance bias on attention scores",
)
class ALiBiPosition(Position):
    """ALiBi: score bias -m_h * |i - j| (for causal models only j <= i is ever seen)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("slopes", alibi_slopes(cfg.n_heads), persistent=False)

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = (q_pos[:, None] - k_pos[None, :]).abs().float()
        return -self.slopes[:, None, None] * dist


def build_position(cfg: ModelConfig) -> Position:
    from formers.registry import get

    return get("position", cfg.position).obj(cfg)
