"""Feed-forward (channel mixer) parts."""

from formers.nn.ffn import mlp  # noqa: F401  (registers)
