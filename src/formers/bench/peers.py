"""Peer implementations built at the shape of a formers :class:`~formers.nn.config.ModelConfig`, for
benchmarks that measure them in the same process as our model (issue 8).

* :func:`hf_gpt2`: Hugging Face ``transformers`` ``GPT2LMHeadModel`` (SDPA attention).
* :func:`xtransformers_lm`: ``x-transformers`` ``TransformerWrapper(Decoder(attn_flash=True))``.

Both are optional (the ``[peers]`` extra: ``pip install 'formers[peers]'``) and imported lazily;
a missing package raises :class:`ImportError` naming the extra. Every peer is called as
``peer_logits(model, ids) -> (batch, seq_len, vocab)`` so a benchmark gives each the same step.

Shape correspondence (our GPT-2-style ``baseline``: learned positions, pre-LayerNorm, tanh-GELU
MLP, biases, tied embeddings):

* HF GPT-2 has the same parameters one for one (fused ``c_attn`` = our q, k, v), so the counts are
  equal exactly (tested).
* x-transformers has no biases in the attention projections and bias-free LayerNorms (gamma
  only), and an exact (erf) GELU; it has ``n_layers * 6 * d_model + d_model`` fewer parameters
  than ours (:func:`xtransformers_param_gap`). Its learned absolute positions are scaled by
  ``d_model ** -0.5``; the amount of work per token is otherwise the same.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch
from torch import nn

from formers.nn.config import ModelConfig

PEERS = ("hf", "xtransformers")
# peer name -> (the import module, the pip package)
PACKAGES = {"hf": ("transformers", "transformers"), "xtransformers": ("x_transformers", "x-transformers")}
INSTALL_HINT = "pip install 'formers[peers]'"


def peer_available(name: str) -> bool:
    """True when the package of peer ``name`` (``hf`` / ``xtransformers``) can be imported."""
    if name not in PACKAGES:
        raise ValueError(f"unknown peer {name!r}; known: {list(PEERS)}")
    return importlib.util.find_spec(PACKAGES[name][0]) is not None


def require_peer(name: str) -> None:
    """Raise ImportError naming ``pip install 'formers[peers]'`` when peer ``name``'s package is missing."""
    if not peer_available(name):
        module, pkg = PACKAGES[name]
        raise ImportError(f"peer {name!r} needs the {pkg} package (module {module!r}), which is not "
                          f"installed: {INSTALL_HINT}")


def check_gpt2_shape(cfg: ModelConfig, who: str) -> None:
    """Raise ValueError unless ``cfg`` is a plain GPT-2-style decoder that ``who`` can copy:
    decoder, learned positions, pre-norm LayerNorm, softmax attention with as many key/value heads
    as query heads, GELU ``mlp``, plain residual, no value residual, no per-layer pattern."""
    wrong = []
    for field, want in (("arch", "decoder"), ("position", "learned"), ("norm", "layernorm"),
                        ("prenorm", True), ("attention", "softmax"), ("ffn", "mlp"),
                        ("residual", "plain"), ("value_residual", "none"), ("layers", None)):
        if getattr(cfg, field) != want:
            wrong.append(f"{field}={getattr(cfg, field)!r} (needs {want!r})")
    if cfg.kv_heads != cfg.n_heads:
        wrong.append(f"n_kv_heads={cfg.n_kv_heads} (needs n_heads = {cfg.n_heads})")
    if wrong:
        raise ValueError(f"{who}: the config is not a GPT-2-style baseline: " + ", ".join(wrong))


