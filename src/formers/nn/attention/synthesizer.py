"""Synthesizer: attention weights without token-token dot products (Tay, Bahri, Metzler, Juan,
Zhao, Zheng, "Synthesizer: Rethinking Self-Attention in Transformer Models", arXiv 2005.00743,
§3.1 Dense Synthesizer, §3.2 Random Synthesizer, §3.3 factorised models).

Per head h, with G(X) = X W_V the values and l = ``cfg.max_seq_len``:

* **Dense** (``synthesizer-dense``): B_i = F_h(x_i) = W_2,h relu(W_1 x_i + b_1) + b_2,h in R^l,
  one row of logits per token computed from that token alone (no x_i . x_j); Y_h = softmax(B) G(X).
  W_1: d_model -> ``hidden`` is shared by the heads, W_2: hidden -> n_heads * l gives each head
  its own logits (the paper applies F per head and does not fix how the heads share W_1).
* **Random** (``synthesizer-random``): B = R_h in R^{l x l}, independent of the input; learned
  (default) or fixed (``trainable=False``: a random buffer drawn from ``seed``, kept in the saved
  model). Factorised random (``rank=r``): R_h = R1_h R2_h^T with R1, R2 in R^{l x r}.

Logit (i, j) of the l x l table is indexed by the *absolute* positions of query i and key j, so a
sequence of T <= l tokens uses the top-left T x T block, and cached decoding (the new token's row
against the cached keys' columns) equals the full forward.

Both run through the one attention core :func:`~formers.nn.attention.core.attend` (SDPA): the
synthetic logits are its additive ``bias`` and q = k = 0, so q k^T = 0 and the scores are exactly
the logits; causal masking, padding masks and ALiBi (added to the logits) are the core's. So both
variants can be causal: row i of a dense synthesizer depends only on x_i, and masking j > i leaves
Y_i a function of x_1..x_i. The cache holds values only (keys are empty, (batch, heads, T, 0)).

Deviations (named): RoPE has nothing to rotate (no queries or keys): a ``rope`` model runs but
the position signal comes from the logits' own position indexing (and, for dense, from the
token's embedding). The backbone initialises W_1, W_2 and a learned R from N(0, init_std); a
fixed R is N(0, 1) (the paper does not state its initialisation). The paper's factorised *dense*
variant and the mixtures with dot-product attention are not offered. GQA: values with fewer
heads are shared by the logit heads (the core repeats them).
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.attention.core import attend
from formers.nn.attention.softmax import self_attention_keys
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops, dense_pairs
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER_DENSE = Paper("Synthesizer: Rethinking Self-Attention in Transformer Models", "2005.00743",
                    "§3.1 Dense Synthesizer (eq. 1-2)")
PAPER_RANDOM = Paper("Synthesizer: Rethinking Self-Attention in Transformer Models", "2005.00743",
                     "§3.2 Random Synthesizer, §3.3 factorised random")
BACKEND = "sdpa with the synthetic logits as bias (q = k = 0); reference"


def synthesizer_reference(logits: torch.Tensor, v: torch.Tensor, causal: bool = False,
                          key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain softmax(logits + masks) v (no attention core), for tests.

    logits: (batch or 1, heads, T, T); v: (batch, heads, T, d); key_mask: (batch, T) bool.
    Returns (batch, heads, T, d).
    """
    s = logits.to(torch.float64) if v.dtype == torch.float64 else logits.float()
    t = v.shape[-2]
    allowed = torch.ones(t, t, dtype=torch.bool, device=v.device)
    if causal:
        allowed = torch.tril(allowed)
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(s, dim=-1) @ v.to(s.dtype)).to(v.dtype)


