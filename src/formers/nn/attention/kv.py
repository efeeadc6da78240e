"""Key-Value attention: attention without a query projection (Borji, "Key-Value Transformer",
arXiv 2305.19129).

Two token mixers are registered:

- ``kv``: **symmetric** KV attention. Per head, K = X W_K and V = X W_V; there is no W_Q. The
  scores S = K K^T / sqrt(head_dim) are symmetric (S = S^T before masking), A = softmax(S + mask),
  out = A V W_O. The attention projections have 3 d^2 weights instead of 4 d^2. It is computed by
  the one attention core :func:`~formers.nn.attention.core.attend` with ``q = k``, so the
  default path is SDPA.
- ``kv-pos``: **asymmetric** KV attention with the paper's 2-D "pair" positional encoding.
  P in R^{n x n x c} is the fixed sinusoidal encoding of the pair (i, j) of the
  ``positional_encodings`` package (``PositionalEncoding2D(c)``, c = 10 in the reference) and
  the scores become S'_ij = w^T (S_ij 1_c + P_ij) + b with learned w in R^c, b in R
  (``nn.Linear(c, 1)``). Expanding the product,

      S'_ij = (sum_c w_c) * S_ij + (w . P_ij + b),

  a learned temperature on S plus an additive (n, n) score bias. We compute exactly that: the
  temperature multiplies the queries (q = t * k, still one call of ``attend``/SDPA) and the bias
  B_ij = w . P_ij + b is built as an (n, n) tensor (per head: (n_heads, n, n)), never as the
  (n, n, c) pair tensor of the reference code.

  How B is built: in ``PositionalEncoding2D(c)`` the first c_r = ceil(c/4)*2 channels of P_ij are
  sinusoids of the row index i only and the remaining c - c_r channels sinusoids of the column
  index j only (sin and cos interleaved, inverse frequencies 10000^(-2k/c_r)). So
  B_ij = w_r . phi(i) + w_c . psi(j) + b with phi: (n, c_r), psi: (n, c - c_r). We keep phi and psi
  (O(n c) memory) and form B for the positions at hand (O(n^2)). Note what this implies (a fact
  about the paper's encoding, not a change to it): w_r . phi(i) + b is constant along a row of the
  score matrix, so softmax cancels it (its gradient is zero); the only positional signal that
  reaches the attention weights is the key-position term w_c . psi(j) plus the learned
  temperature. The scores are nevertheless asymmetric (S'_ij != S'_ji).

Deviations from the paper / reference code (``aliborji/kv-transformer@d9eafa5761ab``):

- Names: the reference's ``attn_type == 'kv'`` is the *positional* variant (its comment says
  "kv-nopos") and ``'kv-nopos'`` (GPT notebook) the symmetric one. Here ``kv`` is symmetric and
  ``kv-pos`` positional.
- The reference precomputes P for 200 x 200 pairs; we evaluate the same formula for any position
  below ``max_seq_len`` (identical values for i, j < 200).
- Scale 1/sqrt(head_dim) as in the encoder / ViT code; the GPT notebook divides by
  sqrt(n_embd) (a quirk of the tutorial it builds on), which we do not copy.
- ``pos_per_head=False`` (default) shares one ``Linear(c, 1)`` across heads as in the encoder and
  ViT code; ``pos_per_head=True`` gives each head its own, as in the GPT notebook.
- The causal / padding masks are applied after the positional mapping, as in the reference.
  A backbone position scheme still applies on top: RoPE rotates the keys (hence the queries,
  which are the keys), ALiBi adds its bias after the temperature (not scaled by sum(w)).
- Cached decoding: the queries of the new tokens are their own keys (after RoPE), the keys and
  values are the cache plus the new ones, and the pair bias is indexed by absolute positions, so
  cached decoding equals the full forward (the conformance suite checks it).
- Grouped-query attention is refused: with no W_Q the query heads *are* the key heads, so
  ``n_kv_heads`` must equal ``n_heads``.
- Initialisation of (w, b): Xavier-uniform w (bound sqrt(6 / (c + 1)), per head) and b = 0 as in
  the reference; K, V, O follow the backbone's GPT-2 initialisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from formers.nn.attention.core import attend
from formers.nn.attention.softmax import self_attention_keys
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops, dense_pairs
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Key-Value Transformer", "2305.19129", "§3 (KV attention, 2-D positional encoding)")


def pair_encoding_factors(n: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the 2-D pair encoding of ``PositionalEncoding2D(channels)``.

    P[i, j, :c_r] = phi(i) and P[i, j, c_r:] = psi(j), with c_r = ceil(channels / 4) * 2,
    phi(i) = (sin(i f_0), cos(i f_0), sin(i f_1), cos(i f_1), ...), f_k = 10000^(-2k / c_r), and
    psi the same sinusoids of j truncated to ``channels - c_r`` entries.

    Returns:
        (phi, psi): float32 tensors of shapes (n, c_r') and (n, channels - c_r') where
        c_r' = min(c_r, channels).
    Raises:
        ValueError: ``n`` or ``channels`` not positive.
    """
    if n <= 0 or channels <= 0:
        raise ValueError(f"pair_encoding_factors: n and channels must be > 0, got {n}, {channels}")
    inner = int(np.ceil(channels / 4) * 2)
    inv = 1.0 / (10000.0 ** (torch.arange(0, inner, 2, dtype=torch.float64) / inner))
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)  # (n, inner), interleaved
    n_row = min(inner, channels)
    return emb[:, :n_row].float(), emb[:, : channels - n_row].float()


