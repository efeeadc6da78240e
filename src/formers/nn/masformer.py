"""MASFormer: mixed attention spans as a layer pattern (Zhang, Ram, Hawkins, Zha, Zhao, "You Need to
Attend More, but Not Necessarily at Every Layer", EMNLP Findings 2023, arXiv 2310.12442, §3).

In a stack of L layers, a set F of l layers uses full attention and the other L - l use sparse
attention of span b: block-sparse (non-overlapping blocks of b, Fig. 1a; the paper's main choice)
or a sliding window of b (Fig. 1b). Everything else (parameters, feed-forwards) is unchanged, so a
dense model converts by changing its layer pattern. Attention-score cost
l * n^2 + (L - l) * n * b (:func:`masformer_score_pairs`).

Everything free is config, not code: :func:`masformer_config` writes a per-layer
:class:`~formers.nn.config.LayerSpec` list (``softmax`` at the full layers, ``block-sparse`` /
``local`` with the span at the others, each sparse layer with a ``window`` cache of b keys), which
is saved with the model and can be edited by hand. The presets ``masformer`` and
``masformer-window`` are this function at fixed settings.

Deviations / unverified: the paper's l, b and the placement of the full layers are not public
(abstract and captions only); the presets' choices (l = max(1, L // 4) at the bottom, b = 64) are
ours. The sparse layers' decoding cache is a rolling window of b keys (it does not reset at
block boundaries), so it holds at most b - 1 keys between steps, the masked ones included.
"""

from __future__ import annotations

from typing import Sequence

from formers.nn.attention import sparse as _sparse  # noqa: F401  (registers the sparse mixers)
from formers.nn.config import ModelConfig
from formers.nn.presets import preset
from formers.registry import Paper

PAPER = Paper("You Need to Attend More, but Not Necessarily at Every Layer (MASFormer)", "2310.12442",
              "§3, Fig. 1")
PLACEMENTS = ("bottom", "top", "even")
SPARSE = {"block-sparse": "block", "local": "window"}


def full_layer_indices(n_layers: int, n_full: int, placement: str | Sequence[int] = "bottom") -> list[int]:
    """The indices of the l = ``n_full`` full-attention layers among ``n_layers``.

    ``placement``: ``bottom`` (layers 0..l-1), ``top`` (the last l), ``even`` (layer
    floor((j + 1/2) L / l) for j < l: spread evenly), or an explicit list of distinct indices
    (then ``n_full`` must equal its length). Raises ValueError for anything else.
    """
    if isinstance(n_full, bool) or not isinstance(n_full, int) or not 0 <= n_full <= n_layers:
        raise ValueError(f"masformer: n_full must be an int in [0, n_layers = {n_layers}], got {n_full!r}")
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(f"masformer: placement {placement!r} is not one of {list(PLACEMENTS)} "
                             "or a list of layer indices")
        if placement == "bottom":
            return list(range(n_full))
        if placement == "top":
            return list(range(n_layers - n_full, n_layers))
        return [int((j + 0.5) * n_layers / n_full) for j in range(n_full)]
    idx = list(placement)
    if (len(set(idx)) != len(idx) or len(idx) != n_full
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_layers for i in idx)):
        raise ValueError(f"masformer: placement {idx!r} must be {n_full} distinct layer indices in "
                         f"[0, {n_layers})")
    return sorted(idx)