class _Synthesizer(nn.Module):
    """Shared plumbing: values, output projection, cache, masks; subclasses give the logits."""

    supports_value_residual = False
    static_cache = True  # keys through self_attention_keys (the static policy's mask as a bias)
    name = "synthesizer"

    def __init__(self, cfg: ModelConfig, cross: bool, backend: str, own_values: bool) -> None:
        super().__init__()
        if cross:
            raise ValueError(f"{self.name}: cross-attention is not offered (its logits are indexed by "
                             "positions of one sequence); use 'softmax'")
        if not own_values:
            raise ValueError(f"{self.name}: own_values=False (SVFormer value sharing) is not supported")
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.max_len, self.backend, self.dropout = cfg.max_seq_len, backend, cfg.dropout
        self.v = nn.Linear(cfg.d_model, self.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o = nn.Linear(self.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """V, O (and the dense synthesizer's F) projections on every token, the random
        synthesizer's factorised table R1 R2^T (2 n^2 rank per head), and the attention call: it
        runs SDPA with zero queries and keys of head_dim, so Q K^T is computed (and counted)
        beside P V: 2 x 2 x pairs x n_heads x head_dim, pairs as for dense attention."""
        t, h = seq_len, self.n_heads
        total = children_flops(self, t, causal, square)
        if getattr(self, "rank", None) is not None:
            total += 2.0 * t * t * self.rank * h
        return total + attention_flops(dense_pairs(t, t, causal, square), h, self.head_dim)

    def logits(self, x: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(batch or 1, heads, q_len, k_len) synthetic logits of the queries at ``q_pos``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        pos = ctx.positions
        if int(pos[-1]) >= self.max_len:
            raise ValueError(f"{self.name}: position {int(pos[-1])} is beyond max_seq_len = {self.max_len} "
                             "(the logits cover max_seq_len positions)")
        v = self.v(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        k = v[..., :0]  # no keys: the cache keeps values (and positions) only
        k, v, k_pos, pos_bias = self_attention_keys(k, v, pos, ctx, cache)
        bias = self.logits(x, pos, k_pos)
        if pos_bias is not None:
            bias = bias + pos_bias
        q0 = v.new_zeros(b, self.n_heads, t, self.head_dim)
        k0 = v.new_zeros(v.shape)
        capture = ctx.capture is not None
        out, w = attend(q0, k0, v, causal=ctx.causal, bias=bias, key_mask=ctx.key_mask,
                        dropout_p=self.dropout if self.training else 0.0,
                        backend="reference" if capture else self.backend, return_weights=capture)
        if capture:
            ctx.record("attn.logits", bias)
            ctx.record("attn.v", v)
            ctx.record("attn.weights", w)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


@register("attention", "synthesizer-dense", paper=PAPER_DENSE,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="Dense Synthesizer: a per-token MLP gives each token's attention logits")
class DenseSynthesizer(_Synthesizer):
    """Y_h = softmax(F_h(X) + mask) X W_V,h, then W_O; F_h(x) = W_2,h relu(W_1 x + b_1) + b_2,h.

    Shapes: x (batch, T, d_model) -> (batch, T, d_model), T <= max_seq_len = l; logits
    (batch, heads, T, T) (the columns of the keys' positions out of l). Time O(T * hidden * heads * l
    + T^2 d_model), memory O(T^2) per head (like softmax attention: the saving is the absent
    Q/K projections, not the n^2).

    Options: ``hidden`` (width of F's hidden layer, default d_model), ``backend``.
    Raises ValueError for ``cross=True``, ``own_values=False``, ``hidden < 1``, positions >= l.
    Paper: Tay et al., arXiv 2005.00743 §3.1; deviations in the module docstring.
    """

    name = "synthesizer-dense"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, hidden: int | None = None) -> None:
        super().__init__(cfg, cross, backend, own_values)
        hidden = cfg.d_model if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"synthesizer-dense: hidden must be an int >= 1, got {hidden!r}")
        self.hidden = hidden
        self.f1 = nn.Linear(cfg.d_model, hidden)
        self.f2 = nn.Linear(hidden, self.n_heads * self.max_len)

    def logits(self, x: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        full = self.f2(torch.relu(self.f1(x))).view(b, t, self.n_heads, self.max_len)
        return full[..., k_pos].transpose(1, 2)  # (batch, heads, t, k_len)


@register("attention", "synthesizer-random", paper=PAPER_RANDOM,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="Random Synthesizer: an input-independent (learned or fixed) l x l logit table per head")
class RandomSynthesizer(_Synthesizer):
    """Y_h = softmax(R_h[q_pos][:, k_pos] + mask) X W_V,h, then W_O; R_h in R^{l x l} per head.

    Shapes: x (batch, T, d_model) -> (batch, T, d_model), T <= max_seq_len = l; R: (heads, l, l)
    (or R1, R2: (heads, l, rank)). Time O(T^2 d_model), memory O(T^2) per head; parameters
    heads * l^2 (or 2 heads * l * rank).

    Options: ``trainable`` (True: R is learned; False: a fixed N(0, 1) table drawn from ``seed``),
    ``rank`` (None: full R; int r >= 1: factorised R1 R2^T), ``seed`` (0), ``backend``.
    Raises ValueError for ``cross=True``, ``own_values=False``, a bad ``rank`` or ``seed``.
    Paper: Tay et al., arXiv 2005.00743 §3.2-3.3; deviations in the module docstring.
    """

    name = "synthesizer-random"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, trainable: bool = True, rank: int | None = None,
                 seed: int = 0) -> None:
        super().__init__(cfg, cross, backend, own_values)
        if not isinstance(trainable, bool):
            raise ValueError(f"synthesizer-random: trainable must be a bool, got {trainable!r}")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"synthesizer-random: rank must be None (full l x l) or an int >= 1, got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"synthesizer-random: seed must be an int, got {seed!r}")
        self.trainable, self.rank, self.seed = trainable, rank, seed
        g = torch.Generator().manual_seed(seed)
        h, n = self.n_heads, self.max_len
        shapes = {"r": (h, n, n)} if rank is None else {"r1": (h, n, rank), "r2": (h, n, rank)}
        for nm, shape in shapes.items():
            t = torch.randn(shape, generator=g)
            if rank is not None:
                t = t / rank ** 0.25  # R1 R2^T entries ~ N(0, 1) as for the full table
            if trainable:
                setattr(self, nm, nn.Parameter(t))
            else:
                self.register_buffer(nm, t)

    def table(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(heads, q_len, k_len) logits R[:, q_pos][:, :, k_pos]."""
        if self.rank is None:
            return self.r[:, q_pos][:, :, k_pos]
        return self.r1[:, q_pos] @ self.r2[:, k_pos].transpose(-1, -2)

    def logits(self, x: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self.table(q_pos, k_pos).to(x.dtype)[None]



@preset("synthesizer-dense", PAPER_DENSE, "baseline with Dense Synthesizer attention")
def synthesizer_dense(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "synthesizer-dense")


@preset("synthesizer-random", PAPER_RANDOM, "baseline with (learned) Random Synthesizer attention")
def synthesizer_random(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "synthesizer-random")


__all__ = ["DenseSynthesizer", "RandomSynthesizer", "synthesizer_reference"]
