"""Linformer: self-attention with linear complexity (Wang, Li, Khabsa, Fang, Ma, arXiv 2006.04768,
§4 eq. 7; also the Linformer chapter of Cahyawijaya's Greenformers thesis, arXiv 2108.10808).

Per head, the keys and values are projected *along the sequence* to k rows before attention:

    head = softmax(Q (E K)^T / sqrt(d_h)) (F V),    E, F in R^{k x n},

so the score matrix is (n, k) instead of (n, n): time O(n k d), memory O(n k) per head. n is a
fixed maximum length (``cfg.max_seq_len``). The attention itself (Q against the k projected
keys) runs through the one attention core :func:`~formers.nn.attention.core.attend` (SDPA).

Options:

* ``k`` (int >= 1, default ``max(1, max_seq_len // 4)``, the xformers default; the paper sweeps
  k in {64, 128, 256}): the projected length.
* ``sharing`` (paper §4 "Parameter sharing"): ``none`` (every head has its own E_h, F_h),
  ``headwise`` (one E and one F per layer, shared by the heads; default, as in xformers) or
  ``key-value`` (one matrix E = F per layer, shared by the heads and by keys and values).
  The paper's fourth level, ``layerwise`` (one E for all layers), would couple layers' parameters
  and is not offered (a clear ValueError says so).

Shorter inputs (T < n) use the first T columns E[:, :T], F[:, :T]. This is exactly what the
reference (xformers ``linformer.py``) computes by zero-padding the input to n, since zero rows
of K, V contribute nothing to E K, F V.

Padding: keys and values at masked positions (``ctx.key_mask`` False) are set to zero before the
projection, so the outputs at real positions do not depend on what the padded tokens are (they do
depend on how many columns of E are used; Linformer has no exact notion of padding, the reference
has no mask support at all).

Not causal: E mixes every position, including future ones (capability ``causal=False``; the
backbone refuses it in decoder layers). No KV cache, and no ALiBi (``score_bias=False``: the scores
are against k projected slots, not positions). RoPE is applied to Q and K before the projection
(allowed, but the relative-position property of RoPE does not survive E).

Initialisation: E, F ~ U(-1/sqrt(n), 1/sqrt(n)) (PyTorch's default for ``nn.Linear(n, k)``, as in
the reference); the backbone's N(0, init_std) does not apply to them.

GQA: keys and values with fewer heads are repeated to the query heads before the projection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from formers.nn.attention.core import attend
from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Linformer: Self-Attention with Linear Complexity", "2006.04768",
              "§4 eq. 7 (E, F projections along the sequence), parameter sharing")
SHARING = ("none", "headwise", "key-value")


def linformer_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, e: torch.Tensor,
                        f: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain Linformer attention (explicit softmax, no attention core), for tests.

    q, k, v: (batch, heads, T, d); e, f: (1 or heads, k, >= T) (the first T columns are used);
    key_mask: (batch, T) bool or None (masked keys/values are zeroed before the projection).
    Returns (batch, heads, T, d).
    """
    t = k.shape[-2]
    if key_mask is not None:
        keep = key_mask[:, None, :, None].to(k.dtype)
        k, v = k * keep, v * keep
    kp = torch.einsum("hkn,bhnd->bhkd", e[:, :, :t].to(k.dtype), k)
    vp = torch.einsum("hkn,bhnd->bhkd", f[:, :, :t].to(v.dtype), v)
    s = q @ kp.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ vp


class LinformerProjections(nn.Module):
    """The sequence projections: ``e`` (n_proj, k, n) and ``f`` (the same tensor when shared)."""

    def __init__(self, n_proj: int, k: int, n: int, share_kv: bool) -> None:
        super().__init__()
        self.n, self.share_kv = n, share_kv
        self.e = nn.Parameter(torch.empty(n_proj, k, n))
        self.f = None if share_kv else nn.Parameter(torch.empty(n_proj, k, n))
        self.init_like_dense(0.0)

    def init_like_dense(self, std: float) -> None:
        """Called by the backbone after its N(0, std) init: E, F ~ U(-1/sqrt(n), 1/sqrt(n))."""
        bound = 1.0 / math.sqrt(self.n)
        with torch.no_grad():
            for p in (self.e, self.f):
                if p is not None:
                    p.uniform_(-bound, bound)

    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.e, (self.e if self.f is None else self.f)