def masformer_config(c: ModelConfig, n_full: int = 1, placement: str | Sequence[int] = "bottom",
                     sparse: str = "block-sparse", span: int = 64, window_cache: bool = True) -> ModelConfig:
    """``c`` with MASFormer's layer pattern: full ``softmax`` at :func:`full_layer_indices`,
    ``sparse`` (``block-sparse`` with block = span, or ``local`` with window = span) elsewhere.

    Feed-forward choices of ``c`` are kept per layer. ``window_cache``: the sparse layers decode
    with a ``window`` cache of ``span`` keys (O(b) memory), the full ones with a ``full`` cache.
    Raises ValueError for an unknown sparse kind or a bad span / placement.
    """
    if sparse not in SPARSE:
        raise ValueError(f"masformer: sparse {sparse!r} is not one of {sorted(SPARSE)}")
    if isinstance(span, bool) or not isinstance(span, int) or span < 1:
        raise ValueError(f"masformer: span must be an int >= 1, got {span!r}")
    full = set(full_layer_indices(c.n_layers, n_full, placement))
    layers = []
    for i in range(c.n_layers):
        base = c.layer_spec(i)
        if i in full:
            layers.append(base.replace(attention="softmax", attention_options={}, cache="auto",
                                       cache_options={}))
        else:
            layers.append(base.replace(
                attention=sparse, attention_options={SPARSE[sparse]: span},
                cache="window" if window_cache else "auto",
                cache_options={"window": span} if window_cache else {}))
    return c.replace(layers=layers)


# ----------------------------------------------------------------------------------- FLOPs
def masformer_flops_formula(n_layers: int, n_full: int, n: int, span: int) -> int:
    """The paper's attention-score cost l * n^2 + (L - l) * n * b (score entries, all layers)."""
    return n_full * n * n + (n_layers - n_full) * n * span


def _pairs_one(attention: str, options: dict, n: int, causal: bool) -> int:
    """Exact number of allowed (query, key) pairs of one layer at length n (analytic)."""
    if attention == "softmax":
        return n * (n + 1) // 2 if causal else n * n
    if attention == "block-sparse":
        b = options.get("block", 64)
        sizes = [b] * (n // b) + ([n % b] if n % b else [])
        return sum(s * (s + 1) // 2 if causal else s * s for s in sizes)
    if attention == "local":
        w = options.get("window", 64)
        if causal:
            return sum(min(q + 1, w) for q in range(n))
        return sum(min(q, w - 1) + min(n - 1 - q, w - 1) + 1 for q in range(n))
    raise ValueError(f"masformer: no analytic pair count for attention {attention!r} "
                     "(known: softmax, block-sparse, local)")


def masformer_score_pairs(cfg: ModelConfig, n: int, causal: bool | None = None) -> int:
    """Allowed (query, key) score entries per sequence summed over the layers of ``cfg``
    (exact, analytic). ``causal`` defaults to the architecture (decoder: causal). Without the
    causal mask and with b dividing n this is exactly l * n^2 + (L - l) * n * b."""
    causal = cfg.arch == "decoder" if causal is None else causal
    return sum(_pairs_one(s.attention, dict(s.attention_options), n, causal)
               for s in (cfg.layer_spec(i) for i in range(cfg.n_layers)))


def masformer_attention_flops(cfg: ModelConfig, n: int, causal: bool | None = None) -> int:
    """Attention FLOPs per sequence: 4 * head_dim * n_heads per allowed pair (Q K^T and P V, each
    one multiply-add = 2 FLOPs per entry and head dimension)."""
    return 4 * cfg.head_dim * cfg.n_heads * masformer_score_pairs(cfg, n, causal)


# ------------------------------------------------------------------------------------ presets
@preset("masformer", PAPER, "MASFormer: full attention in the bottom L/4 layers, block-sparse (b=64) elsewhere")
def masformer(c: ModelConfig) -> ModelConfig:
    """l = max(1, L // 4) full layers at the bottom, block-sparse b = 64 elsewhere (window caches)."""
    return masformer_config(c, n_full=max(1, c.n_layers // 4), placement="bottom",
                            sparse="block-sparse", span=64)


@preset("masformer-window", PAPER,
        "MASFormer: full attention in the bottom L/4 layers, sliding window (w=64) elsewhere")
def masformer_window(c: ModelConfig) -> ModelConfig:
    """l = max(1, L // 4) full layers at the bottom, sliding window w = 64 elsewhere (Fig. 1b)."""
    return masformer_config(c, n_full=max(1, c.n_layers // 4), placement="bottom",
                            sparse="local", span=64)


__all__ = [
    "PLACEMENTS", "full_layer_indices", "masformer_attention_flops", "masformer_config",
    "masformer_flops_formula", "masformer_score_pairs",
]