def pair_encoding(n: int, channels: int) -> torch.Tensor:
    """The full (n, n, channels) pair tensor P (for tests and inspection only: O(n^2 c) memory)."""
    phi, psi = pair_encoding_factors(n, channels)
    return torch.cat(
        [phi[:, None, :].expand(n, n, -1), psi[None, :, :].expand(n, n, -1)], dim=-1
    )


@register(
    "attention",
    "kv",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, backend="sdpa with q = k (flash / mem-efficient / math); reference"),
    summary="symmetric Key-Value attention: no W_Q, scores K K^T (Borji)",
)
class KVAttention(nn.Module):
    """Key-Value attention: softmax(K K^T / sqrt(head_dim) [* t + B] + mask) V, then W_O.

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); internally
    k, v: (batch, n_heads, seq_len, head_dim); the pair bias B: (1 or n_heads, q_len, k_len).

    Args:
        cfg: the model config (d_model, n_heads, bias, dropout, max_seq_len).
        pos2d: add the paper's 2-D pair positional encoding (the ``kv-pos`` variant; see the
            module docstring for the exact formula and its reduction to temperature + bias).
        pos_channels: c, the channels of the pair encoding (10 in the reference).
        pos_per_head: one ``Linear(c, 1)`` per head (GPT notebook) instead of one shared.
        backend: ``auto`` | ``sdpa`` | ``reference`` (see :func:`attend`).
        own_values: False for an SVFormer layer without W_V (set by the backbone for
            ``value_residual='shared'``); value residual is supported like in softmax attention.
    Raises:
        ValueError: ``n_kv_heads != n_heads`` (no separate query heads), ``pos_channels < 1``.

    Paper: Borji, "Key-Value Transformer", arXiv 2305.19129, §3; deviations in the module docstring.
    """

    supports_value_residual = True
    static_cache = True  # keys through self_attention_keys (the static policy's mask as a bias)

    def __init__(self, cfg: ModelConfig, pos2d: bool = False, pos_channels: int = 10,
                 pos_per_head: bool = False, backend: str = "auto", own_values: bool = True) -> None:
        super().__init__()
        if cfg.kv_heads != cfg.n_heads:
            raise ValueError(
                f"KV attention has no query projection, so its query heads are its key heads: "
                f"n_kv_heads = {cfg.n_kv_heads} must be None or equal n_heads = {cfg.n_heads}")
        if not isinstance(pos_channels, int) or pos_channels < 1:
            raise ValueError(f"KV attention: pos_channels must be an int >= 1, got {pos_channels!r}")
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.backend, self.dropout = backend, cfg.dropout
        self.pos2d, self.pos_channels, self.pos_per_head = bool(pos2d), pos_channels, bool(pos_per_head)
        d = cfg.d_model
        self.k = nn.Linear(d, d, bias=cfg.bias)
        self.v = nn.Linear(d, d, bias=cfg.bias) if own_values else None
        self.o = nn.Linear(d, d, bias=cfg.bias)
        if self.pos2d:
            n_maps = self.n_heads if self.pos_per_head else 1
            phi, psi = pair_encoding_factors(cfg.max_seq_len, pos_channels)
            self.register_buffer("pos_row", phi, persistent=False)   # (max_seq_len, c_r)
            self.register_buffer("pos_col", psi, persistent=False)   # (max_seq_len, c - c_r)
            # Linear(c, 1) per map, stored flat (n_maps * c,) so that the backbone's GPT-2 init
            # (which re-draws every >= 2-D weight) keeps the reference's Xavier init.
            bound = math.sqrt(6.0 / (pos_channels + 1))
            self.pos_weight = nn.Parameter(torch.empty(n_maps * pos_channels).uniform_(-bound, bound))
            self.pos_bias = nn.Parameter(torch.zeros(n_maps))

    # ----------------------------------------------------------------- positional (kv-pos) parts
    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """K, V, O projections, dense attention with q = k (n^2 pairs, or n (n + 1) / 2 causal
        without ``square``) and, for ``kv-pos``, the two factors of the pair bias (2 n c per map)."""
        t = seq_len
        total = children_flops(self, t, causal, square)
        total += attention_flops(dense_pairs(t, t, causal, square), self.n_heads, self.head_dim)
        if self.pos2d:
            total += 2.0 * t * self.pos_channels * self._pos_w().shape[0]  # row + column factors
        return total

    def _pos_w(self) -> torch.Tensor:
        return self.pos_weight.view(-1, self.pos_channels)  # (n_maps, c)

    def temperature(self) -> torch.Tensor:
        """sum_c w_c per map: (n_maps,), the factor that multiplies S in S'."""
        return self._pos_w().sum(-1)

    def pair_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """B_ij = w . P[q_pos_i, k_pos_j] + b: (n_maps, q_len, k_len), built without P."""
        w = self._pos_w()
        n_row = self.pos_row.shape[1]
        row = self.pos_row[q_pos] @ w[:, :n_row].T                     # (q_len, n_maps)
        col = self.pos_col[k_pos] @ w[:, n_row:].T                     # (k_len, n_maps)
        return row.T[:, :, None] + col.T[:, None, :] + self.pos_bias[:, None, None]

    # ------------------------------------------------------------------------------- forward
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        k = self._heads(self.k(x))
        v = self._heads(self.v(x)) if self.v is not None else None
        pos = ctx.positions
        if ctx.position is not None:
            k = ctx.position.rotate(k, pos)
        q = k  # the queries are the tokens' own keys (no W_Q)
        if self.pos2d:
            q = k * self.temperature().to(k.dtype)[None, :, None, None]
        k, v, k_pos, bias = self_attention_keys(k, v, pos, ctx, cache)
        if self.pos2d:
            pb = self.pair_bias(pos, k_pos)
            bias = pb if bias is None else bias + pb
        capture = ctx.capture is not None
        out, w = attend(
            q, k, v, causal=ctx.causal, bias=bias, key_mask=ctx.key_mask,
            dropout_p=self.dropout if self.training else 0.0,
            backend="reference" if capture else self.backend, return_weights=capture,
        )
        if capture:
            ctx.record("attn.q", q)
            ctx.record("attn.k", k)
            ctx.record("attn.v", v)
            ctx.record("attn.weights", w)
            if self.pos2d:
                ctx.record("attn.pair_bias", bias)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


