"""Analytic FLOP counts of formers models, summed from what each part declares (for honest MFU).

Public API: :func:`forward_flops` (one sequence through a built model), :func:`train_flops_per_token`
(3 x forward per token, built on the meta device), :func:`nanogpt_flops_per_token` (the issue's
``6 N + 12 L d T`` baseline formula), :func:`nanogpt_params` (its N) and :func:`flop_summary`
(every figure of one config, for result files).

Conventions (the same for every part):

* **Matmul FLOPs only**, 2 FLOPs per multiply-add (PaLM appendix B / nanoGPT's ``estimate_mfu``;
  MemoryFormer's Table 1 counts 1 per multiply-add, see ``benchmarks/memoryformer_flops.py``).
  Norms, activations, softmax exponentials, masking, biases, embedding lookups and residual
  additions are not counted (memory-bound, a few percent of the time). Stated exceptions, element-
  wise work that is the point of a paper: DenseFormer's depth-weighted averages (|S(i)| d
  multiply-adds per token after block i), the value-residual mix (2 multiply-adds per value entry
  and layer), MemoryFormer's hash and table reads (the paper's d_in + K d_out per token).
* **Per sequence** of ``seq_len`` tokens, batch 1; a batch of B costs B times as much. An
  encoder-decoder counts ``seq_len`` source and ``seq_len`` target tokens.
* **Dense attention** (softmax, GQA/MQA, KV, synthesizer, low-rank, MemoryFormer, cross): Q K^T
  and P V cost 2 x 2 x pairs x heads x head_dim. ``causal=None`` (default) counts the **full
  square** n^2 pairs in every layer, causal or not: the convention of the issue's
  ``12 L d T`` term and what ``torch.utils.flop_counter`` reports for SDPA. ``causal=True`` counts
  the n (n + 1) / 2 pairs a causal kernel computes (flash attention skips the masked blocks);
  about 7% less for GPT-2 small at T = 1024. ``causal=False`` counts every layer in its
  bidirectional form.
* **Sparse patterns** (local, Longformer, BigBird, strided, fixed, block-sparse, streaming) count
  the (query, key) pairs their pattern allows (key <= query in causal layers), under either
  convention: that is the work of a block-sparse kernel (FlexAttention rounds up to 128 x 128
  blocks; the padding is not counted). **Low-rank** Linformer: E K and F V (2 x 2 k n d) plus n k
  pairs. **Linear / kernelised** (linear, Performer, Flowformer): the default path's matmuls,
  bidirectional 2 x 2 n F E per head, causal the chunked scan 2 n c (F + E) + 2 x 2 n F E (c the
  chunk; F the feature width: head_dim, or Performer's m plus its 2 x 2 n m head_dim feature map).
  **Nystromformer**: landmark means, three kernels, 8 m^3 per pseudo-inverse iteration, the
  convolution skip. **Sinkhorn**: sort network on the blocks, soft sort of key/value blocks, 2 b
  keys per query. **Reformer**: hashing plus 2 c keys per query and round (the paper's count; the
  kernel pads buckets to chunks, which is not counted).
* **MoE**: the router plus the **active** experts only (top-k: k per token; expert choice: E c
  per sequence). The dropless top-k path pads every expert to the busiest one's load; torch's
  counter sees that padding, the analytic count does not. **MatFormer**: the current granularity.
* **Training** = 3 x forward (backward = 2 x forward: the gradients of the inputs and of the
  weights), per token: :func:`train_flops_per_token`.

How parts declare (:mod:`formers.nn.flops`). A module defining ``forward_flops(self, seq_len,
causal, square) -> float`` declares the forward FLOPs of one sequence through itself **and all its
submodules**; the sum does not descend into a module that declared. A plain ``torch.nn.Linear``
outside any declaring module (the LM head, tied or not) counts 2 x in x out per token; other
undeclared modules count 0. Every registered ``attention``, ``ffn`` and ``residual`` entry
declares, or is listed in :data:`NOT_DECLARED` with the reason (``tests/bench/test_flops.py`` walks
the registry, and also fails when a class overrides ``forward`` but inherits its count). The
counts equal ``FlopCounterMode`` on the reference paths (tested part by part and for whole
models); where they differ the test states why.
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.flops import module_flops

# registry (kind, name) -> why the entry declares no FLOP count (empty: every attention, ffn and
# residual entry declares one; an entry added here needs a reason, and the test checks it is there)
NOT_DECLARED: dict[tuple[str, str], str] = {}


def forward_flops(model: nn.Module, seq_len: int, *, causal: bool | None = None) -> float:
    """Forward matmul FLOPs of one sequence of ``seq_len`` tokens through ``model`` (2 per
    multiply-add), summing the declarations of its parts (see the module docstring).

    Args:
        model: a built formers model or part (any device, the meta device included: nothing runs).
        seq_len: tokens per sequence (>= 1).
        causal: ``None`` (default): every stack in its own mode (decoder causal, encoder not; a
            part outside any stack: causal) and dense attention over the **full square** (the
            issue's ``12 L d T`` convention). ``True``: the same modes, but dense attention in
            causal layers counts only the n (n + 1) / 2 pairs a causal kernel computes.
            ``False``: every layer in its bidirectional form (full square).
    Returns:
        FLOPs (float) for batch 1.
    Raises:
        ValueError: ``seq_len`` not an int >= 1, or ``causal`` not None / bool.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"forward_flops: seq_len must be an int >= 1, got {seq_len!r}")
    if causal not in (None, True, False):
        raise ValueError(f"forward_flops: causal must be None, True or False, got {causal!r}")
    return module_flops(model, seq_len, causal is not False, causal is not True)


