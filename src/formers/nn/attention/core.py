"""The one attention core: every softmax-attention variant computes through :func:`attend`.

``attend`` uses :func:`torch.nn.functional.scaled_dot_product_attention` (flash /
memory-efficient / math kernels) whenever the call does not need the attention matrix, and an
explicit reference path otherwise (``backend="reference"`` or ``return_weights=True``). Both
paths take the same masks and biases and agree to float rounding (tested in the conformance
suite). ``CALLS`` counts which path ran, so tests can assert the fast path is taken.

Sparse patterns (a ``pattern`` over absolute positions) take a third path on CUDA: FlexAttention
(``torch.nn.attention.flex_attention``, compiled) with a ``BlockMask`` built from the pattern, so
blocks that the pattern empties are skipped; elsewhere they become a dense boolean mask for SDPA.
:func:`choose_path` says which path a call takes (testable without a GPU); ``backend="flex"``
forces it (on CPU it runs flex's unfused eager form: slow, for tests).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter, OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa", "flex", "reference")
CALLS: Counter[str] = Counter()
# ``auto`` takes the flex path only for this many queries or more: below it a dense (q_len, k_len)
# mask is small, and decoding steps would otherwise build a new block mask for every offset.
FLEX_MIN_Q = 128
# dynamo graphs kept for the compiled flex_attention (see _flex_attend)
FLEX_RECOMPILE_LIMIT = 64
# torch.compile backend of the flex path on CPU ("" = flex's eager form); CUDA always compiles
# with inductor. "eager" / "aot_eager" / "inductor" exercise the compiled path and its
# recompilations on CPU (forward only: compiled CPU flex has no backward in torch 2.13).
FLEX_CPU_COMPILE = ""


# Device types on which SDPA with an explicit mask leaves out the cuDNN backend (see
# ``_sdpa_masked``). A module constant so that tests can exercise the switch on CPU.
NO_CUDNN_WITH_MASK: tuple[str, ...] = ("cuda",)


def _sdpa_masked(q, k, v, mask, dropout_p, scale):
    """``F.scaled_dot_product_attention`` with an explicit ``attn_mask``, without cuDNN attention.

    cuDNN's SDPA backward (the default masked kernel on H100/H200 since torch 2.11) returns NaN in
    ``grad_q`` when an explicit mask is passed and the key length is 64 mod 128, once a query row's
    logsumexp is below ln(FLT_MAX) = -88.7 (pytorch/pytorch#196678): the forward and the loss stay
    finite, the step's gradient norm is NaN. ODEFormer hit it on the H200 (both divergences were
    on the batches whose encoder length was 192). Flash cannot take a mask, so this leaves
    memory-efficient attention (or math). Only calls that will be differentiated are steered:
    without autograd (inference, decoding) the default choice stays, since the forward is correct
    and excluding cuDNN there made the compiled GPT-2 decode step 3x slower on the H200
    (0.64 -> 1.89 ms at batch 1). The backends still enabled are kept (a caller that
    enabled cuDNN alone keeps it); under ``torch.compile`` the flags cannot be read, so the list
    is flash, memory-efficient, math.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    run = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,  # noqa: E731
                                                 scale=scale)
    if q.device.type not in NO_CUDNN_WITH_MASK or not (
            torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return run()  # no backward will run (e.g. decoding): cuDNN's forward is fine and fastest
    kinds = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    if not torch.compiler.is_compiling():
        cu = torch.backends.cuda
        if not cu.cudnn_sdp_enabled():
            return run()
        on = (cu.flash_sdp_enabled(), cu.mem_efficient_sdp_enabled(), cu.math_sdp_enabled())
        kinds = tuple(kind for kind, enabled in zip(kinds, on) if enabled)
        if not kinds:  # cuDNN alone was asked for
            return run()
    with sdpa_kernel(list(kinds)):
        return run()


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, k_len) bool, True where query i may see key j.

    Queries are aligned to the end of the keys (query i sits at key position k_len - q_len + i),
    which is what cached decoding needs.
    """
    i = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i


# --------------------------------------------------------------------------- FlexAttention path
_FLEX: dict[str, object] = {}
_BLOCK_MASKS: OrderedDict = OrderedDict()   # (pattern, causal, tq, tk, q0, k0, device) -> BlockMask
_BLOCK_MASK_CACHE_SIZE = 64


def flex_available() -> bool:
    """True when ``torch.nn.attention.flex_attention`` imports in this torch."""
    if "ok" not in _FLEX:
        try:
            from torch.nn.attention import flex_attention as fa

            _FLEX.update(ok=True, create_block_mask=fa.create_block_mask, eager=fa.flex_attention)
        except Exception:  # pragma: no cover - old torch
            _FLEX["ok"] = False
    return bool(_FLEX["ok"])


def choose_path(*, backend: str = "auto", return_weights: bool = False, pattern: object = None,
                bias: torch.Tensor | None = None, dropout_p: float = 0.0, q_len: int = 1,
                device_type: str = "cpu", flex: bool | None = None) -> str:
    """Which path :func:`attend` takes: ``"reference"``, ``"flex"`` or ``"sdpa"``.

    ``auto`` takes flex only for a ``pattern`` on CUDA with flex available (``flex``; None asks
    :func:`flex_available`), no dropout (flex has none), no bias that needs a gradient (a bias
    without one becomes a ``score_mod``) and at least ``FLEX_MIN_Q`` queries; else SDPA with a
    dense boolean mask. A key mask is supported on the flex path (its block mask is then built
    per call, uncached). ``backend="flex"`` forces flex and raises where it cannot run.
    """
    if backend == "reference" or return_weights:
        return "reference"
    flex = flex_available() if flex is None else flex
    if backend == "flex":
        why = ("torch.nn.attention.flex_attention is not available" if not flex else
               "dropout" if dropout_p > 0 else
               "a bias that needs a gradient" if bias is not None and bias.requires_grad else None)
        if why:
            raise ValueError(f"attend: backend='flex' cannot run with {why}; use 'auto' or 'sdpa'")
        return "flex"
    if (backend == "auto" and pattern is not None and flex and device_type == "cuda"
            and dropout_p == 0 and (bias is None or not bias.requires_grad) and q_len >= FLEX_MIN_Q):
        return "flex"
    return "sdpa"


def _flex_attend(q, k, v, *, causal, bias, key_mask, pattern, q_pos, k_pos, scale):
    """flex_attention with a BlockMask of ``pattern`` (and causal / key mask); q, k, v (B, H, T, D).

    mask_mod(b, h, i, j) maps query/key indices to absolute positions (``q0 + i`` when the
    positions are contiguous, else a lookup in q_pos / k_pos) and evaluates the pattern there.
    Block masks are cached per (pattern, causal, lengths, first positions, device) when the
    positions are contiguous and no key mask is given (patterns should be hashable objects)."""
    flex_available()
    bsz, h, tq, _ = q.shape
    tk, shift = k.shape[-2], k.shape[-2] - q.shape[-2]
    if pattern is None:
        q_pos, k_pos = torch.arange(tq, device=q.device) + shift, torch.arange(tk, device=q.device)
        pattern = _all
    ends = torch.stack([q_pos[0], q_pos[-1], k_pos[0], k_pos[-1]])
    q0, q1, k0, k1 = ends.tolist()
    contiguous = q1 - q0 == tq - 1 and k1 - k0 == tk - 1  # positions increase strictly
    # the offsets enter mask_mod as tensors: a captured Python int would be a compile-time
    # constant, and every new offset (a prefill chunk, a cached step) a recompilation
    q0_t, k0_t = ends[0], ends[2]

    def mask_mod(b, hh, i, j):
        ok = pattern(i + q0_t, j + k0_t) if contiguous else pattern(q_pos[i], k_pos[j])
        if causal:
            ok = ok & (j <= i + shift)
        if key_mask is not None:
            ok = ok & key_mask[b, j]
        return ok

    key = (pattern, causal, tq, tk, q0, k0, str(q.device)) if contiguous and key_mask is None else None
    block_mask = _BLOCK_MASKS.get(key) if key is not None else None
    if block_mask is None:
        make = _FLEX["create_block_mask"]
        kw = {"_compile": True} if q.is_cuda and "_compile" in inspect.signature(make).parameters else {}
        block_mask = make(mask_mod, None if key_mask is None else bsz, None, tq, tk, device=q.device, **kw)
        if key is not None:
            _BLOCK_MASKS[key] = block_mask
            while len(_BLOCK_MASKS) > _BLOCK_MASK_CACHE_SIZE:
                _BLOCK_MASKS.popitem(last=False)
    else:
        _BLOCK_MASKS.move_to_end(key)
    score_mod = None
    if bias is not None:
        full_bias = bias.to(q.dtype).expand(bsz, h, tq, tk)

        def score_mod(score, b, hh, i, j):
            return score + full_bias[b, hh, i, j]
    compile_backend = "inductor" if q.is_cuda else FLEX_CPU_COMPILE
    if compile_backend:
        key = ("compiled", compile_backend)
        if key not in _FLEX:
            # flex_attention is one code object for every pattern, grad mode and length that
            # reaches it, and dynamo keeps 8 graphs per code object by default; past that it
            # silently runs flex's unfused form, which materialises the scores (seen on the H200
            # in a sweep over mixers). Raise the limit once, for the whole process.
            dyn = torch._dynamo.config
            dyn.recompile_limit = max(dyn.recompile_limit, FLEX_RECOMPILE_LIMIT)
            # dynamic after a shape change
            _FLEX[key] = torch.compile(_FLEX["eager"], backend=compile_backend)
        fn = _FLEX[key]
    else:  # flex's unfused eager form (materialises the scores): for tests on CPU
        fn = _FLEX["eager"]
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def _all(qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
    return qp >= kp - kp  # True, with the broadcast shape / tensor type of the arguments


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    bias: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    pattern: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
    stages: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention softmax(q k^T * scale + bias + mask) v.

    Args:
        q: (batch, n_heads, q_len, head_dim).
        k, v: (batch, n_kv_heads, k_len, head_dim); n_kv_heads must divide n_heads (GQA/MQA).
        causal: mask keys after each query (bottom-right aligned when q_len < k_len).
        bias: additive float bias broadcastable to (batch, n_heads, q_len, k_len) (e.g. ALiBi).
        key_mask: (batch, k_len) bool, True = keep (padding mask).
        pattern: a sparsity pattern ``pattern(q_pos[:, None], k_pos[None, :]) -> bool`` over
            absolute positions, True = may attend (sliding window, global tokens, blocks ...);
            applied on top of ``causal`` and ``key_mask``. Positions, not indices, so a cache that
            evicts keys keeps the pattern right.
        q_pos, k_pos: (q_len,), (k_len,) int64 absolute positions; needed with ``pattern``.
        scale: defaults to 1/sqrt(head_dim).
        backend: ``auto`` (SDPA unless weights are requested; FlexAttention for a pattern on CUDA,
            see :func:`choose_path`), ``sdpa`` (dense masks), ``flex`` or ``reference``.
        return_weights: also return the (batch, n_heads, q_len, k_len) probabilities (reference).
        stages: a dict that the reference path fills (for the explainer) with the steps from
            scores to probabilities, each (batch, n_heads, q_len, k_len): ``raw`` = q k^T,
            ``scaled`` = raw * scale, ``biased`` = scaled + bias (only with a bias), ``masked``
            (-inf where a key may not be seen: causal mask, pattern, padding) and ``softmax``.
            Needs ``return_weights=True`` (the reference path).
    Returns:
        (out, weights): out is (batch, n_heads, q_len, head_dim); weights is None unless asked.
    Raises:
        ValueError: unknown backend, mismatched shapes, ``sdpa`` with ``return_weights``, or a
            ``pattern`` without positions of the right lengths.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attend: backend {backend!r} is not one of {list(BACKENDS)}")
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attend: expected q (B,H,Tq,D) and k=v (B,Hkv,Tk,D), got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if pattern is not None and (q_pos is None or k_pos is None or q_pos.shape != (q.shape[-2],)
                                or k_pos.shape != (k.shape[-2],)):
        raise ValueError(f"attend: a pattern needs q_pos ({q.shape[-2]},) and k_pos ({k.shape[-2]},), "
                         f"got {None if q_pos is None else tuple(q_pos.shape)} and "
                         f"{None if k_pos is None else tuple(k_pos.shape)}")
    h, hkv = q.shape[1], k.shape[1]
    if h % hkv:
        raise ValueError(f"attend: n_kv_heads = {hkv} must divide n_heads = {h}")
    if stages is not None and not return_weights:
        raise ValueError("attend: stages are filled by the reference path; pass return_weights=True")
    if backend in ("sdpa", "flex") and return_weights:
        raise ValueError(f"attend: backend={backend!r} cannot return attention weights; use 'reference'")
    if hkv != h:
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    tq, tk = q.shape[-2], k.shape[-2]

    path = choose_path(backend=backend, return_weights=return_weights, pattern=pattern, bias=bias,
                       dropout_p=dropout_p, q_len=tq, device_type=q.device.type)
    if path == "flex":
        if not torch.compiler.is_compiling():
            CALLS["flex"] += 1
        out = _flex_attend(q, k, v, causal=causal and tq > 1, bias=bias, key_mask=key_mask,
                           pattern=pattern, q_pos=q_pos, k_pos=k_pos, scale=scale)
        return out, None

    if (path == "sdpa" and bias is None and causal and pattern is None and key_mask is None
            and tq == tk and tq > 1):
        # the fast path: no explicit mask, so SDPA may take its flash / cuDNN kernels (and no
        # (tq, tk) mask is built and thrown away on every call)
        if not torch.compiler.is_compiling():
            CALLS["sdpa"] += 1
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, scale=scale)
        return out, None

    # One boolean "may attend" mask (or None), shared by both paths.
    allowed = None
    if causal and tq > 1:
        allowed = causal_mask(tq, tk, q.device)
    if pattern is not None:
        pm = pattern(q_pos[:, None], k_pos[None, :]).to(torch.bool)
        allowed = pm if allowed is None else (allowed & pm)
    if key_mask is not None:
        km = key_mask[:, None, None, :].to(torch.bool)
        allowed = km if allowed is None else (allowed & km)

    if path == "sdpa":
        if not torch.compiler.is_compiling():
            CALLS["sdpa"] += 1
        mask = allowed
        if bias is not None:
            mask = bias.to(q.dtype)
            if allowed is not None:
                mask = mask.masked_fill(~allowed, float("-inf"))
        out = (_sdpa_masked(q, k, v, mask, dropout_p, scale) if mask is not None else
               F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale))
        return out, None

    if not torch.compiler.is_compiling():
        CALLS["reference"] += 1
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32 at least, float64 kept
    raw = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2))
    scores = raw * scale
    if stages is not None:
        stages.update(raw=raw, scaled=scores)
    if bias is not None:
        scores = scores + bias.to(acc)
        if stages is not None:
            stages["biased"] = scores
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if allowed is not None:  # a query that may see no key gets zeros (as SDPA does), not NaN
        weights = weights.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    if stages is not None:
        stages.update(masked=scores.expand_as(weights), softmax=weights)
    p = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    out = torch.matmul(p, v.to(acc)).to(q.dtype)
    return out, (weights if return_weights else None)
