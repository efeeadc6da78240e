"""Copy our GPT-2-style model's weights into Hugging Face ``transformers``' ``GPT2LMHeadModel``, so
a benchmark can run HF's ``generate`` on exactly our function (issue 8: decoding against HF).

The HF model is built by :func:`formers.bench.peers.hf_gpt2` at the shape of ``model.cfg`` (same
vocabulary, positions, width, depth, heads, feed-forward width, LayerNorm eps, tied embeddings and
the tanh GELU ``gelu_pytorch_tanh``, which is the same ``F.gelu(approximate="tanh")`` call as our
``mlp``). The parameters map one for one:

=====================================  ======================================================
ours (``TransformerLM``)               HF ``GPT2LMHeadModel``
=====================================  ======================================================
``embed.tok.weight``                   ``transformer.wte.weight`` (and ``lm_head`` when tied)
``embed.position.table.weight``        ``transformer.wpe.weight``
``stack.blocks.i.norm1``               ``transformer.h.i.ln_1`` (weight, bias)
``mixer.q / k / v`` (Linear)           ``attn.c_attn``: Conv1D (d_model, 3 d_model) =
                                       ``cat([W_q, W_k, W_v], 0).T``, bias ``cat`` of the three
``mixer.o``                            ``attn.c_proj``: ``W_o.T``
``stack.blocks.i.norm2``               ``transformer.h.i.ln_2``
``ffn.up`` / ``ffn.down``              ``mlp.c_fc`` / ``mlp.c_proj``: transposed (Conv1D stores
                                       (in, out), ``nn.Linear`` (out, in))
``stack.norm_f``                       ``transformer.ln_f``
``head.weight``                        ``lm_head.weight`` (untied models only)
=====================================  ======================================================

Both compute softmax(q k^T / sqrt(head_dim)) with a causal mask, pre-LayerNorm blocks and learned
absolute positions, so the logits agree to float rounding (tested to 1e-5 in fp32).
"""

from __future__ import annotations

import torch
from torch import nn

from formers.bench.peers import check_gpt2_shape, hf_gpt2


def _linear_checks(model: nn.Module) -> None:
    for i, blk in enumerate(model.stack.blocks):
        if type(blk.mixer).__name__ != "SoftmaxAttention" or type(blk.ffn).__name__ != "MLP":
            raise ValueError(f"to_hf_gpt2: layer {i} has {type(blk.mixer).__name__} / "
                             f"{type(blk.ffn).__name__}; GPT-2 needs SoftmaxAttention / MLP")
        if blk.mixer.v is None:
            raise ValueError(f"to_hf_gpt2: layer {i} has no value projection")


@torch.no_grad()
def to_hf_gpt2(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module:
    """A ``transformers.GPT2LMHeadModel`` holding a copy of ``model``'s weights (same device and
    dtype as ``model``, eval mode, ``config.use_cache = True``).

    Args:
        model: our :class:`formers.nn.models.TransformerLM` with a GPT-2-style config (decoder,
            learned positions, pre-norm LayerNorm with biases, softmax MHA, GELU ``mlp``, plain
            residual, no value residual; see :func:`formers.bench.peers.check_gpt2_shape`).
        attn_implementation: HF attention kernel (``sdpa``, ``eager``, ...).
    Returns:
        the HF model; ``hf(input_ids).logits`` (batch, seq_len, vocab) equals ``model(input_ids)``
        to float rounding.
    Raises:
        ImportError: transformers is missing (names ``pip install 'formers[peers]'``).
        ValueError: the config or the modules are not GPT-2-shaped, or the model has no biases.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "stack"):
        raise ValueError(f"to_hf_gpt2: expected a formers TransformerLM, got {type(model).__name__}")
    check_gpt2_shape(cfg, "to_hf_gpt2")
    _linear_checks(model)
    ref = model.embed.tok.weight
    hf = hf_gpt2(cfg, attn_implementation=attn_implementation).to(device=ref.device, dtype=ref.dtype)
    tr = hf.transformer

    def put(dst: torch.Tensor, src: torch.Tensor) -> None:
        if dst.shape != src.shape:
            raise ValueError(f"to_hf_gpt2: shape {tuple(src.shape)} cannot fill {tuple(dst.shape)}")
        dst.copy_(src)

    def norm(dst: nn.Module, src: nn.Module) -> None:
        put(dst.weight, src.weight)
        put(dst.bias, src.bias)
        dst.eps = src.eps

    put(tr.wte.weight, model.embed.tok.weight)
    put(tr.wpe.weight, model.embed.position.table.weight)
    for blk, h in zip(model.stack.blocks, tr.h):
        a = blk.mixer
        norm(h.ln_1, blk.norm1)
        put(h.attn.c_attn.weight, torch.cat([a.q.weight, a.k.weight, a.v.weight], 0).T)
        put(h.attn.c_attn.bias, torch.cat([a.q.bias, a.k.bias, a.v.bias], 0))
        put(h.attn.c_proj.weight, a.o.weight.T)
        put(h.attn.c_proj.bias, a.o.bias)
        norm(h.ln_2, blk.norm2)
        put(h.mlp.c_fc.weight, blk.ffn.up.weight.T)
        put(h.mlp.c_fc.bias, blk.ffn.up.bias)
        put(h.mlp.c_proj.weight, blk.ffn.down.weight.T)
        put(h.mlp.c_proj.bias, blk.ffn.down.bias)
    norm(tr.ln_f, model.stack.norm_f)
    if cfg.tie_embeddings:
        if hf.lm_head.weight.data_ptr() != tr.wte.weight.data_ptr():
            raise ValueError("to_hf_gpt2: HF's lm_head is not tied to wte although tie_embeddings=True")
    else:
        put(hf.lm_head.weight, model.head.weight)
    hf.config.use_cache = True
    return hf.eval()


__all__ = ["to_hf_gpt2"]
