"""Synthetic tasks (registry kind ``task``): ``majority`` (On the Expressivity Role of LayerNorm in
Transformers' Attention, arXiv 2305.02582), ``reverse`` and ``sort`` (Key-Value Transformer, arXiv
2305.19129); the long-range tasks ``listops``, ``recall``, ``long-copy`` and ``block-cross``
(:mod:`formers.synthetic.longrange`). Importing this package registers them (and the
LayerNorm-geometry presets)."""

from formers.nn import layernorm_geometry  # noqa: F401  (registers presets ln-no-projection, ln-no-scale)
from formers.synthetic import tasks  # noqa: F401  (registers the tasks)
from formers.synthetic import longrange  # noqa: F401  (registers listops, recall, long-copy, block-cross)
from formers.synthetic.tasks import MajorityTask, ReverseTask, SortTask, majority_sequences

__all__ = ["MajorityTask", "ReverseTask", "SortTask", "majority_sequences"]
