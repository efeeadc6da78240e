"""The explainer: what happens inside any formers language model (Transformer Explainer,
Cho et al., arXiv 2408.04619, generalised from its one GPT-2 to every model formers trains).

* :mod:`formers.explain.capture`: named intermediates of a forward pass.
* :mod:`formers.explain.sampling`: the next-token distribution step by step (temperature, top-k,
  top-p over the full vocabulary, or the reference tool's top-50 approximation).
* :mod:`formers.explain.server`: ``formers explain RUN`` serves a local page and a JSON API.
"""

from formers.explain.capture import LayerInfo, Trace, capture

__all__ = ["LayerInfo", "Trace", "capture"]
