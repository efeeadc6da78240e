"""Fused (chunked) linear + cross-entropy for a language-model head: the mean next-token loss of
``hidden @ weight.T`` without ever holding the full (tokens, vocab) logits or their gradient.

The idea is the fused linear cross-entropy of Liger-Kernel (Hsu et al., arXiv 2410.10989) and Cut
Cross-Entropy (Wijmans et al., arXiv 2411.09009): walk over chunks of tokens, and for each chunk
compute its logits, its log-sum-exp and its loss, and at once the gradients that the backward pass
will need, so the chunk's logits can be dropped before the next chunk. This is our own plain-torch
version (no custom kernel): the per-chunk elementwise work is left to the eager kernels or to
``torch.compile``'s fusion.

Memory. The plain path ``F.cross_entropy((hidden @ W.T).float(), targets)`` keeps the logits
(N x V in the autocast dtype) for the backward and creates their gradient (N x V) during it; in
eager mode also the fp32 log-probabilities (N x V x 4 bytes). For GPT-2 small at batch 16 x 1024
(N = 16,384, V = 50,304) the bf16 logits alone are 1.65 GB. Here the saved state is the gradients,
grad_hidden (N x d, hidden's dtype) and grad_weight (V x d, fp32 or the weight's wider dtype), and
the transient state is one chunk's logits and softmax (chunk x V) plus a compute-dtype copy of the
weight.

Time. No GEMM is recomputed: forward + backward run the same three GEMMs as the plain path (logits,
grad_hidden, grad_weight; the last is accumulated chunk by chunk into an fp32 buffer, which costs
one read and write of V x d x 4 bytes per chunk: larger chunks make that cheaper).
"""

from __future__ import annotations

import math

import torch

# default chunk: at most this many logits (chunk_tokens x vocab) per chunk; 2**26 elements are
# 128 MiB in bf16 and 256 MiB in fp32 (GPT-2 small, 16,384 tokens x 50,304: 13 chunks of 1,280)
CHUNK_ELEMENTS = 2**26


