"""One generation path: KV-cached decoding with greedy, temperature, top-k and top-p sampling.

The loop keeps its state in preallocated tensors (:class:`DecodeState`: the output ids, the column
of the last token, which rows have stopped) and every step updates them in place, so a step has
no host synchronisation and, with the ``static`` cache policy (fixed key/value buffers written at
a position tensor, :class:`formers.nn.cache.StaticCache`), the same shapes and graph inputs at
every position: ``generate(..., static_cache=True, compile=True)`` compiles one decoding step with
``torch.compile`` (``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA) and replays it per token
without recompiling. Stop tokens are checked on the host every ``check_every`` steps only; the
output is cut where the last row stopped, so it equals a check after every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from formers.config import Config


@dataclass
class SamplingConfig(Config):
    """How the next token is chosen.

    temperature: 0 means greedy (argmax); otherwise logits are divided by it (> 0).
    top_k: keep the k most likely tokens (0 = all). top_p: keep the smallest set of tokens whose
    probability reaches p (1.0 = all), the most likely token always kept (Holtzman et al. 2020).
    max_new_tokens: how many tokens to add. stop_tokens: ids that end a sequence.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. logits: (batch, vocab)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        # drop a token when the mass of the tokens before it already reaches top_p (the 1e-6
        # absorbs float32 rounding of the running sum at an exact boundary)
        drop = (probs.cumsum(-1) - probs) >= top_p - 1e-6
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, s: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose one token per row from (batch, vocab) logits -> (batch,) int64."""
    if s.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / s.temperature, s.top_k, s.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class DecodeState:
    """The loop's tensors, updated in place by every step (so their addresses stay fixed).

    out: (batch, length) int64 ids (prompt, then generated tokens); col: 0-dim int64, the column of
    the last written token; done: (batch,) bool rows that emitted a stop token; first_all: 0-dim
    int64, the column at which every row had stopped (-1 before); stop: (n_stop,) int64 or None.
    """

    def __init__(self, batch: int, length: int, device: torch.device, stop_tokens: list[int]) -> None:
        self.out = torch.zeros(batch, length, dtype=torch.long, device=device)
        self.col = torch.zeros((), dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.first_all = torch.full((), -1, dtype=torch.long, device=device)
        self.stop = torch.tensor(stop_tokens, dtype=torch.long, device=device) if stop_tokens else None

    def start(self, ids: torch.Tensor) -> None:
        """Reset for a new prompt ``ids`` (batch, prompt_len)."""
        self.out[:, :ids.shape[1]].copy_(ids)
        self.col.fill_(ids.shape[1] - 1)
        self.done.zero_()
        self.first_all.fill_(-1)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.out, self.col, self.done, self.first_all, self.stop) if t is not None]


def _emit(st: DecodeState, logits: torch.Tensor, s: SamplingConfig, generator: torch.Generator | None) -> None:
    """Choose the next token from (batch, vocab) logits and write it after column ``st.col``;
    rows that already stopped repeat their last token."""
    tok = next_token(logits, s, generator)
    if st.stop is not None:
        prev = st.out.index_select(1, st.col)[:, 0]
        tok = torch.where(st.done, prev, tok)
        st.done.logical_or_(torch.isin(tok, st.stop))
        st.first_all.copy_(torch.where((st.first_all < 0) & st.done.all(), st.col + 1, st.first_all))
    st.col.add_(1)
    st.out.index_copy_(1, st.col.view(1), tok[:, None])


def _decode_step(model: torch.nn.Module, cache: Any, st: DecodeState, s: SamplingConfig,
                 generator: torch.Generator | None, memory: torch.Tensor | None) -> None:
    """One cached step: feed the last token (batch, 1), emit the next. Static shapes when ``cache``
    is static: this is the function ``compile=True`` compiles."""
    tok = st.out.index_select(1, st.col.view(1))
    if memory is not None:
        logits = model.decode(tok, memory, cache=cache)[:, -1]
    else:
        logits = model(tok, cache=cache)[:, -1]
    _emit(st, logits, s, generator)


_COMPILED: dict[tuple, Any] = {}
# the static buffers hold prompt + new tokens rounded up to this (at most max_seq_len), so that
# nearby lengths share one compiled graph
STATIC_ROUND = 256


def _compiled_step(options: dict[str, Any]):
    key = tuple(sorted(options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_decode_step, **options)
    return _COMPILED[key]


def _compile_options(compile: bool | dict, device: torch.device) -> dict[str, Any]:
    if isinstance(compile, dict):
        return {"dynamic": False, **compile}
    return {"dynamic": False, **({"mode": "reduce-overhead"} if device.type == "cuda" else {})}


class _StaticSession:
    """A static cache and loop state kept on the model between calls (``model._formers_static``),
    so later generations reuse the same buffers: compiled graphs (and CUDA graphs) are replayed,
    not re-recorded. A call reuses the kept session when its batch size, device and stop tokens
    are the same and its buffers are long enough (as HF's static cache does; exactly as long when
    ``cache_len`` is given); otherwise the session is replaced (one is kept)."""

    def __init__(self, model: torch.nn.Module, batch: int, max_len: int, device: torch.device,
                 stop: list[int]) -> None:
        self.key = (batch, str(device), tuple(stop))
        self.length = max_len
        self.cache = model.new_cache(static=True, max_len=max_len)
        self.state = DecodeState(batch, max_len, device, stop)
        mark = getattr(torch._dynamo, "mark_static_address", None)
        if mark is not None:
            for t in self.state.tensors():
                mark(t, guard=False)


def _static_session(model: torch.nn.Module, batch: int, max_len: int, device: torch.device,
                    stop: list[int], exact: bool = False) -> _StaticSession:
    key = (batch, str(device), tuple(stop))
    sess = model.__dict__.get("_formers_static")
    if sess is None or sess.key != key or sess.length < max_len or (exact and sess.length != max_len):
        model.__dict__["_formers_static"] = None  # free the old buffers first
        sess = model.__dict__["_formers_static"] = _StaticSession(model, batch, max_len, device, stop)
    return sess


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, sampling: SamplingConfig | None = None,
             *, src: torch.Tensor | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, static_cache: bool = False, compile: bool | dict = False,
             cache_len: int | None = None, check_every: int = 16) -> torch.Tensor:
    """Continue ``ids`` (batch, prompt_len) by up to ``max_new_tokens`` tokens.

    For an encoder-decoder model pass ``src`` (batch, src_len); ``ids`` is then the decoder prompt
    (e.g. a start token). Rows that emit a stop token keep emitting it; decoding ends when every
    row has stopped (checked on the host every ``check_every`` steps; the output is cut at the
    step where the last row stopped, so it is the same as checking every step).

    Args:
        use_cache: decode with the model's KV cache (False recomputes the whole prefix per token).
        static_cache: use the ``static`` cache policy in every layer (fixed key/value buffers of
            prompt + new tokens rounded up to ``STATIC_ROUND``, at most max_seq_len; kept on the
            model and reused by later calls of the same batch size that fit in them). Needs a key/value mixer in every
            layer with policy ``full``/``auto`` (:func:`formers.nn.models.make_cache`).
        compile: compile the per-token step with ``torch.compile`` (needs ``static_cache``): True
            = ``mode="reduce-overhead"`` (CUDA graphs) on CUDA and the default mode elsewhere,
            always ``dynamic=False``; a dict is passed to ``torch.compile`` (e.g.
            ``{"backend": "aot_eager"}``). The prefill runs eagerly. A ``generator`` makes
            sampling a graph break (greedy has none).
        cache_len: length of the static buffers (prompt + new tokens <= cache_len <= max_seq_len;
            default: prompt + new tokens rounded up to ``STATIC_ROUND``). One length for calls of
            different lengths means one compiled graph per batch size.
    Returns (batch, prompt_len + n_new) int64.
    Raises ValueError for an empty prompt, a total length beyond the model's max_seq_len, stop
    tokens outside the vocabulary, ``compile`` without ``static_cache``, ``static_cache`` without
    ``use_cache``, a bad ``cache_len`` or ``check_every``, or a model whose layers cannot use
    the static cache.
    """
    s = sampling or SamplingConfig()
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"prompt ids must be (batch, prompt_len >= 1), got shape {tuple(ids.shape)}")
    bad = [t for t in s.stop_tokens if not 0 <= t < model.cfg.vocab_size]
    if bad:
        raise ValueError(f"stop tokens {bad} are outside the vocabulary [0, {model.cfg.vocab_size})")
    max_len = model.cfg.max_seq_len
    if ids.shape[1] + s.max_new_tokens > max_len:
        raise ValueError(f"prompt_len {ids.shape[1]} + max_new_tokens {s.max_new_tokens} exceeds "
                         f"max_seq_len = {max_len}")
    if isinstance(compile, bool):
        compiled = compile
    elif isinstance(compile, dict):
        compiled = True
    else:
        raise ValueError(f"generate: compile must be a bool or a dict of torch.compile options, got {compile!r}")
    if compiled and not static_cache:
        raise ValueError("generate: compile=True needs static_cache=True (the full cache grows its "
                         "tensors every step, so every token would be a new graph)")
    if static_cache and not use_cache:
        raise ValueError("generate: static_cache=True needs use_cache=True")
    if cache_len is not None and (not static_cache or isinstance(cache_len, bool)
                                  or not isinstance(cache_len, int)
                                  or not ids.shape[1] + s.max_new_tokens <= cache_len <= max_len):
        raise ValueError(f"generate: cache_len needs static_cache=True and an int in [prompt_len + "
                         f"max_new_tokens = {ids.shape[1] + s.max_new_tokens}, max_seq_len = {max_len}], "
                         f"got {cache_len!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"generate: check_every must be an int >= 1, got {check_every!r}")
    batch, prompt_len, n_new = ids.shape[0], ids.shape[1], s.max_new_tokens
    if n_new == 0:
        return ids
    was_training = model.training
    model.eval()
    seq2seq = src is not None
    memory = model.encode(src) if seq2seq else None

    if static_cache:
        length = cache_len or min(max_len, -(-(prompt_len + n_new) // STATIC_ROUND) * STATIC_ROUND)
        sess = _static_session(model, batch, length, ids.device, list(s.stop_tokens), exact=cache_len is not None)
        cache, st = sess.cache, sess.state
        cache.reset()
    else:
        cache = model.new_cache() if use_cache else None
        st = DecodeState(batch, prompt_len + n_new, ids.device, list(s.stop_tokens))
    st.start(ids)
    step = _compiled_step(_compile_options(compile, ids.device)) if compiled else _decode_step

    def logits_of(tokens: torch.Tensor, c) -> torch.Tensor:
        if seq2seq:
            return model.decode(tokens, memory, cache=c)[:, -1]
        return model(tokens, cache=c)[:, -1]

    _emit(st, logits_of(ids, cache), s, generator)  # prefill and the first new token
    made = 1
    while made < n_new:
        if st.stop is not None and made % check_every == 0 and bool(st.done.all()):
            break
        if cache is None:  # no cache: the whole prefix again
            _emit(st, logits_of(st.out[:, :prompt_len + made], None), s, generator)
        else:
            step(model, cache, st, s, generator, memory)
        made += 1
    end = prompt_len + made
    if st.stop is not None:
        first = int(st.first_all)
        if first >= 0:
            end = min(end, first + 1)
    model.train(was_training)
    return st.out[:, :end].clone()
