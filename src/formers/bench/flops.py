"""Analytic FLOP counts of formers models, summed from what each part declares (for honest MFU).

Conventions (the same for every part):

* **Matmul FLOPs only**, 2 FLOPs per multiply-add (the PaLM / nanoGPT convention; memoryformer's
  Table 1 counts 1 per multiply-add and is converted where compared). Norms, activations, softmax
  exponentials, masking, embedding lookups and residual additions are not counted; they are
  memory-bound and a few percent of the total.
* **Per sequence** of ``seq_len`` tokens, batch 1; a batch of B costs B times as much. An
  encoder-decoder counts ``seq_len`` source and ``seq_len`` target tokens.
* **Attention scores and the weighted sum** (Q K^T and P V): 2 x 2 x n_q x n_k x head_dim x heads
  for dense attention. ``causal=None`` (default) or ``False`` counts the **full square** for
  dense attention, whatever the mask: this is the convention of the issue's
  ``6 N + 12 L d T`` formula (PaLM appendix B, nanoGPT's ``estimate_mfu``) and what
  ``torch.utils.flop_counter`` reports for SDPA. ``causal=True`` counts only the pairs a causal
  kernel computes: n (n + 1) / 2 for dense attention (flash attention skips the masked blocks,
  about half the square). Patterned mixers (local, strided, block-sparse, BigBird, Longformer)
  count the (query, key) pairs their pattern allows (with ``causal=True``: only pairs with
  key <= query), never the dense square.
* **Training** = 3 x forward (backward = 2 x forward: the gradients of the inputs and of the
  weights), per token: :func:`train_flops_per_token`.

How parts declare. A module that defines ``forward_flops(self, seq_len: int, causal: bool) ->
float`` declares the forward FLOPs of one sequence through itself **and all its submodules**;
:func:`forward_flops` sums the declarations over the model, not descending into a module that
declared. A plain ``torch.nn.Linear`` outside any declaring module (the LM head) counts
2 x in x out per token. Every registered ``attention``, ``ffn`` and ``residual`` entry declares,
or is listed in :data:`NOT_DECLARED` with the reason (``tests/bench/test_flops.py`` walks the
registry and fails otherwise).
"""

from __future__ import annotations

import torch
from torch import nn

from formers.nn.flops import module_flops

# registry (kind, name) -> why the entry declares no FLOP count (see the module docstring)
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