@register(
    "attention",
    "linformer",
    paper=PAPER,
    caps=Capabilities(causal=False, bidirectional=True, kv_cache=False, score_bias=False,
                      backend="sdpa over k projected keys (flash / mem-efficient / math); reference"),
    summary="Linformer: keys and values projected along the sequence to k rows (non-causal)",
)
class LinformerAttention(SoftmaxAttention):
    """softmax(Q (E K)^T / sqrt(d_h)) (F V) per head, then W_O (Wang et al., arXiv 2006.04768 §4).

    Shapes: x (batch, T, d_model) -> (batch, T, d_model), T <= max_seq_len = n; internally
    q: (batch, heads, T, d_h), E K and F V: (batch, heads, k, d_h); E, F: (1 or heads, k, n).
    Time O(T k d_model), memory O(T k) per head (plus O(k n) parameters).

    Args:
        cfg: the model config (d_model, n_heads, max_seq_len = n, dropout).
        k: projected length (default max_seq_len // 4). sharing: ``none`` | ``headwise`` |
            ``key-value`` (see the module docstring). backend: ``auto`` | ``sdpa`` | ``reference``.
    Raises:
        ValueError: ``cross=True``, ``own_values=False``, a bad ``k`` or ``sharing``; at forward,
            a causal context or an input longer than max_seq_len.
    """

    supports_value_residual = False

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, k: int | None = None, sharing: str = "headwise") -> None:
        if cross:
            raise ValueError("linformer: cross-attention is not offered (E is tied to the self-attention "
                             "length); use 'softmax' for cross-attention")
        if not own_values:
            raise ValueError("linformer: own_values=False (SVFormer value sharing) is not supported")
        super().__init__(cfg, cross=False, backend=backend, own_values=True)
        n = cfg.max_seq_len
        k = max(1, n // 4) if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"linformer: k must be an int >= 1 (the projected length), got {k!r}")
        if sharing == "layerwise":
            raise ValueError("linformer: sharing='layerwise' (one E for every layer) is not offered; "
                             f"allowed: {list(SHARING)}")
        if sharing not in SHARING:
            raise ValueError(f"linformer: sharing must be one of {list(SHARING)}, got {sharing!r}")
        self.k_proj, self.sharing, self.max_len = k, sharing, n
        self.proj = LinformerProjections(self.n_heads if sharing == "none" else 1, k, n,
                                         share_kv=sharing == "key-value")

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Projections + E K and F V (2 x 2 x k n d_model) + scores against the k projected rows
        (2 x 2 x n k d_model): linear in n (:mod:`formers.nn.flops`)."""
        t, k, hd = seq_len, self.k_proj, self.head_dim
        seq_proj = 2 * (2.0 * k * t * hd * self.n_heads)
        return children_flops(self, t, causal, square) + seq_proj + attention_flops(t * k, self.n_heads, hd)

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        if ctx.causal:
            raise ValueError("linformer is not causal (E mixes future positions); use it in encoder layers")
        if cache is not None:
            raise ValueError("linformer has no KV cache (it is not causal)")
        if t > self.max_len:
            raise ValueError(f"linformer: sequence length {t} exceeds max_seq_len = {self.max_len} "
                             f"(E, F have n = max_seq_len columns)")
        q, k, v = self.self_qkv(x, ctx)
        if ctx.key_mask is not None:
            keep = ctx.key_mask[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        e, f = self.proj.pair()
        kp = torch.einsum("hkn,bhnd->bhkd", e[:, :, :t].to(k.dtype), k)
        vp = torch.einsum("hkn,bhnd->bhkd", f[:, :, :t].to(v.dtype), v)
        capture = ctx.capture is not None
        out, w = attend(q, kp, vp, dropout_p=self.dropout if self.training else 0.0,
                        backend="reference" if capture else self.backend, return_weights=capture)
        if capture:
            ctx.record("attn.q", q)
            ctx.record("attn.k_projected", kp)
            ctx.record("attn.v_projected", vp)
            ctx.record("attn.weights", w)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))



@preset("linformer", PAPER, "baseline with Linformer attention (k = max_seq_len/4, headwise E, F); "
        "encoders only (not causal)")
def linformer(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "linformer")


__all__ = ["LinformerAttention", "LinformerProjections", "linformer_reference"]
