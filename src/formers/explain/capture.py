"""Named intermediates of a formers language model, for the explainer.

:func:`capture` runs one forward of a :class:`formers.nn.models.TransformerLM` (decoder-only or
encoder-only) and returns every intermediate the explainer shows, without changing the outputs
(the logits equal those of a plain call bit for bit for softmax-attention models; other mixers
switch to their reference path while capturing, equal to float rounding). The names follow
Transformer Explainer (Cho et al., arXiv 2408.04619, §3 "System design"), which shows per head
``attn`` (raw q k^T), ``attn_scaled``, ``attn_masked`` and ``attn_softmax``; ours are
``layer{i}.attn.raw``, ``.scaled``, ``.masked`` and ``.softmax`` (plus ``.biased`` when the model
adds a score bias such as ALiBi). Tensors keep the batch dimension the model produced.

Recorded by the layers themselves (``Context.record``):
  ``embed.tok`` (batch, seq_len, d_model), ``embed.pos`` (seq_len, d_model) for additive positions;
  ``layer{i}.attn.q`` (batch, n_heads, seq_len, head_dim), ``.k`` / ``.v`` (batch, n_kv_heads,
  seq_len, head_dim; after RoPE and the value-residual mix), ``.raw`` ... ``.softmax`` (batch,
  n_heads, seq_len, seq_len); mixers without an attention matrix record what they have (e.g.
  ``layer{i}.flow.*``, ``layer{i}.attn.buckets``); ``layer{i}.moe.*`` routing;
  ``layer{i}.dwa.alpha`` DenseFormer weights; ``layer{i}.value_residual.mix`` (lambda_1, lambda_2);
  ``layer{i}.resid`` (batch, seq_len, d_model) the block output; ``logits`` (batch, seq_len, vocab).
Added here through forward hooks (no change to the model):
  ``stream{i}`` (batch, seq_len, d_model) the residual stream entering block i, i = 0..n_layers
  (``stream{n_layers}`` enters the final norm; with DenseFormer it is the depth-weighted average);
  ``layer{i}.attn.heads`` (batch, seq_len, n_heads * head_dim) the heads' outputs before the
  output projection (mixers with an ``o`` projection); ``layer{i}.mixer.out`` and ``layer{i}.mlp.out``
  (batch, seq_len, d_model); ``layer{i}.mlp.pre`` (batch, seq_len, d_ff) the first projection and
  ``layer{i}.mlp.act`` (batch, seq_len, d_ff) the activations entering the down projection
  (feed-forwards whose ``up`` / ``down`` are ``nn.Linear``: MLP, SwiGLU; not MoE, whose routing is
  recorded as ``moe.*``); ``final.norm`` (batch, seq_len,
  d_model); ``probs`` (batch, seq_len, vocab) = softmax(logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

ATTENTION_STAGES = ("raw", "scaled", "biased", "masked", "softmax")


@dataclass
class LayerInfo:
    """What layer ``index`` is made of and whether it has an attention matrix to show."""

    index: int
    mixer: str
    ffn: str
    attention_matrix: bool
    recorded: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        if self.attention_matrix:
            return ""
        what = ", ".join(self.recorded) or "nothing"
        return (f"not available for this mixer: {self.mixer!r} computes no (query, key) attention "
                f"matrix; it records {what}")


@dataclass
class Trace:
    """The result of :func:`capture`: ``ids`` (batch, seq_len), named ``tensors`` and per-layer info."""

    ids: torch.Tensor
    tensors: dict[str, torch.Tensor]
    layers: list[LayerInfo]

    def implied_attention(self, layer: int, causal: bool = True, atol: float = 1e-4) -> torch.Tensor | None:
        """For a kernel (linear-attention) mixer that records feature maps ``attn.q`` = phi(Q) and
        ``attn.k`` = phi(K) (batch, n_heads, seq_len, feat) and ``attn.v``: the attention matrix the
        mixer implies, w_ij = phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j') over the keys it sees
        (Katharopoulos et al., arXiv 2006.16236, eq. 4-5), (batch, n_heads, seq_len, seq_len).

        Returned only when w V reproduces the heads' recorded output to ``atol`` (so a mixer whose
        normaliser differs, or that records something else, gets None rather than a wrong picture);
        None when the layer has an attention matrix of its own or lacks the tensors."""
        t, p = self.tensors, f"layer{layer}."
        if self.layers[layer].attention_matrix or not all(f"{p}attn.{x}" in t for x in ("q", "k", "v", "heads")):
            return None
        q, k, v = (t[f"{p}attn.{x}"].double() for x in ("q", "k", "v"))
        if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
            return None
        scores = q @ k.transpose(-1, -2)
        if causal:
            scores = scores.tril()
        w = scores / scores.sum(-1, keepdim=True)
        heads = (w @ v).transpose(1, 2).reshape(t[f"{p}attn.heads"].shape)
        if not torch.allclose(heads, t[f"{p}attn.heads"].double(), atol=atol, rtol=1e-3):
            return None
        return w.float()

    def residual_norms(self) -> torch.Tensor:
        """(n_layers + 1, batch, seq_len) L2 norm of the residual stream entering each block and the final norm."""
        return torch.stack([self.tensors[f"stream{i}"].float().norm(dim=-1)
                            for i in range(len(self.layers) + 1)])


def _check_model(model: nn.Module) -> None:
    from formers.nn.models import TransformerLM

    if not isinstance(model, TransformerLM):
        raise TypeError(f"the explainer takes a formers TransformerLM (decoder-only or encoder-only "
                        f"language model), got {type(model).__name__}")


@torch.no_grad()
def capture(model: nn.Module, ids: torch.Tensor) -> Trace:
    """Run ``model`` on ``ids`` (batch, seq_len) int64 in eval mode and collect its intermediates.

    Returns a :class:`Trace` whose ``tensors`` hold the names listed in the module docstring.
    Raises TypeError for a model that is not a TransformerLM and ValueError (from the model) for
    ids out of range or longer than ``max_seq_len``. The model's train/eval mode is restored.
    """
    _check_model(model)
    tensors: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str, which: str):
        def pre(_m, args):
            tensors[name] = args[0].detach()

        def post(_m, _args, out):
            tensors[name] = out.detach()

        return pre if which == "in" else post

    blocks = model.stack.blocks
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(keep(f"stream{i}", "in")))
        handles.append(block.mixer.register_forward_hook(keep(f"layer{i}.mixer.out", "out")))
        handles.append(block.ffn.register_forward_hook(keep(f"layer{i}.mlp.out", "out")))
        if isinstance(getattr(block.mixer, "o", None), nn.Module):
            handles.append(block.mixer.o.register_forward_pre_hook(keep(f"layer{i}.attn.heads", "in")))
        # per-token MLPs (MLP, SwiGLU: nn.Linear up / down); MoE experts work on routed buffers
        if isinstance(getattr(block.ffn, "up", None), nn.Linear):
            handles.append(block.ffn.up.register_forward_hook(keep(f"layer{i}.mlp.pre", "out")))
        if isinstance(getattr(block.ffn, "down", None), nn.Linear):
            handles.append(block.ffn.down.register_forward_pre_hook(keep(f"layer{i}.mlp.act", "in")))
    handles.append(model.stack.norm_f.register_forward_pre_hook(keep(f"stream{len(blocks)}", "in")))
    handles.append(model.stack.norm_f.register_forward_hook(keep("final.norm", "out")))
    was_training = model.training
    model.eval()
    try:
        logits = model(ids, capture=tensors)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    tensors["probs"] = torch.softmax(logits.float(), dim=-1)
    layers = []
    for i in range(len(blocks)):
        spec = model.cfg.layer_spec(i)
        prefix = f"layer{i}."
        own = sorted(k[len(prefix):] for k in tensors if k.startswith(prefix))
        layers.append(LayerInfo(i, spec.attention, spec.ffn, f"{prefix}attn.softmax" in tensors,
                                [k for k in own if not k.startswith(("mixer.", "mlp.", "resid"))]))
    return Trace(ids=ids, tensors=tensors, layers=layers)