def train_flops_per_token(cfg, seq_len: int, *, causal: bool | None = None) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward) of the model that ``cfg``
    (a :class:`formers.nn.ModelConfig`) builds, at ``seq_len`` tokens per sequence.

    The model is built on the meta device (no memory is allocated, no weight initialised).
    ``causal`` as in :func:`forward_flops` (default: the full-square convention).
    """
    from formers.nn import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return 3.0 * forward_flops(model, seq_len, causal=causal) / seq_len


def nanogpt_flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """nanoGPT's / PaLM's training FLOPs per token: ``6 N + 12 L d T``.

    ``N`` is the parameter count as nanoGPT's ``estimate_mfu`` takes it: every parameter except
    the learned position embedding (the token embedding stays in: tied to the LM head it is a
    matmul), counting tied weights once. ``12 L d T`` is the attention score and weighted-sum
    work (forward 4 L d T, backward twice that) over the **full** T x T square, causal or not.
    For GPT-2 small (N ~ 124 M with a 50304-token vocabulary, L 12, d 768, T 1024) this gives
    about 0.85 GFLOP per token.
    """
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def nanogpt_params(model: nn.Module) -> int:
    """N of :func:`nanogpt_flops_per_token`: the distinct parameters of ``model`` (tied weights once)
    minus the learned position table(s) (nanoGPT's ``get_num_params(non_embedding=True)``)."""
    from formers.nn.position import LearnedPosition

    pos = sum(p.numel() for m in model.modules() if isinstance(m, LearnedPosition)
              for p in m.parameters())
    return sum(p.numel() for p in model.parameters()) - pos


def flop_summary(cfg, seq_len: int) -> dict[str, float]:
    """Every FLOP figure of ``cfg`` (a :class:`formers.nn.ModelConfig`) at ``seq_len``, for result
    files: ``train_flops_per_token`` (full square, the default), ``train_flops_per_token_causal``
    (causal pairs), ``nanogpt_flops_per_token`` (6 N + 12 L d T), ``nanogpt_params`` (N) and
    ``params``. Built on the meta device."""
    from formers.nn import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    n_params = nanogpt_params(model)
    full = forward_flops(model, seq_len)
    causal = forward_flops(model, seq_len, causal=True)
    return {
        "train_flops_per_token": 3.0 * full / seq_len,
        "train_flops_per_token_causal": 3.0 * causal / seq_len,
        "nanogpt_flops_per_token": nanogpt_flops_per_token(n_params, cfg.n_layers, cfg.d_model, seq_len),
        "nanogpt_params": float(n_params),
        "params": float(sum(p.numel() for p in model.parameters())),
    }