def default_chunk_tokens(n_tokens: int, vocab: int, max_elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk when none is given: equal chunks (up to the last) of at most
    ``max_elements`` logits, rounded up to a multiple of 64 tokens, at least 1, at most n_tokens."""
    n_chunks = max(1, math.ceil(n_tokens * vocab / max_elements))
    c = math.ceil(n_tokens / n_chunks)
    c = -(-c // 64) * 64
    return max(1, min(n_tokens, c))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
             ignore_index: int, cd: torch.dtype, want_h: bool, want_w: bool):
    """(loss, grad_hidden or None, grad_weight or None) of the mean CE; autocast must be off."""
    acc = torch.promote_types(cd, torch.float32)  # softmax / loss precision (fp32, or fp64)
    n = hidden.shape[0]
    w = weight.to(cd)
    valid_all = targets != ignore_index
    scale = 1.0 / valid_all.sum().to(acc)  # mean over the non-ignored tokens (0 of them: nan)
    losses, gh = [], []
    gw = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, acc),
                     device=weight.device) if want_w else None
    for s in range(0, n, chunk):
        h = hidden[s:s + chunk].to(cd)
        t = targets[s:s + chunk]
        valid = valid_all[s:s + chunk]
        safe = torch.where(valid, t, torch.zeros_like(t)).unsqueeze(1)  # (c, 1)
        z = (h @ w.T).to(acc)  # (c, V): the chunk's logits, upcast
        lse = torch.logsumexp(z, dim=1)  # (c,)
        picked = z.gather(1, safe).squeeze(1)
        losses.append(torch.where(valid, lse - picked, torch.zeros_like(lse)).sum())
        if not (want_h or want_w):
            continue
        # d loss / d logits = (softmax - onehot) / n_valid on valid rows, 0 on ignored rows
        row_scale = (valid.to(acc) * scale).unsqueeze(1)  # (c, 1)
        if torch.compiler.is_compiling():
            # one pointwise expression (the one-hot as a comparison with an iota): inductor fuses it
            # into a single kernel that reads the logits and writes g, with no (c, V) fp32 buffer
            onehot = torch.arange(z.shape[1], device=z.device).unsqueeze(0) == safe
            g = ((torch.exp(z - lse.unsqueeze(1)) - onehot.to(acc)) * row_scale).to(cd)
        else:  # eager: in place over z, so one (c, V) buffer in acc (and one in cd when narrower)
            p = z.sub_(lse.unsqueeze(1)).exp_()
            p.scatter_add_(1, safe, torch.full_like(lse, -1.0).unsqueeze(1))
            g = p.mul_(row_scale).to(cd)  # (c, V)
            del p
        del z
        if want_h:
            gh.append((g @ w).to(hidden.dtype))  # (c, d)
        if want_w:
            gw = gw + (g.T @ h).to(gw.dtype)  # (V, d), accumulated in fp32
    loss = torch.stack(losses).sum() * scale
    return (loss, torch.cat(gh) if want_h else None,
            gw.to(weight.dtype) if want_w else None)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, ignore_index, cd, want_h, want_w):
        with torch.autocast(hidden.device.type, enabled=False):
            loss, gh, gw = _chunked(hidden, weight, targets, chunk, ignore_index, cd, want_h, want_w)
        ctx.want = (want_h, want_w)
        ctx.save_for_backward(gh if want_h else None, gw if want_w else None)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        gh, gw = ctx.saved_tensors
        want_h, want_w = ctx.want
        return (gh * grad_out.to(gh.dtype) if want_h else None,
                gw * grad_out.to(gw.dtype) if want_w else None, None, None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int | None = None, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets``, computed in
    chunks of tokens so that the full logits never exist; equal to
    ``F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=ignore_index)`` (in value
    and in the gradients of hidden and weight) up to rounding.

    Args:
        hidden: (N, d) float: the final hidden states (e.g. ``TransformerLM(ids, hidden=True)``
            flattened over batch and sequence).
        weight: (V, d) float: the output projection (the LM head; may be tied to the embedding,
            whose gradient then sums both paths as usual).
        targets: (N,) int64 class indices in [0, V), or ``ignore_index`` (left out of the mean).
            Other values fail like ``F.cross_entropy`` (an index error on CPU, a device assert on
            CUDA); they are not checked, which would read the targets back to the host.
        chunk_tokens: tokens per chunk (>= 1; larger than N = one chunk). None:
            :func:`default_chunk_tokens` (chunks of at most ``CHUNK_ELEMENTS`` logits).
        ignore_index: target value that contributes neither loss nor gradient.

    Returns:
        0-dim loss: the mean over non-ignored tokens (nan when every token is ignored, like
        ``F.cross_entropy``), in fp32 (fp64 when the inputs are fp64).

    Dtypes: under autocast the three GEMMs run in the autocast dtype (as ``nn.Linear`` would) and
    the log-sum-exp, softmax and loss in fp32; grad_weight is accumulated over chunks in fp32 and
    returned in the weight's dtype, grad_hidden in the hidden states' dtype. Without autocast the
    GEMMs run in the promoted input dtype.

    Autograd: the forward pass already computes the gradients (no GEMM recomputed); the backward
    pass multiplies them by the incoming gradient. Double backward is not supported. When no
    gradient is needed (``torch.no_grad`` or inputs without ``requires_grad``) only the loss is
    computed. Works under ``torch.compile`` (fullgraph; the chunk loop unrolls for static N).

    Raises:
        ValueError: hidden not (N, d), weight not (V, d) with the same d, targets not (N,), N = 0,
            chunk_tokens not an int >= 1, or the tensors on different devices; all before any work.
        TypeError: hidden / weight not floating point, or targets not an integer tensor.
    """
    if hidden.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"linear_cross_entropy: hidden must be (N, d) and weight (V, d), got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"linear_cross_entropy: hidden's d = {hidden.shape[1]} differs from "
                         f"weight's d = {weight.shape[1]} (weight is (V, d))")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"linear_cross_entropy: targets must be (N,) = ({hidden.shape[0]},), "
                         f"got {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("linear_cross_entropy: no tokens (N = 0)")
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise TypeError(f"linear_cross_entropy: hidden and weight must be floating point, got "
                        f"{hidden.dtype} and {weight.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"linear_cross_entropy: targets must be an integer tensor, got {targets.dtype}")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"linear_cross_entropy: tensors on different devices: hidden "
                         f"{hidden.device}, weight {weight.device}, targets {targets.device}")
    n = hidden.shape[0]
    if chunk_tokens is None:
        chunk = default_chunk_tokens(n, weight.shape[0])
    elif isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"linear_cross_entropy: chunk_tokens must be an int >= 1 or None, got {chunk_tokens!r}")
    else:
        chunk = min(chunk_tokens, n)
    cd = _compute_dtype(hidden, weight)
    grad = torch.is_grad_enabled()
    want_h, want_w = grad and hidden.requires_grad, grad and weight.requires_grad
    if not (want_h or want_w):
        with torch.autocast(hidden.device.type, enabled=False):
            return _chunked(hidden, weight, targets.long(), chunk, ignore_index, cd, False, False)[0]
    return _LinearCrossEntropy.apply(hidden, weight, targets.long(), chunk, ignore_index, cd, want_h, want_w)


__all__ = ["CHUNK_ELEMENTS", "default_chunk_tokens", "linear_cross_entropy"]
