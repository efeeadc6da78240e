"""Feed-forward (channel mixer) parts."""

from formers.nn.ffn import mlp  # noqa: F401  (registers)
from formers.nn.ffn import matformer  # noqa: F401  (registers)