@register(
    "attention",
    "kv-pos",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, backend="sdpa with q = t*k and an (n, n) pair bias; reference"),
    summary="Key-Value attention with the paper's 2-D pair positional encoding (asymmetric)",
)
class KVPosAttention(KVAttention):
    """Asymmetric KV attention: S'_ij = (sum w) S_ij + w . P_ij + b (the reference's ``'kv'``).

    Same shapes and options as :class:`KVAttention` with ``pos2d=True``:
    x (batch, seq_len, d_model) -> (batch, seq_len, d_model). Options: ``pos_channels`` (c = 10),
    ``pos_per_head`` (False: one map shared by the heads), ``backend``.
    Paper: Borji, arXiv 2305.19129, §3 and ``Reverse_sort_pos.py`` (``MultiheadAttention_KV``).
    """

    def __init__(self, cfg: ModelConfig, pos_channels: int = 10, pos_per_head: bool = False,
                 backend: str = "auto", own_values: bool = True) -> None:
        super().__init__(cfg, pos2d=True, pos_channels=pos_channels, pos_per_head=pos_per_head,
                         backend=backend, own_values=own_values)


# ------------------------------------------------------------------------------------ presets

@preset("kv-attention", Paper("Key-Value Transformer", "2305.19129", "§3, kv-nopos"),
        "baseline with symmetric Key-Value attention (no W_Q)")
def kv_attention(c: ModelConfig) -> ModelConfig:
    return with_attention(c.replace(n_kv_heads=None), "kv")


@preset("kv-attention-pos", Paper("Key-Value Transformer", "2305.19129", "§3, 2-D positional encoding"),
        "baseline with Key-Value attention and the 2-D pair positional encoding")
def kv_attention_pos(c: ModelConfig) -> ModelConfig:
    return with_attention(c.replace(n_kv_heads=None), "kv-pos")
