"""Models built from the backbone: :class:`TransformerLM` (decoder-only causal LM or encoder-only
bidirectional model) and :class:`EncoderDecoder`. :func:`build_model` picks by ``cfg.arch``."""

from __future__ import annotations

import math

import torch
from torch import nn

from formers.nn.cache import KVCache
from formers.nn.config import ModelConfig
from formers.nn.context import Context
from formers.nn.position import build_position
from formers.nn.transformer import Stack
from formers.registry import get


def _init_weights(model: nn.Module, cfg: ModelConfig, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, init_std) for linear and embedding weights, zero biases, and
    residual output projections (attention ``o``, feed-forward ``down``) scaled by 1/sqrt(2L).
    A module with an ``init_like_dense(std)`` method (e.g. a factorised linear) is then given the
    std its dense counterpart would get and initialises its own parameters to match it."""
    residual = 1 / math.sqrt(2 * n_layers)
    for name, p in model.named_parameters():
        if p.dim() < 2 or "norm" in name:
            if name.endswith("bias"):
                nn.init.zeros_(p)
            continue
        std = cfg.init_std * (residual if name.endswith((".o.weight", ".down.weight")) else 1.0)
        nn.init.normal_(p, std=std)
    for name, m in model.named_modules():
        if callable(getattr(m, "init_like_dense", None)):
            m.init_like_dense(cfg.init_std * (residual if name.endswith((".o", ".down")) else 1.0))


class _Embedder(nn.Module):
    """Token embedding plus additive positions (learned / sinusoidal), then dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = build_position(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, offset: int | torch.Tensor,
                ctx_capture: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``offset``: the position of ids[:, 0], an int or (static cache) a 0-dim int64 tensor,
        whose range the cache's fixed buffers bound instead of this check."""
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, seq_len), got shape {tuple(ids.shape)}")
        t = ids.shape[1]
        if isinstance(offset, int) and offset + t > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {offset + t} tokens is longer than max_seq_len = {self.cfg.max_seq_len}"
            )
        # the range check reads values back from the device; skipped inside torch.compile graphs
        if t and not torch.compiler.is_compiling() and (
                int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}), got range "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        positions = (torch.arange(t, device=ids.device) + offset if isinstance(offset, torch.Tensor)
                     else torch.arange(offset, offset + t, device=ids.device))
        x = self.tok(ids)
        pe = self.position.embed(positions)
        if ctx_capture is not None:
            ctx_capture["embed.tok"] = x.detach()
            if pe is not None:
                ctx_capture["embed.pos"] = pe.detach()
        if pe is not None:
            x = x + pe.to(x.dtype)
        return self.drop(x), positions


