"""The next-token distribution, step by step, as the explainer shows it.

Two modes:

* ``full`` (default): exactly :func:`formers.nn.generate.next_token`'s rule over the whole
  vocabulary: logits / temperature, then top-k, then top-p (:func:`formers.nn.generate.filter_logits`),
  then softmax. This is what ``formers generate`` samples from.
* ``top50``: Transformer Explainer's approximation (Cho et al., arXiv 2408.04619; its
  ``src/utils/data.ts``): keep the 50 largest logits only, divide by the temperature, set ranks
  >= k to -inf (top-k by rank, ties broken by order) or cut at cumulative probability p, and
  softmax over those 50. Probabilities are renormalised over the 50, not the vocabulary, so with
  top-p or a flat distribution they differ from ``full``. Offered to reproduce the reference
  tool's numbers; not used by ``formers generate``.

Temperature 0 means greedy in both modes: all probability on the largest logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from formers.nn.generate import SamplingConfig, filter_logits

MODES = ("full", "top50")
REFERENCE_TOP_N = 50


@dataclass
class Distribution:
    """Candidates in order of decreasing logit (the whole vocabulary in ``full`` mode, 50 in
    ``top50``): ``ids`` (n,) int64, ``logits`` (n,), ``scaled`` (n,) = logits / temperature
    (= logits at temperature 0), ``kept`` (n,) bool (survived top-k / top-p), ``probs`` (n,)
    (0 where not kept; sums to 1)."""

    ids: torch.Tensor
    logits: torch.Tensor
    scaled: torch.Tensor
    kept: torch.Tensor
    probs: torch.Tensor

    def head(self, n: int) -> list[dict]:
        """The first ``n`` candidates as JSON-able dicts (id, logit, scaled, kept, prob)."""
        return [{"id": int(i), "logit": float(lg), "scaled": float(s), "kept": bool(k), "prob": float(p)}
                for i, lg, s, k, p in zip(self.ids[:n], self.logits[:n], self.scaled[:n],
                                          self.kept[:n], self.probs[:n])]


def distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 mode: str = "full") -> Distribution:
    """The sampling distribution of one position. logits: (vocab,).

    Raises ValueError for a bad temperature (< 0 or not finite), top_k (< 0), top_p (outside
    (0, 1]), mode (not in :data:`MODES`) or logits that are not 1-D.
    """
    SamplingConfig(max_new_tokens=0, temperature=temperature, top_k=top_k, top_p=top_p)  # checks
    if mode not in MODES:
        raise ValueError(f"sampling mode must be one of {list(MODES)}, got {mode!r}")
    if logits.dim() != 1:
        raise ValueError(f"logits must be (vocab,), got shape {tuple(logits.shape)}")
    logits = logits.detach().float()
    n = logits.numel() if mode == "full" else min(REFERENCE_TOP_N, logits.numel())
    top, ids = torch.topk(logits, n)  # sorted, descending
    if temperature == 0:
        probs = torch.zeros(n)
        probs[0] = 1.0
        return Distribution(ids, top, top.clone(), probs > 0, probs)
    scaled = top / temperature
    if mode == "full":  # the generation path's rule, over the whole vocabulary
        filtered = filter_logits(scaled[None], top_k, top_p)[0]
    else:  # the reference tool: top-k by rank among the 50, top-p renormalised over the 50
        filtered = scaled.clone()
        if 0 < top_k < n:
            filtered[top_k:] = float("-inf")
        filtered = filter_logits(filtered[None], 0, top_p)[0]
    probs = torch.softmax(filtered, dim=-1)
    return Distribution(ids, top, scaled, torch.isfinite(filtered), probs)


def sample(dist: Distribution, generator: torch.Generator | None = None) -> int:
    """Draw one token id from ``dist`` (the largest-logit token when all mass is on it)."""
    return int(dist.ids[torch.multinomial(dist.probs, 1, generator=generator)])
