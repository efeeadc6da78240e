"""MemoryFormer's Memory Layer and Memory Block (Ding et al., "MemoryFormer: Minimize Transformer
Computation by Removing Fully-Connected Layers", NeurIPS 2024, arXiv 2411.12992, §3).

**Memory Layer** (replaces a fully-connected y = x W, x in R^{d_in}, y in R^{d_out}):

* split x into K = d_in / tau chunks z_k in R^tau;
* hash each chunk by the signs of its entries (a compute-less locality-sensitive hash):
  h(z_k) = sum_{i=0}^{tau-1} [z_{k,i} >= 0] 2^i in {0, ..., 2^tau - 1}  (z = 0 counts as a 1 bit;
  entry i of the chunk is bit i, least significant first);
* each chunk has a table T_k in R^{2^tau x d_out}; the output is a soft-weighted sum of the K
  retrieved rows

      y = sum_k p(z_k) T_k[h(z_k)]  (+ b),

  where p(z_k) is the softmax probability of the selected code among all 2^tau sign codes
  c in {-1, +1}^tau with logits <z_k, c> / t:

      p(z_k) = exp(<z_k, sign z_k> / t) / sum_c exp(<z_k, c> / t) = prod_i sigmoid(2 |z_{k,i}| / t)

  (computed in that stable product form, as exp(sum_i logsigmoid(2|z_{k,i}|/t)), in float32 or
  wider).
* Gradient path as in the paper: the hash indices are piecewise constant (no gradient); the loss
  reaches x only through p(z_k), and the tables only at the rows that were retrieved (the table
  gradient is dense in memory but zero on every other row).
* Cost per token: K tau (hash) + K d_out (weighted accumulation of K rows) operations, against
  d_in d_out multiply-adds for the dense layer, i.e. about a factor tau fewer (d_out >> tau).

**Memory Block** (the FFN replacement): Y = Z + ML_2(Norm(ML_1(Norm(Z)))), no activation (the
hash is the non-linearity). ML_1 maps d -> K (tau + 2) with tau-bit chunks; ML_2 hashes its
input in K chunks of tau + 2 bits (tables 2^{tau+2} x d, four times the capacity) back to d. The
outer Norm is the backbone's pre-FFN norm; the inner one is built here (``cfg.norm``). The
attention side (Q/K/V memory layers sharing one hash, no W_O) is the token mixer
``memory-attention`` in :mod:`formers.nn.attention.memory`.

**Scores.** ``score='paper'`` (default) is p(z_k) above with temperature ``temperature`` (t = 1
by default). The reference code (``C0-Design/MemoryFormer@59686737ec18``,
``memory_module/compute_code_score/kernel.py``) computes a different weight,
``||z_k||_1 * prod_i sigmoid(2 |z_{k,i}|)`` (an extra L1-norm factor, temperature 1; the paper's
formula is only in comments there): that is ``score='reference'`` (with t applied inside the
sigmoid; t = 1 reproduces the code).

Deviations from the paper / reference code:

* Bit order: the paper's sum_i [z_i >= 0] 2^i, least significant bit first. The reference code
  is most-significant-bit first; the two differ only by a fixed permutation of table rows.
* The lookup runs through ``F.embedding_bag(mode='sum', per_sample_weights=p)`` (no [N, K, d_out]
  intermediate, unlike the reference's torch path); :meth:`MemoryLayer.forward_reference` is the
  explicit loop over tables, kept for tests.
* Tables are drawn from N(0, init_std) by the backbone's GPT-2 init (the reference: 0.02 randn,
  then ``init_method``); biases start at 0 (reference: 0.001 randn). Tables are ordinary dense
  Parameters (the optimiser sees dense, mostly-zero gradients and AdamW decays them like any
  matrix); the paper trains with 3x the Pythia learning rate because table gradients are sparse.
  That is a training setting left to the run, not built in.
* No learned projection before hashing (the reference's optional ``remove_projection=false``
  path; its configs use ``remove_projection: true``, which is what is built here).
* ``d_ff`` of the config is not used by ``memory``: the hidden width is K (tau + extra_bits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from formers.nn.config import LayerSpec, ModelConfig
from formers.nn.norm import build_norm
from formers.nn.presets import preset
from formers.registry import Paper, register

PAPER = Paper("MemoryFormer: Minimize Transformer Computation by Removing Fully-Connected Layers",
              "2411.12992", "§3 (Memory Layer; MemoryFormer block), Table 1")
SCORES = ("paper", "reference")
MAX_BITS = 16


def _check_bits(name: str, tau: int) -> None:
    if isinstance(tau, bool) or not isinstance(tau, int) or not 1 <= tau <= MAX_BITS:
        raise ValueError(f"memory: {name} must be an int in [1, {MAX_BITS}] (tables have 2^{name} "
                         f"rows), got {tau!r}")


def _check_score(score: str, temperature: float) -> None:
    if score not in SCORES:
        raise ValueError(f"memory: score = {score!r} is not one of {list(SCORES)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"memory: temperature must be a finite number > 0, got {temperature!r}")


def n_chunks(in_features: int, tau: int) -> int:
    """K = in_features / tau (ValueError unless tau divides in_features)."""
    _check_bits("tau", tau)
    if in_features % tau:
        raise ValueError(f"memory: tau = {tau} must divide the input width {in_features} "
                         f"(K = d_in / tau chunks)")
    return in_features // tau


def hash_codes(z: torch.Tensor) -> torch.Tensor:
    """Bucket index of each chunk. z: (..., K, tau) -> (..., K) int64,
    h = sum_i [z_i >= 0] 2^i (entry i is bit i; zero counts as a 1 bit)."""
    tau = z.shape[-1]
    weights = torch.pow(2, torch.arange(tau, device=z.device, dtype=torch.int64))
    return ((z >= 0).to(torch.int64) * weights).sum(-1)


def code_probs(z: torch.Tensor, temperature: float = 1.0, score: str = "paper") -> torch.Tensor:
    """Retrieval weight of each chunk's selected code. z: (..., K, tau) -> (..., K) in float32
    (float64 for float64 inputs).

    ``paper``: p = prod_i sigmoid(2 |z_i| / t), the softmax probability of sign(z) among all
    2^tau codes with logits <z, c>/t. ``reference``: ||z||_1 * p (the official code's weight).
    """
    a = z.to(torch.promote_types(z.dtype, torch.float32)).abs()
    p = torch.exp(F.logsigmoid(2.0 * a / temperature).sum(-1))
    if score == "reference":
        p = a.sum(-1) * p
    return p


class MemoryLayer(nn.Module):
    """Hashing memory layer replacing a linear ``in_features -> out_features`` (MemoryFormer,
    arXiv 2411.12992 §3): y = sum_k p(z_k) T_k[h(z_k)] + b, see the module docstring.

    x: (..., in_features) -> y: (..., out_features). ``tables``: (K, 2^tau, out_features) with
    K = in_features / tau; ``bias``: (out_features,) or None.

    Args:
        tau: bits per chunk (table rows 2^tau; paper 8). score: ``paper`` | ``reference``.
        temperature: t of the code softmax (paper: a hyperparameter; 1 here by default).
    Raises:
        ValueError: tau not in [1, 16] or not dividing in_features, unknown score, t <= 0.
    """

    def __init__(self, in_features: int, out_features: int, tau: int = 8, bias: bool = True,
                 score: str = "paper", temperature: float = 1.0) -> None:
        super().__init__()
        self.K = n_chunks(in_features, tau)
        _check_score(score, temperature)
        if out_features < 1:
            raise ValueError(f"memory: out_features must be >= 1, got {out_features}")
        self.in_features, self.out_features, self.tau = in_features, out_features, tau
        self.score, self.temperature = score, float(temperature)
        self.tables = nn.Parameter(torch.randn(self.K, 2 ** tau, out_features) * 0.02)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.shared = None  # a SharedHash set by a mixer whose layers hash the same input

    @property
    def n_params(self) -> int:
        return self.tables.numel() + (self.out_features if self.bias is not None else 0)

    def forward_flops(self, seq_len: int, causal: bool, square: bool, hashing: bool = True) -> float:
        """2 x :func:`memory_layer_flops` per sequence (the paper's operations, a multiply-add
        counted 2 as everywhere in :mod:`formers.nn.flops`): the hash (d_in) and K weighted table
        rows (K d_out) per token; ``hashing=False`` for a layer that reuses a shared hash."""
        return 2.0 * memory_layer_flops(self.in_features, self.out_features, self.tau, seq_len, hashing)

    def hash(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (..., in_features) -> (codes (..., K) int64, weights p (..., K), float32 or wider)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MemoryLayer: input width {x.shape[-1]} != {self.in_features}")
        z = x.reshape(*x.shape[:-1], self.K, self.tau)
        return hash_codes(z), code_probs(z, self.temperature, self.score)

    def lookup(self, codes: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """sum_k p_k T_k[codes_k] (+ b). codes, p: (..., K) -> (..., out_features)."""
        lead = codes.shape[:-1]
        flat = codes.reshape(-1, self.K)
        table = self.tables.reshape(self.K * 2 ** self.tau, self.out_features)
        offset = torch.arange(self.K, device=codes.device) * (2 ** self.tau)
        y = F.embedding_bag(flat + offset, table, mode="sum",
                            per_sample_weights=p.reshape(-1, self.K).to(table.dtype))
        y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        if shared is not None and shared.x is x:  # hashed once for every layer of the mixer
            return self.lookup(*shared.codes)
        return self.lookup(*self.hash(x))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same output as an explicit loop over the K tables (for tests)."""
        codes, p = self.hash(x)
        y = torch.zeros(*x.shape[:-1], self.out_features, dtype=self.tables.dtype, device=x.device)
        for k in range(self.K):
            y = y + p[..., k:k + 1].to(y.dtype) * self.tables[k][codes[..., k]]
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, K={self.K}, "
                f"tau={self.tau}, score={self.score!r}, temperature={self.temperature}")


