"""Feed-forward (channel mixer) parts."""

from formers.nn.ffn import mlp  # noqa: F401  (registers)
from formers.nn.ffn import matformer  # noqa: F401  (registers)
from formers.nn.ffn import memory  # noqa: F401  (registers)
from formers.nn.ffn import moe  # noqa: F401  (registers)