class TransformerLM(nn.Module):
    """Decoder-only (``arch='decoder'``, causal) or encoder-only (``arch='encoder'``) model with an
    output projection to the vocabulary.

    forward(ids (batch, seq_len) int64, cache=None, key_mask=None, capture=None, hidden=False)
        -> logits (batch, seq_len, vocab_size).
    ``cache`` (from :meth:`new_cache`) enables incremental decoding; ``capture`` is a dict that
    receives named intermediates (it does not change the outputs). ``hidden=True`` skips the head
    and returns the final hidden states (batch, seq_len, d_model) (after the final norm), e.g. for
    :func:`formers.nn.linear_ce.linear_cross_entropy` with ``self.head.weight``.
    Raises ValueError for ids out of range or sequences longer than ``max_seq_len``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch not in ("decoder", "encoder"):
            raise ValueError(f"TransformerLM takes arch 'decoder' or 'encoder', got {cfg.arch!r}")
        self.cfg = cfg
        self.embed = _Embedder(cfg)
        self.stack = Stack(cfg, cfg.n_layers, causal=cfg.arch == "decoder")
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _init_weights(self, cfg, cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tok.weight

    def new_cache(self, static: bool = False, max_len: int | None = None) -> KVCache:
        """An empty cache with each layer's policy; errors if a layer's mixer cannot be cached.
        ``static``: every layer gets the ``static`` policy with buffers of ``max_len`` positions
        (default max_seq_len), see :func:`make_cache`."""
        if self.cfg.arch != "decoder":
            raise ValueError("only decoder models decode incrementally with a cache")
        return make_cache(self.cfg, self.cfg.n_layers, static=static, max_len=max_len)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None,
                key_mask: torch.Tensor | None = None, capture: dict | None = None,
                hidden: bool = False) -> torch.Tensor:
        offset = cache.start(ids.device) if cache is not None else 0
        x, positions = self.embed(ids, offset, capture)
        ctx = Context(positions=positions, causal=self.stack.causal, position=self.embed.position,
                      key_mask=key_mask, capture=capture)
        x = self.stack(x, ctx, cache)
        if cache is not None:
            cache.advance(ids.shape[1])
        if hidden:
            return x
        logits = self.head(x)
        if capture is not None:
            capture["logits"] = logits.detach()
        return logits


def make_cache(cfg: ModelConfig, n_layers: int, static: bool = False,
               max_len: int | None = None) -> KVCache:
    """The decoding cache of ``cfg``: each layer's policy, checked against its mixer.

    A mixer with ``caps.state_cache`` needs the ``recurrent`` policy and only it; ``window`` /
    ``sink-window`` need a mixer whose class tells how far back its pattern reaches
    (``cache_reach(attention_options) -> (sinks, window)``: keys at positions < sinks or within
    the last ``window`` positions) and a policy that keeps at least that much.

    ``static=True`` replaces every layer's policy by ``static`` (fixed buffers of ``max_len``
    positions, default ``cfg.max_seq_len``; :class:`formers.nn.cache.StaticCache`), for
    compiled / CUDA-graph decoding. Raises ValueError for a layer whose policy is not ``auto`` /
    ``full`` / ``static`` (windows, recurrent states), a mixer that does not declare
    ``static_cache = True`` (it must take keys through ``self_attention_keys``), value residual
    ``shared`` (SVFormer) or ``max_len`` outside [1, max_seq_len].
    """
    specs = [cfg.layer_spec(i) for i in range(n_layers)]
    if static:
        max_len = cfg.max_seq_len if max_len is None else max_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= cfg.max_seq_len:
            raise ValueError(f"static cache: max_len must be an int in [1, max_seq_len = "
                             f"{cfg.max_seq_len}], got {max_len!r}")
        for i, s in enumerate(specs):
            entry = get("attention", s.attention)
            if entry.caps.state_cache or s.cache not in ("auto", "full", "static"):
                raise ValueError(f"layer {i}: static cache needs policy 'full' (or 'auto' with a "
                                 f"key/value mixer); attention {s.attention!r} with cache "
                                 f"{s.cache!r} cannot use it (windows and recurrent states keep "
                                 f"their own policies: decode with static_cache=False)")
            if not entry.caps.kv_cache or not getattr(entry.obj, "static_cache", False):
                raise ValueError(f"layer {i}: attention {s.attention!r} does not support the static "
                                 f"cache (supported: mixers with static_cache = True, e.g. softmax, "
                                 f"pattern mixers, kv); decode with static_cache=False")
        if cfg.value_residual == "shared":
            raise ValueError("static cache: value_residual='shared' (SVFormer) is not supported; "
                             "decode with static_cache=False")
        return KVCache(["static"] * n_layers, [{"max_len": max_len}] * n_layers)
    for i, s in enumerate(specs):
        entry = get("attention", s.attention)
        if not entry.caps.kv_cache:
            raise ValueError(f"layer {i}: attention {s.attention!r} does not support a KV cache")
        if s.cache == "auto":
            s = specs[i] = s.replace(cache="recurrent" if entry.caps.state_cache else "full")
        if entry.caps.state_cache != (s.cache == "recurrent"):
            raise ValueError(f"layer {i}: attention {s.attention!r} needs cache policy "
                             f"{'recurrent' if entry.caps.state_cache else 'full, window or sink-window'}, "
                             f"got {s.cache!r}")
        if s.cache in ("window", "sink-window"):
            reach = getattr(entry.obj, "cache_reach", None)
            reach = reach(dict(s.attention_options)) if reach is not None else None
            kept = (s.cache_options.get("sinks", 0), s.cache_options.get("window"))
            if reach is None or reach[0] > kept[0] or reach[1] > kept[1]:
                raise ValueError(f"layer {i}: cache {s.cache!r} with {dict(s.cache_options)} evicts keys "
                                 f"that attention {s.attention!r} may still attend to (it reaches "
                                 f"{'every earlier key' if reach is None else f'sinks={reach[0]}, window={reach[1]}'})")
    return KVCache([s.cache for s in specs], [s.cache_options for s in specs])


class EncoderDecoder(nn.Module):
    """Encoder (bidirectional) + decoder (causal, with cross-attention), shared vocabulary.

    encode(src (batch, src_len), src_mask=None) -> memory (batch, src_len, d_model)
    decode(tgt (batch, tgt_len), memory, memory_mask=None, cache=None) -> logits (batch, tgt_len, vocab)
    forward(src, tgt, src_mask=None) -> decode(tgt, encode(src)).
    The encoder has ``n_encoder_layers`` (default n_layers) blocks, the decoder ``n_layers``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.arch != "encoder-decoder":
            raise ValueError(f"EncoderDecoder takes arch 'encoder-decoder', got {cfg.arch!r}")
        self.cfg = cfg
        n_enc = cfg.n_encoder_layers or cfg.n_layers
        self.embed = _Embedder(cfg)
        self.encoder = Stack(cfg, n_enc, causal=False)
        self.decoder = Stack(cfg, cfg.n_layers, causal=True, cross=True)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        _init_weights(self, cfg, n_enc + cfg.n_layers)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tok.weight

    def new_cache(self, static: bool = False, max_len: int | None = None) -> KVCache:
        return make_cache(self.cfg, self.cfg.n_layers, static=static, max_len=max_len)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
               capture: dict | None = None) -> torch.Tensor:
        x, positions = self.embed(src, 0, None)
        ctx = Context(positions=positions, causal=False, position=self.embed.position,
                      key_mask=src_mask, capture=capture)
        return self.encoder(x, ctx)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
               cache: KVCache | None = None, capture: dict | None = None) -> torch.Tensor:
        offset = cache.start(tgt.device) if cache is not None else 0
        x, positions = self.embed(tgt, offset, capture)
        ctx = Context(positions=positions, causal=True, position=self.embed.position,
                      memory=memory, memory_mask=memory_mask, capture=capture)
        x = self.decoder(x, ctx, cache)
        if cache is not None:
            cache.advance(tgt.shape[1])
        return self.head(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model for ``cfg.arch``; every part and combination is checked before any weight exists."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(cfg).__name__}")
    for i in range(cfg.n_layers):
        spec = cfg.layer_spec(i)
        if spec.cache != "auto":  # bad policies/options fail here, not at decoding
            get("cache", spec.cache).obj(**dict(spec.cache_options))
    if cfg.arch == "encoder-decoder":
        return EncoderDecoder(cfg)
    return TransformerLM(cfg)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