def hf_gpt2(cfg: ModelConfig, attn_implementation: str = "sdpa") -> nn.Module:
    """A randomly initialised ``transformers.GPT2LMHeadModel`` with the shape of ``cfg``.

    vocab_size, max_seq_len (n_positions), d_model (n_embd), n_layers, n_heads, d_ff (n_inner),
    norm_eps, tie_embeddings are copied; dropout is ``cfg.dropout`` everywhere; the activation is
    ``gelu_pytorch_tanh`` (``F.gelu(approximate="tanh")``, the same call as our ``mlp``; HF's
    ``gelu_new`` is the same function written out in Python ops, equal only to float rounding). ``attn_implementation``: ``sdpa`` (default), ``eager``
    or any value transformers accepts. Call with ``model(input_ids).logits`` ((batch, seq, vocab)).

    Raises:
        ImportError: transformers is missing (names ``pip install 'formers[peers]'``).
        ValueError: ``cfg`` is not a GPT-2-style baseline (:func:`check_gpt2_shape`), or it has
            no biases (GPT-2's linears and norms always have them).
    """
    require_peer("hf")
    check_gpt2_shape(cfg, "hf_gpt2")
    if not cfg.bias:
        raise ValueError("hf_gpt2: GPT-2 always has biases; got ModelConfig.bias=False")
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = cfg.vocab_size - 1
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.ffn_hidden,
        activation_function="gelu_pytorch_tanh", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, layer_norm_epsilon=cfg.norm_eps,
        initializer_range=cfg.init_std, tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=eos, eos_token_id=eos, use_cache=False,
    )
    return GPT2LMHeadModel._from_config(hf_cfg, attn_implementation=attn_implementation)


def xtransformers_lm(cfg: ModelConfig, flash: bool = True) -> nn.Module:
    """An ``x_transformers.TransformerWrapper(attn_layers=Decoder(...))`` with the shape of ``cfg``:
    ``num_tokens`` = vocab_size, ``max_seq_len``, ``dim`` = d_model, ``depth`` = n_layers,
    ``heads`` = n_heads, ``attn_dim_head`` = head_dim, ``ff_mult`` = d_ff / d_model, absolute
    learned positions, ``tie_embedding`` = tie_embeddings, ``attn_flash`` = ``flash`` (SDPA).
    Call with ``model(ids)`` -> logits (batch, seq_len, vocab).

    Raises:
        ImportError: x-transformers is missing (names ``pip install 'formers[peers]'``).
        ValueError: ``cfg`` is not a GPT-2-style baseline (:func:`check_gpt2_shape`).
    """
    require_peer("xtransformers")
    check_gpt2_shape(cfg, "xtransformers_lm")
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=cfg.vocab_size, max_seq_len=cfg.max_seq_len, tie_embedding=cfg.tie_embeddings,
        emb_dropout=cfg.dropout, use_abs_pos_emb=True,
        attn_layers=Decoder(dim=cfg.d_model, depth=cfg.n_layers, heads=cfg.n_heads,
                            attn_dim_head=cfg.head_dim, attn_flash=flash,
                            ff_mult=cfg.ffn_hidden / cfg.d_model, attn_dropout=cfg.dropout,
                            ff_dropout=cfg.dropout),
    )


def xtransformers_param_gap(cfg: ModelConfig) -> int:
    """How many more parameters our baseline has than :func:`xtransformers_lm` at ``cfg``: per layer
    the 4 attention biases (4 d_model) and the 2 LayerNorm biases (2 d_model), plus the final
    LayerNorm's bias (d_model); 0 without biases."""
    return (6 * cfg.n_layers + 1) * cfg.d_model if cfg.bias else 0


def _hf_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def _plain_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)


BUILDERS: dict[str, Callable[..., nn.Module]] = {"hf": hf_gpt2, "xtransformers": xtransformers_lm}
LOGITS: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "hf": _hf_logits, "xtransformers": _plain_logits}
LABELS = {"hf": "HF transformers GPT2LMHeadModel (sdpa)",
          "xtransformers": "x-transformers TransformerWrapper(Decoder(attn_flash=True))"}


def build_peer(name: str, cfg: ModelConfig, **kwargs: Any) -> nn.Module:
    """Peer ``name`` (``hf`` | ``xtransformers``) at the shape of ``cfg`` (ValueError for an unknown name)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown peer {name!r}; known: {list(PEERS)}")
    return BUILDERS[name](cfg, **kwargs)


def peer_logits(name: str, model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seq_len, vocab) of peer ``name`` on ``ids`` (batch, seq_len) int64."""
    return LOGITS[name](model, ids)


__all__ = ["PEERS", "INSTALL_HINT", "peer_available", "require_peer", "check_gpt2_shape", "hf_gpt2",
           "xtransformers_lm", "xtransformers_param_gap", "build_peer", "peer_logits"]