class SharedHash:
    """Holds one input and its (codes, p) so several memory layers with the same (tau, score,
    temperature) hash it once (MemoryFormer's Q/K/V share one hashing of Norm(X)). Not a module:
    it holds no parameters and nothing is saved."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.codes: tuple[torch.Tensor, torch.Tensor] | None = None

    def pin(self, x: torch.Tensor, layer: MemoryLayer) -> None:
        self.x, self.codes = x, layer.hash(x)

    def clear(self) -> None:
        self.x = self.codes = None


@register("ffn", "memory", paper=PAPER,
          summary="MemoryFormer Memory Block: ML_2(Norm(ML_1(x))), hashing memory layers, no FC")
class MemoryFFN(nn.Module):
    """MemoryFormer's Memory Block (arXiv 2411.12992 §3): ML_2(Norm(ML_1(x))), no activation.

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model). ML_1 = ``self.ml1``:
    d_model -> K (tau + extra_bits) with K = d_model / tau chunks of tau bits; ``self.norm``:
    ``cfg.norm`` over that width; ML_2 = ``self.ml2``: K chunks of tau + extra_bits bits -> d_model.
    Tables hold 2^tau K (K (tau + extra_bits)) + 2^(tau + extra_bits) K d_model entries (tiny model,
    d 512, tau 8: 512 -> 640 -> 512). The backbone's pre-FFN norm is the paper's Norm(Z).

    Options: ``tau`` (8), ``extra_bits`` (2, the reference's ``mlp_expand_type=extra_bit``),
    ``score`` (``paper`` | ``reference``), ``temperature`` (1.0). ``cfg.d_ff`` is not used.
    """

    def __init__(self, cfg: ModelConfig, tau: int = 8, extra_bits: int = 2, score: str = "paper",
                 temperature: float = 1.0) -> None:
        super().__init__()
        k = n_chunks(cfg.d_model, tau)
        if isinstance(extra_bits, bool) or not isinstance(extra_bits, int) or extra_bits < 0:
            raise ValueError(f"memory: extra_bits must be an int >= 0, got {extra_bits!r}")
        _check_bits("tau + extra_bits", tau + extra_bits)
        hidden = k * (tau + extra_bits)
        self.ml1 = MemoryLayer(cfg.d_model, hidden, tau, cfg.bias, score, temperature)
        self.norm = build_norm(cfg.norm, hidden, cfg.norm_eps, cfg.bias)
        self.ml2 = MemoryLayer(hidden, cfg.d_model, tau + extra_bits, cfg.bias, score, temperature)

    def forward_flops(self, seq_len: int, causal: bool, square: bool) -> float:
        """ML_1 and ML_2 (each hashing its own input), see :meth:`MemoryLayer.forward_flops`."""
        return (self.ml1.forward_flops(seq_len, causal, square)
                + self.ml2.forward_flops(seq_len, causal, square))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ml2(self.norm(self.ml1(x)))


# --------------------------------------------------------------------------------- FLOP count
# Convention (the paper's, which reproduces its Table 1): one multiply-add = 1 FLOP; a dense
# d_in x d_out linear costs d_in d_out per token; attention scores and weighted values 2 s^2 d.

def dense_linear_flops(in_features: int, out_features: int, tokens: int = 1) -> int:
    """Multiply-adds of y = x W for ``tokens`` tokens: tokens * d_in * d_out."""
    return tokens * in_features * out_features


def memory_layer_flops(in_features: int, out_features: int, tau: int, tokens: int = 1,
                       hashing: bool = True) -> int:
    """Operations of a Memory Layer for ``tokens`` tokens: tokens * (d_in [hash: one sign/abs per
    input entry, O(K tau) as in the paper] + K d_out [accumulating K weighted rows]),
    K = d_in / tau. ``hashing=False`` leaves out the hash (shared with another layer)."""
    k = n_chunks(in_features, tau)
    return tokens * ((in_features if hashing else 0) + k * out_features)


def dense_block_flops(d_model: int, seq_len: int) -> dict[str, int]:
    """One standard block (W_Q, W_K, W_V, W_O and a 4d FFN): attention 2 s^2 d, linears 12 s d^2."""
    s, d = seq_len, d_model
    attn = 2 * s * s * d
    fc = 4 * dense_linear_flops(d, d, s) + 2 * dense_linear_flops(d, 4 * d, s)
    return {"attention": attn, "projections": fc, "total": attn + fc}


def memory_block_flops(d_model: int, seq_len: int, tau: int = 8, extra_bits: int = 2) -> dict[str, int]:
    """One MemoryFormer block: attention 2 s^2 d; Q/K/V memory layers sharing one hash of the
    input (no W_O); Memory Block ML_1 (d -> K (tau + extra_bits)) and ML_2 (back to d).
    ``paper_formula`` is the paper's approximation 2 s^2 d + 6 K s d."""
    s, d = seq_len, d_model
    k = n_chunks(d, tau)
    h = k * (tau + extra_bits)
    attn = 2 * s * s * d
    qkv = memory_layer_flops(d, d, tau, s) + 2 * memory_layer_flops(d, d, tau, s, hashing=False)
    ffn = memory_layer_flops(d, h, tau, s) + memory_layer_flops(h, d, tau + extra_bits, s)
    return {"attention": attn, "projections": qkv + ffn, "total": attn + qkv + ffn,
            "paper_formula": attn + 6 * k * s * d}


def memory_block_table_entries(d_model: int, tau: int = 8, extra_bits: int = 2) -> int:
    """Table entries of one Memory Block: 2^tau K h + 2^(tau+extra_bits) K d, h = K (tau+extra_bits)."""
    k = n_chunks(d_model, tau)
    h = k * (tau + extra_bits)
    return 2 ** tau * k * h + 2 ** (tau + extra_bits) * k * d_model


# ------------------------------------------------------------------------------------ presets
@preset("memoryformer", PAPER,
        "MemoryFormer: memory-layer Q/K/V (no W_O) and Memory Blocks instead of FFNs (tau 8)")
def memoryformer(c: ModelConfig) -> ModelConfig:
    """Every layer: token mixer ``memory-attention`` (Q/K/V memory layers, shared hash, no W_O;
    the softmax attention itself stays) and FFN ``memory`` (tau = 8, 2 extra bits). Positions,
    norm and sizes are the base's (the paper's Pythia base uses partial rotary and LayerNorm /
    RMSNorm; those are the task's choice here). Needs d_model divisible by 8."""
    if c.layers is None:
        return c.replace(attention="memory-attention", ffn="memory")
    return c.replace(attention="memory-attention", ffn="memory", layers=[
        LayerSpec(attention="memory-attention", ffn="memory", cache=s.cache) for s in c.layers])


__all__ = [
    "MemoryFFN", "MemoryLayer", "SharedHash", "code_probs", "dense_block_flops",
    "dense_linear_flops", "hash_codes", "memory_block_flops", "memory_block_table_entries",
    "memory_layer_flops", "n_chunks",
]
