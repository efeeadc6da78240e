"""Fixed sparse attention patterns (Tay et al., "Efficient Transformers: A Survey", arXiv 2009.06732,
§3 "fixed patterns" and "combinations") as softmax attention with a position pattern.

Every mixer here is :class:`~formers.nn.attention.softmax.SoftmaxAttention` (same projections,
RoPE / ALiBi, GQA, value residual, KV cache) whose :func:`~formers.nn.attention.core.attend` call
carries a *pattern*: a function ``pattern(q_pos, k_pos) -> bool`` of absolute positions, True
where the query may attend to the key. The attention core turns it into a FlexAttention block
mask on CUDA (blocks the pattern empties are skipped) and a dense boolean mask for SDPA elsewhere.
The pattern is applied on top of the causal mask in a decoder, so each pattern below is written
for both directions and the causal mask cuts it to the past. Because it is a function of absolute
positions, a cache that evicts keys keeps it right; mixers whose pattern reaches back a bounded
distance define ``cache_reach(attention_options) -> (sinks, window)`` so that the ``window`` and
``sink-window`` cache policies (O(window) memory) are accepted for them.

Patterns (n = sequence length, d = q - k for query position q and key position k):

=================  ===================================================  ==========================
mixer              may attend when                                      keys per query (causal)
=================  ===================================================  ==========================
``local``          |d| < window                                         min(q+1, window)
``longformer``     |d| <= (window-1)*dilation and d % dilation == 0,    O(window + n_global)
                   or q < n_global or k < n_global
``bigbird``        block distance <= window_blocks, or either block is  O((2w+1+g+r) * block)
                   global (the first global_blocks), or the key block
                   is one of the query block's random_blocks random ones
``sparse-strided`` |d| <= stride or d % stride == 0 (Child et al. eq.   O(stride + n/stride)
                   "strided", A1 union A2)
``sparse-fixed``   q // stride == k // stride or k % stride >= stride-c  O(stride + c*n/stride)
                   (Child et al. "fixed", A1 union A2)
``block-sparse``   q // block == k // block (MASFormer's sparse layer)  <= block
=================  ===================================================  ==========================

Time and memory: the scores cost O(n * keys-per-query * head_dim) on the flex path (whole
128x128 tiles, so a pattern sparser than a tile still pays for the tiles it touches) and O(n^2)
on the dense-mask SDPA path (the mask is dense; the kernel does not skip masked entries). The
reference path materialises the (n, n) scores.

Self-attention only (``cross=True`` raises: a pattern over the encoder memory's positions would
mean something else).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from formers.nn.attention.softmax import SoftmaxAttention
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.flops import pattern_pairs
from formers.nn.presets import preset, with_attention
from formers.registry import Capabilities, Paper, register

BACKEND = "flex block mask on CUDA; sdpa dense mask otherwise; reference"
SURVEY = "Efficient Transformers: A Survey (Tay et al.)"
CHILD = Paper("Generating Long Sequences with Sparse Transformers", "1904.10509", "§4.2-4.3, Fig. 3")
LONGFORMER = Paper("Longformer: The Long-Document Transformer", "2004.05150", "§3.1, Fig. 2")
BIGBIRD = Paper("Big Bird: Transformers for Longer Sequences", "2007.14062", "§2, Fig. 1; App. D (blocks)")
MASFORMER = Paper("You Need to Attend More, but Not Necessarily at Every Layer (MASFormer)", "2310.12442",
                  "§3, Fig. 1a (block-sparse)")
LOCAL = Paper("Image Transformer (local 1D attention); Longformer sliding window", "1802.05751",
              "§3.2; Longformer arXiv 2004.05150 §3.1")


# ------------------------------------------------------------------------------------ patterns
# Patterns are frozen dataclasses: hashable by their parameters (the core caches block masks per
# pattern) and written with element-wise tensor ops only, so the same code runs on a broadcast
# (q_len, 1) x (1, k_len) grid (dense mask) and on scalar indices inside flex's mask_mod.
@dataclass(frozen=True)
class LocalPattern:
    """|q - k| < window (with the causal mask: the last ``window`` keys, the query's own included)."""

    window: int

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        return (qp - kp).abs() < self.window


@dataclass(frozen=True)
class LongformerPattern:
    """Dilated sliding window plus global positions 0 .. n_global-1 (attend and attended everywhere)."""

    window: int
    n_global: int
    dilation: int = 1

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        d = qp - kp
        local = (d.abs() <= (self.window - 1) * self.dilation) & (d % self.dilation == 0)
        return local | (qp < self.n_global) | (kp < self.n_global)


@dataclass(frozen=True)
class BlockPattern:
    """q // block == k // block: attention only within non-overlapping blocks."""

    block: int

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        return qp // self.block == kp // self.block


@dataclass(frozen=True)
class StridedPattern:
    """Child et al.'s strided pattern, A1 | A2 with A1 = {|q-k| <= l}, A2 = {(q-k) mod l = 0}."""

    stride: int

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        d = qp - kp
        return (d.abs() <= self.stride) | (d % self.stride == 0)


@dataclass(frozen=True)
class FixedPattern:
    """Child et al.'s fixed pattern, A1 | A2 with A1 = {floor(k/l) = floor(q/l)},
    A2 = {k mod l in {l-c, ..., l-1}} (the last c positions of every block are summary columns)."""

    stride: int
    c: int

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        return (qp // self.stride == kp // self.stride) | (kp % self.stride >= self.stride - self.c)


def bigbird_random_blocks(seed: int, q_block: int, candidates: list[int], r: int) -> list[int]:
    """The random key blocks of one query block: ``r`` of ``candidates`` (all of them if fewer),
    chosen by a generator seeded with (seed, q_block) only, so the choice is the same for every
    sequence length, chunk and cache (a deterministic function of seed, query block, key block)."""
    if r <= 0 or not candidates:
        return []
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(q_block))
    perm = torch.randperm(len(candidates), generator=g)[: min(r, len(candidates))]
    return sorted(candidates[i] for i in perm.tolist())


@dataclass(frozen=True)
class BigBirdPattern:
    """Blocked BigBird: window of ``window_blocks`` blocks on each side, the first ``global_blocks``
    blocks global (attend and attended everywhere), ``random_blocks`` random key blocks per query
    block. ``causal``: random blocks are drawn only from earlier blocks (so none is wasted on keys
    the causal mask hides). ``n_blocks``: table size (positions < n_blocks * block)."""

    block: int
    window_blocks: int
    global_blocks: int
    random_blocks: int
    seed: int
    causal: bool
    n_blocks: int
    _tables: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        t = torch.zeros(self.n_blocks, self.n_blocks, dtype=torch.bool)
        for qb in range(self.n_blocks):
            for kb in bigbird_random_blocks(self.seed, qb, self.candidates(qb), self.random_blocks):
                t[qb, kb] = True
        self._tables["cpu"] = t

    def prepare(self, device: torch.device | str) -> None:
        """Copy the random table to ``device`` (once), outside any traced code."""
        self.random_table(device)

    def candidates(self, qb: int) -> list[int]:
        """Key blocks not already covered by the window or the globals (earlier ones if causal)."""
        hi = qb if self.causal else self.n_blocks
        return [kb for kb in range(self.global_blocks, hi) if abs(qb - kb) > self.window_blocks]

    def random_table(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n_blocks, n_blocks) bool: R[qb, kb] = kb is one of qb's random blocks."""
        key = str(device)
        if key not in self._tables:
            self._tables[key] = self._tables["cpu"].to(device)
        return self._tables[key]

    def __call__(self, qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
        qb, kb = qp // self.block, kp // self.block
        ok = ((qb - kb).abs() <= self.window_blocks) | (qb < self.global_blocks) | (kb < self.global_blocks)
        if self.random_blocks > 0:
            ok = ok | self.random_table(qp.device)[qb, kb]
        return ok


def pattern_matrix(pattern: Callable, n: int, causal: bool) -> torch.Tensor:
    """(n, n) bool matrix of ``pattern`` over positions 0..n-1 (and the causal mask if asked)."""
    p = torch.arange(n)
    m = pattern(p[:, None], p[None, :]).expand(n, n)
    return m & (p[None, :] <= p[:, None]) if causal else m


# ------------------------------------------------------------------------------- option checks
def _int(mixer: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"attention {mixer!r}: {name} must be an int >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------------- mixer base
class PatternAttention(SoftmaxAttention):
    """Softmax self-attention restricted by a position pattern (subclasses give ``make_pattern``).

    Shapes: x (batch, seq_len, d_model) -> (batch, seq_len, d_model); the pattern is evaluated on
    the absolute positions of the queries (``ctx.positions``) and of the keys (the cache's).
    """

    name = "pattern"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True) -> None:
        if cross:
            raise ValueError(f"attention {self.name!r}: cross-attention is not offered (a position "
                             "pattern over the encoder memory means something else); use 'softmax'")
        super().__init__(cfg, cross=False, backend=backend, own_values=own_values)
        self.max_seq_len = cfg.max_seq_len

    # True when an encoder's pattern depends on the sequence length (BigBird's random blocks)
    length_dependent = False

    def make_pattern(self, causal: bool, length: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def pattern(self, causal: bool, length: int | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The (hashable, cached) pattern object for a decoder (causal) or an encoder of ``length``
        positions (used only where ``length_dependent`` and not causal)."""
        length = self.max_seq_len if causal or not self.length_dependent or length is None else length
        cache = self.__dict__.setdefault("_patterns", {})
        if (causal, length) not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[(causal, length)] = self.make_pattern(causal, length)
        return cache[(causal, length)]

    def score_pairs(self, seq_len: int, causal: bool, square: bool) -> float:
        """The (query, key) pairs the pattern allows over ``seq_len`` positions (key <= query when
        causal), whatever ``square``: a block-sparse kernel computes only these (FlexAttention
        rounds them up to its 128 x 128 blocks; that padding is not counted)."""
        return pattern_pairs(self.pattern(causal, seq_len), seq_len, causal)

    def attention_pattern(self, ctx: Context, k_len: int):
        pattern = self.pattern(ctx.causal, k_len)
        if hasattr(pattern, "prepare"):
            pattern.prepare(ctx.positions.device)
        return pattern


# -------------------------------------------------------------------------------------- mixers
@register("attention", "local", paper=LOCAL,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="sliding-window softmax attention: each query sees keys with |q - k| < window")
class LocalAttention(PatternAttention):
    """Local / sliding-window attention (Image Transformer local 1D, arXiv 1802.05751 §3.2;
    Longformer's sliding window, arXiv 2004.05150 §3.1; survey arXiv 2009.06732 §3.1.1).

    Query q attends to keys k with |q - k| < ``window``: in a decoder (with the causal mask) the
    last ``window`` keys, itself included; in an encoder window - 1 keys on each side.
    Cost O(n * window * head_dim) on the flex path. With window >= n it is full attention.

    Options: ``window`` (int >= 1, default 64). ``cache_reach`` = (0, window): a ``window`` cache
    of ``window`` keys decodes exactly.
    Deviation: Image Transformer's query blocks / memory blocks are replaced by the exact
    per-token window (the block form is ``block-sparse`` plus neighbours).
    """

    name = "local"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, window: int = 64) -> None:
        self.window = _int("local", "window", window, 1)
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> LocalPattern:
        return LocalPattern(self.window)

    @staticmethod
    def cache_reach(options: dict) -> tuple[int, int]:
        return 0, _int("local", "window", options.get("window", 64), 1)


@register("attention", "longformer", paper=LONGFORMER,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="Longformer: (dilated) sliding window + global positions attending everywhere")
class LongformerAttention(PatternAttention):
    """Longformer attention (Beltagy, Peters, Cohan, arXiv 2004.05150, §3.1, Fig. 2b-d).

    A sliding window (|q - k| <= (window-1)*dilation with q - k a multiple of ``dilation``: window
    keys per side, the query included) plus ``n_global`` global positions 0..n_global-1 that attend
    to every key and that every query attends to. In a decoder the causal mask still applies (a
    global query sees only earlier keys). Cost O(n * (window + n_global)).
    With every position global (n_global >= n) or window >= n it is full attention.

    Options: ``window`` (int >= 1, default 64), ``n_global`` (int >= 0, default 1), ``dilation``
    (int >= 1, default 1). ``cache_reach`` = (n_global, (window-1)*dilation + 1): a ``sink-window``
    cache with ``sinks`` >= n_global decodes exactly (``window`` too when n_global = 0).
    Deviations: the paper's global tokens are task-chosen (CLS, question tokens) and use separate
    projections Q_g, K_g, V_g; here they are the first ``n_global`` positions with the shared
    projections (so one pattern serves every input, and a decoder's sinks are its globals).
    Dilation is per layer, not per head (the paper dilates only some heads of upper layers).
    """

    name = "longformer"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, window: int = 64, n_global: int = 1, dilation: int = 1) -> None:
        self.window = _int("longformer", "window", window, 1)
        self.n_global = _int("longformer", "n_global", n_global, 0)
        self.dilation = _int("longformer", "dilation", dilation, 1)
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> LongformerPattern:
        return LongformerPattern(self.window, self.n_global, self.dilation)

    @staticmethod
    def cache_reach(options: dict) -> tuple[int, int]:
        w = _int("longformer", "window", options.get("window", 64), 1)
        g = _int("longformer", "n_global", options.get("n_global", 1), 0)
        dil = _int("longformer", "dilation", options.get("dilation", 1), 1)
        return g, (w - 1) * dil + 1


@register("attention", "bigbird", paper=BIGBIRD,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="BigBird: block window + global blocks + seeded random blocks")
class BigBirdAttention(PatternAttention):
    """BigBird block-sparse attention (Zaheer et al., arXiv 2007.14062, §2 and App. D, "ITC").

    The sequence is cut into blocks of ``block`` positions. Query block i attends to key block j
    when |i - j| <= ``window_blocks`` (sliding window of 2w+1 blocks), when i or j is one of the
    first ``global_blocks`` blocks (global), or when j is one of i's ``random_blocks`` random
    blocks, drawn from the blocks the window and globals do not cover (earlier blocks only in a
    decoder; in an encoder among the ceil(seq_len / block) blocks of the sequence). The random choice is a deterministic function of (``seed``, i, j) (see
    :func:`bigbird_random_blocks`), so cached decoding and the full forward agree.
    Cost O(n * (2w + 1 + g + r) * block). With window_blocks * block >= n it is full attention.

    Options: ``block`` (int >= 1, default 16), ``window_blocks`` (>= 0, default 1),
    ``global_blocks`` (>= 0, default 1), ``random_blocks`` (>= 0, default 2), ``seed`` (default 0).
    Positions must be < cfg.max_seq_len (the random table covers that many).
    No ``cache_reach``: random blocks reach any earlier key (use the ``full`` cache).
    Deviations: the paper's ITC globals are the first and last blocks; here only the first
    ``global_blocks`` (a last block is meaningless in a decoder). The random blocks are shared by
    all heads and fixed (seeded), not resampled per head; give layers different seeds for
    different random graphs.
    """

    name = "bigbird"
    length_dependent = True

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, block: int = 16, window_blocks: int = 1,
                 global_blocks: int = 1, random_blocks: int = 2, seed: int = 0) -> None:
        self.block = _int("bigbird", "block", block, 1)
        self.window_blocks = _int("bigbird", "window_blocks", window_blocks, 0)
        self.global_blocks = _int("bigbird", "global_blocks", global_blocks, 0)
        self.random_blocks = _int("bigbird", "random_blocks", random_blocks, 0)
        self.seed = _int("bigbird", "seed", seed, 0)
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> BigBirdPattern:
        return BigBirdPattern(self.block, self.window_blocks, self.global_blocks, self.random_blocks,
                              self.seed, causal, math.ceil(length / self.block))


@register("attention", "sparse-strided", paper=CHILD,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="Sparse Transformer strided pattern (local l + every l-th key), merged heads")
class StridedSparseAttention(PatternAttention):
    """Sparse Transformer, strided pattern (Child, Gray, Radford, Sutskever, arXiv 1904.10509, §4.2).

    Query i attends to A1 = {j : |i - j| <= stride} (the previous ``stride`` keys and itself in a
    decoder) and A2 = {j : (i - j) mod stride = 0} (every stride-th earlier key). Cost
    O(n * (stride + n/stride)), O(n sqrt n) at stride ~ sqrt n. Two such layers connect every pair.

    Options: ``stride`` l (int >= 1, default 32).
    Deviation / choice: the two factorised patterns are merged: every head attends over A1 | A2
    (§4.3, "merged head" variant), rather than alternating them across layers or heads. No
    ``cache_reach``: A2 reaches every earlier key.
    """

    name = "sparse-strided"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, stride: int = 32) -> None:
        self.stride = _int("sparse-strided", "stride", stride, 1)
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> StridedPattern:
        return StridedPattern(self.stride)


@register("attention", "sparse-fixed", paper=CHILD,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="Sparse Transformer fixed pattern (own block + last c of every block), merged heads")
class FixedSparseAttention(PatternAttention):
    """Sparse Transformer, fixed pattern (Child et al., arXiv 1904.10509, §4.2, Fig. 3c).

    Query i attends to A1 = {j : floor(j/l) = floor(i/l)} (its own block of ``stride`` = l
    positions) and A2 = {j : j mod l in {l - c, ..., l - 1}} (the last ``c`` positions of every
    block, the "summary" columns; in a decoder only earlier ones). Cost O(n * (l + c n / l)).

    Options: ``stride`` l (int >= 1, default 32), ``c`` (1 <= c <= stride, default 4).
    Deviation / choice: merged heads (every head attends over A1 | A2, §4.3); the paper's variant
    with different summary columns per head (c offsets per head) is not offered.
    """

    name = "sparse-fixed"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, stride: int = 32, c: int = 4) -> None:
        self.stride = _int("sparse-fixed", "stride", stride, 1)
        self.c = _int("sparse-fixed", "c", c, 1)
        if self.c > self.stride:
            raise ValueError(f"attention 'sparse-fixed': c must be <= stride = {stride}, got {c!r}")
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> FixedPattern:
        return FixedPattern(self.stride, self.c)


@register("attention", "block-sparse", paper=MASFORMER,
          caps=Capabilities(kv_cache=True, backend=BACKEND),
          summary="block-diagonal attention within non-overlapping blocks (MASFormer's sparse layer)")
class BlockSparseAttention(PatternAttention):
    """Block-sparse (block-diagonal) attention: query q attends to key k only when
    q // block == k // block (MASFormer, arXiv 2310.12442, §3 and Fig. 1a; BlockBERT without the
    head-wise block permutation). In a decoder: causally within the block. Cost O(n * block).
    No information crosses a block boundary in a stack of these layers alone.
    With block >= n it is full attention.

    Options: ``block`` (int >= 1, default 64). ``cache_reach`` = (0, block): a ``window`` cache of
    ``block`` keys decodes exactly (it rolls rather than resetting at block boundaries, so it holds
    up to block - 1 keys, some of them masked out).
    """

    name = "block-sparse"

    def __init__(self, cfg: ModelConfig, cross: bool = False, backend: str = "auto",
                 own_values: bool = True, block: int = 64) -> None:
        self.block = _int("block-sparse", "block", block, 1)
        super().__init__(cfg, cross, backend, own_values)

    def make_pattern(self, causal: bool, length: int) -> BlockPattern:
        return BlockPattern(self.block)

    @staticmethod
    def cache_reach(options: dict) -> tuple[int, int]:
        return 0, _int("block-sparse", "block", options.get("block", 64), 1)


# ------------------------------------------------------------------------------------ presets

@preset("local", LOCAL, "every layer sliding-window attention (window 64), decoding with a window cache")
def local_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "local", {"window": 64}, cache="window", cache_options={"window": 64})


@preset("longformer", LONGFORMER, "every layer Longformer attention (window 64, 1 global position)")
def longformer_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "longformer")


@preset("bigbird", BIGBIRD, "every layer BigBird attention (block 16: 3-block window, 1 global, 2 random)")
def bigbird_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "bigbird")


@preset("sparse-strided", CHILD, "every layer Sparse Transformer strided attention (stride 32)")
def strided_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "sparse-strided")


@preset("sparse-fixed", CHILD, "every layer Sparse Transformer fixed attention (stride 32, c 4)")
def fixed_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "sparse-fixed")


@preset("block-sparse", MASFORMER, "every layer block-sparse attention (block 64), decoding with a window cache")
def block_sparse_preset(c: ModelConfig) -> ModelConfig:
    return with_attention(c, "block-sparse", {"block": 64}, cache="window", cache_options={"window": 64})


__all__ = [
    "BigBirdAttention", "BigBirdPattern", "BlockPattern", "BlockSparseAttention", "FixedPattern",
    "FixedSparseAttention", "LocalAttention", "LocalPattern", "LongformerAttention",
    "LongformerPattern", "PatternAttention", "StridedPattern", "StridedSparseAttention",
    "bigbird_random_blocks", "pattern_matrix",
]
