"""One generation path: KV-cached decoding with greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, sampling: SamplingConfig | None = None,
             *, src: torch.Tensor | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue ``ids`` (batch, prompt_len) by up to ``max_new_tokens`` tokens.

    For an encoder-decoder model pass ``src`` (batch, src_len); ``ids`` is then the decoder prompt
    (e.g. a start token). Rows that emit a stop token keep emitting it; decoding ends when every
    row has stopped. Returns (batch, prompt_len + n_new) int64.
    Raises ValueError for an empty prompt or a total length beyond the model's max_seq_len.
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
    was_training = model.training
    model.eval()
    seq2seq = src is not None
    memory = model.encode(src) if seq2seq else None

    def step(tokens: torch.Tensor, cache) -> torch.Tensor:
        if seq2seq:
            return model.decode(tokens, memory, cache=cache)[:, -1]
        return model(tokens, cache=cache)[:, -1]

    cache = model.new_cache() if use_cache else None
    out = ids
    logits = step(ids, cache)
    stop = torch.tensor(s.stop_tokens, device=ids.device, dtype=torch.long)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(s.max_new_tokens):
        tok = next_token(logits, s, generator)
        if len(s.stop_tokens):
            tok = torch.where(done, out[:, -1], tok)
            done = done | torch.isin(tok, stop)
        out = torch.cat([out, tok[:, None]], dim=1)
        if bool(done.all()) or out.shape[1] - ids.shape[1] == s.max_new_tokens:
            break
        logits = step(tok[:, None] if use_cache else out, cache)
    model.train(was_training)
    return out
