"""Reformer LSH attention (Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer",
arXiv 2001.04451, §3 "Locality-sensitive hashing attention", Fig. 2, eq. 3-6).

Per head, with shared query-keys (one projection; keys are the unit-normalised queries):

1. **Hash** (angular LSH): h(x) = argmax([x R ; -x R]) with R in R^{d x b/2} a random Gaussian
   matrix, one per head and hash round (``n_hashes`` rounds, ``n_buckets`` = b buckets).
2. **Sort** the tokens by (bucket, position) and cut each bucket into chunks of ``chunk``
   consecutive members; every chunk attends to itself and to the previous chunk of the same bucket.
3. **Attend** softmax(q_i . k_j / sqrt(d)) over those keys, with q_i . k_i replaced by -1e5 (a
   token attends to itself only when nothing else is available), causally if the model is causal.
4. **Combine the rounds** with their log-sum-exps: o_i = sum_r exp(z_i^r - z_i) o_i^r,
   z_i = logsumexp_r z_i^r (eq. 6), i.e. one softmax over the multiset union of the rounds' keys.

Time O(n_hashes T (log T + chunk d)), memory O(n_hashes T chunk) per head.

Chunking (a named deviation): the paper sorts by bucket and cuts the *whole* sorted sequence into
chunks of m, so a chunk may straddle two buckets and attend across them, and which keys fall in a
query's chunk depends on how many tokens (including *later* ones) hash to lower buckets; causal
LSH attention as published therefore leaks future information through chunk boundaries. Here
chunk boundaries restart at each bucket and keys of other buckets are masked (the attend-within-
the-bucket rule that chunking approximates; Trax's ``attend_across_buckets=False``). A token's
chunk then depends only on the earlier tokens of its bucket, so the causal mode is strictly causal
and cached decoding equals the full forward. Padded tokens (``ctx.key_mask`` False) go to an extra
bucket of their own, so they never shift the chunks of real tokens.

Other deviations: the rotations are drawn once from ``seed`` (a persistent buffer, saved with the
model), not afresh at every step as in Trax; there is no duplicate-pair correction across rounds
(as in the paper's eq. 6 and HF; Trax optionally subtracts log counts); no attention dropout; no
ALiBi (``score_bias=False``: not offered, the scores are per chunk in sorted order); RoPE rotates
the shared query-keys before hashing. Reversible layers and chunked feed-forwards, the paper's
other parts, are not here. ``n_buckets=1`` (no hashing) is allowed: with ``chunk >= T`` it is full
shared-QK attention with the self-mask rule (the reduction the tests check).

KV cache: decoding caches the shared query-keys and values (``full`` policy) and recomputes the
LSH attention of the new tokens over the cached prefix (O(T log T) per step), which equals the full
forward because the causal mode is exact (see above).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import attention_flops, children_flops
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

PAPER = Paper("Reformer: The Efficient Transformer", "2001.04451",
              "§3 LSH attention: shared QK, angular LSH, sort and chunk, multi-round (eq. 3-6)")
SELF_SCORE = -1e5


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor | None) -> torch.Tensor:
    """Angular LSH buckets argmax([x R; -x R]).

    x: (batch, heads, T, d); rotations: (heads, d, n_hashes, n_buckets / 2), or None for one bucket.
    Returns (batch, heads, n_hashes, T) int64 in [0, n_buckets).
    """
    if rotations is None:
        return x.new_zeros((x.shape[0], x.shape[1], 1, x.shape[2]), dtype=torch.long)
    rot = torch.einsum("bhtd,hdrk->bhrtk", x, rotations.to(x.dtype))
    return torch.cat([rot, -rot], dim=-1).argmax(-1)


def bucket_chunks(buckets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Chunk index within the bucket: rank of each token among the earlier tokens of its bucket,
    integer-divided by ``chunk``. buckets: (..., T) -> (..., T) int64 (O(T * n_buckets))."""
    nb = int(buckets.max()) + 1 if buckets.numel() else 1
    onehot = torch.nn.functional.one_hot(buckets, nb)
    rank = (onehot.cumsum(-2) - onehot).gather(-1, buckets[..., None])[..., 0]
    return rank // chunk


def lsh_attention(qk: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, buckets: torch.Tensor,
                  chunk: int, causal: bool) -> torch.Tensor:
    """Chunked LSH attention (fast path). qk, v: (batch, heads, T, d) (shared query-keys, unnormalised);
    pos: (T,) absolute positions; buckets: (batch, heads, R, T), padded tokens in a bucket of their
    own (the largest id). Returns (batch, heads, T, d).

    Layout: per (batch, head, round) the tokens are sorted by (bucket, position) and laid out in
    slots, each bucket starting a new chunk, so a chunk holds one bucket only; chunk c attends to
    slot chunks c - 1 and c (masked to its own bucket). Costs are kept to the real work: when no
    bucket has more than ``chunk`` members the chunk length shrinks to the largest bucket (every
    token is then in chunk 0 of its bucket either way, so the result is the same), the number of
    slot chunks is the largest actual total, and the masks are built per chunk (bucket) and per
    slot pair (self) instead of per score.
    """
    b, h, t, d = qk.shape
    r = buckets.shape[2]
    acc = torch.promote_types(qk.dtype, torch.float32)
    g = b * h * r
    bk = buckets.reshape(g, t)
    dev = qk.device
    nb = int(bk.max()) + 1
    counts = torch.zeros(g, nb, dtype=torch.long, device=dev).scatter_add_(1, bk, torch.ones_like(bk))
    chunk = max(1, min(chunk, int(counts.max())))                        # same result, less padding
    # sort by (bucket, position); rank within the bucket; slot = bucket's first slot + rank
    order = torch.argsort(bk * t + torch.arange(t, device=dev), dim=-1)
    sb = bk.gather(1, order)
    start = counts.cumsum(1) - counts
    rank = torch.arange(t, device=dev) - start.gather(1, sb)
    n_chunks = (counts + chunk - 1) // chunk
    total = n_chunks.cumsum(1)
    slot_start = chunk * (total - n_chunks)
    slot = slot_start.gather(1, sb) + rank                               # (g, t) per sorted token
    nc = int(total[:, -1].max())                                         # slot chunks, all g
    length = nc * chunk
    # token at each slot (t = an empty slot, pointing at a dummy row appended below); one extra
    # chunk of dummies in front is the "previous chunk" of the first one
    tok = torch.full((g, chunk + length), t, dtype=torch.long, device=dev)
    tok.scatter_(1, slot + chunk, order)

    def slots(x: torch.Tensor, fill) -> torch.Tensor:  # x: (b, h, t, ...) -> (g, chunk + length, ...)
        x = x[:, :, None].expand(b, h, r, *x.shape[2:]).reshape(g, t, *x.shape[3:])
        x = torch.cat([x, torch.full_like(x[:, :1], fill)], 1)
        idx = tok.view(g, -1, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, idx)

    sq = slots(qk.to(acc), 0.0)                                          # (g, chunk+L, d)
    sv = slots(v.to(acc), 0.0)
    sbk = torch.cat([bk, torch.full_like(bk[:, :1], -1)], 1).gather(1, tok)
    q = sq[:, chunk:].reshape(g, nc, chunk, d) / math.sqrt(d)           # scale the small factor
    kn = sq / sq.norm(dim=-1, keepdim=True).clamp(min=1e-12)             # normalised keys

    def window(x: torch.Tensor) -> torch.Tensor:  # (g, chunk+L, ...) -> (g, nc, 2 chunk, ...)
        w = x.unfold(1, 2 * chunk, chunk)                                # window dim last
        return w.movedim(-1, 2) if x.dim() == 3 else w

    k, vv, kb = window(kn), window(sv), window(sbk)
    s = torch.einsum("gncd,gnkd->gnck", q, k)
    # a chunk holds one bucket: the bucket of its first slot (-1 for an all-empty chunk)
    qb = sbk[:, chunk:].reshape(g, nc, chunk)[..., :1]                   # (g, nc, 1)
    allowed = ((kb == qb) & (kb >= 0))[:, :, None, :]                    # (g, nc, 1, 2 chunk)
    if causal:
        sp = slots(pos.expand(b, h, t), -1)                              # (g, chunk+L)
        qp = sp[:, chunk:].reshape(g, nc, chunk)
        allowed = allowed & (window(sp)[..., None, :] <= qp[..., None])
    # query i of a chunk sits at window slot chunk + i: that pair is the token itself, always kept
    # (so no row is empty: an empty slot sees its empty self, a zero value, and is dropped). One
    # additive bias (no gradient) carries both masks: -1e5 on that pair, -inf where not allowed
    # (-inf, not the dtype's min: exp of huge negative finite numbers takes the slow underflow
    # path of the CPU exp kernel; both give exact zeros)
    own = torch.arange(chunk, device=dev)[:, None] + chunk == torch.arange(2 * chunk, device=dev)
    bias = torch.zeros(own.shape, dtype=acc, device=dev).masked_fill(own, SELF_SCORE)
    s = s + bias.masked_fill(~(allowed | own), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                     # (g, nc, chunk)
    out = torch.softmax(s, dim=-1) @ vv                                  # (g, nc, chunk, d)
    # back to token order: the slot of token i
    slot_of = torch.empty_like(slot).scatter_(1, order, slot)            # (g, t)
    out = out.reshape(g, length, d).gather(1, slot_of[..., None].expand(-1, -1, d))
    lse = lse.reshape(g, length).gather(1, slot_of)
    out, lse = out.view(b, h, r, t, d), lse.view(b, h, r, t)
    w = torch.softmax(lse, dim=2)                                        # eq. 6 over rounds
    return (w[..., None] * out).sum(2).to(v.dtype)


def lsh_reference(qk: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, buckets: torch.Tensor,
                  chunk: int, causal: bool, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense O(T^2) form of :func:`lsh_attention`, for tests: with N_ij the number of rounds in
    which key j is in query i's bucket and in its chunk or the previous one (chunks by rank within
    the bucket), o_i = sum_j N_ij exp(s_ij) v_j / sum_j N_ij exp(s_ij), s_ii = -1e5.
    Shapes as :func:`lsh_attention`; key_mask (batch, T) bool or None."""
    d = qk.shape[-1]
    k = qk / qk.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    s = qk @ k.transpose(-1, -2) / math.sqrt(d)                          # (b, h, t, t)
    eye = pos[:, None] == pos[None, :]
    s = s.masked_fill(eye, SELF_SCORE)
    ch = bucket_chunks(buckets, chunk)                                   # (b, h, r, t)
    same = buckets[..., :, None] == buckets[..., None, :]
    near = (ch[..., None, :] <= ch[..., :, None]) & (ch[..., None, :] >= ch[..., :, None] - 1)
    n = (same & near).sum(2).to(s.dtype)                                 # (b, h, t, t)
    if causal:
        n = n * (pos[None, :] <= pos[:, None]).to(s.dtype)
    if key_mask is not None:  # real queries never see padded keys (padded queries see each other)
        n = n * (key_mask[:, None, None, :] | ~key_mask[:, None, :, None]).to(s.dtype)
    logits = s + torch.log(n)                                            # -inf where N = 0
    return torch.softmax(logits, dim=-1) @ v


@register(
    "attention",
    "reformer",
    paper=PAPER,
    caps=Capabilities(kv_cache=True, score_bias=False,
                      backend="chunked LSH attention (explicit per-chunk softmax, no SDPA); dense reference"),
    summary="Reformer LSH attention: shared QK, angular LSH, bucket-sorted chunks, multi-round",
)
class ReformerAttention(nn.Module):
    """LSH attention with shared query-keys, then W_O (Kitaev et al., arXiv 2001.04451 §3).

    Shapes: x (batch, T, d_model) -> (batch, T, d_model); shared query-keys and values
    (batch, heads, T, d_h); rotations (heads, d_h, n_hashes, n_buckets / 2).

    Args:
        cfg: the model config (d_model, n_heads, n_kv_heads for the values, bias).
        n_buckets: b, even (argmax over [xR; -xR]) or 1 (no hashing); default 8.
        n_hashes: hash rounds (default 2). chunk: chunk length within a bucket (default 64).
        seed: seed of the random rotations (deterministic given it). backend: ``auto`` |
            ``reference`` (the dense O(T^2) form; ``sdpa`` is accepted and means the chunked path).
    Raises:
        ValueError: ``cross=True``, ``own_values=False`` or bad options.
    See the module docstring for the algorithm, the complexity and the deviations.
    """

    supports_value_residual = False

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, n_buckets: int = 8, n_hashes: int = 2, chunk: int = 64,
                 seed: int = 0) -> None:
        super().__init__()
        if cross:
            raise ValueError("reformer: cross-attention is not offered (LSH attention shares Q and K); "
                             "use 'softmax'")
        if not own_values:
            raise ValueError("reformer: own_values=False (SVFormer value sharing) is not supported")
        for name, val in (("n_buckets", n_buckets), ("n_hashes", n_hashes), ("chunk", chunk)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"reformer: {name} must be an int >= 1, got {val!r}")
        if n_buckets != 1 and n_buckets % 2:
            raise ValueError(f"reformer: n_buckets must be 1 or even (argmax over [xR; -xR]), got {n_buckets}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"reformer: seed must be an int, got {seed!r}")
        if backend not in ("auto", "sdpa", "reference"):
            raise ValueError(f"reformer: backend must be 'auto', 'sdpa' or 'reference', got {backend!r}")
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.n_buckets, self.n_hashes, self.chunk, self.seed = n_buckets, n_hashes, chunk, seed
        self.backend = backend
        d, hd = cfg.d_model, cfg.head_dim
        self.qk = nn.Linear(d, self.n_heads * hd, bias=cfg.bias)
        self.v = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.bias)
        self.o = nn.Linear(self.n_heads * hd, d, bias=cfg.bias)
        if n_buckets > 1:
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("rotations", torch.randn(self.n_heads, hd, n_hashes, n_buckets // 2,
                                                          generator=g))
        else:
            self.rotations = None

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """Projections; hashing (2 n d_h n_hashes n_buckets / 2 per head); per hash round every
        query scores 2 c keys (its chunk and the previous one, c = min(chunk, n)), masked keys
        included: the paper's count. The kernel's real work depends on the bucket sizes and is at
        least this (chunks shrink to the largest bucket; a bucket that does not fill its last chunk
        leaves padded slots, which are not counted)."""
        t, h, hd = seq_len, self.n_heads, self.head_dim
        hashing = 2.0 * t * hd * self.n_hashes * (self.n_buckets // 2) * h
        pairs = self.n_hashes * t * 2.0 * min(self.chunk, t)
        return children_flops(self, t, causal, square) + hashing + attention_flops(pairs, h, hd)

    def buckets(self, qk: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, heads, rounds, T) buckets; padded keys in bucket ``n_buckets``."""
        bk = lsh_hash(qk, self.rotations)
        if self.rotations is None and self.n_hashes > 1:
            bk = bk.expand(-1, -1, self.n_hashes, -1)
        if key_mask is not None:
            bk = bk.masked_fill(~key_mask[:, None, None, :], self.n_buckets)
        return bk

    def forward(self, x: torch.Tensor, ctx: Context, cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        qk = self.qk(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        pos = ctx.positions
        if ctx.position is not None:
            qk = ctx.position.rotate(qk, pos)
        if cache is not None:
            qk, v, pos = cache.update(qk, v, pos)
        if self.n_kv_heads != self.n_heads:
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        km = ctx.key_mask
        if km is not None and km.shape[-1] != qk.shape[-2]:
            raise ValueError(f"reformer: key_mask covers {km.shape[-1]} keys, the layer has {qk.shape[-2]}")
        bk = self.buckets(qk, km)
        if self.backend == "reference" or ctx.capture is not None:
            out = lsh_reference(qk, v, pos, bk, self.chunk, ctx.causal, km)
        else:
            out = lsh_attention(qk, v, pos, bk, self.chunk, ctx.causal)
        out = out[:, :, -t:]  # with a cache: the new tokens (causal, so the prefix is exact)
        if ctx.capture is not None:
            ctx.record("attn.qk", qk)
            ctx.record("attn.buckets", bk)
        return self.o(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


@preset("reformer", PAPER, "baseline with Reformer LSH attention (8 buckets, 2 rounds, chunk 64)")
def reformer(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "reformer")


__all__ = ["ReformerAttention", "bucket_chunks", "lsh_attention", "lsh_hash", "lsh_reference"]
