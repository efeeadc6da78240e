"""Token mixers. Every softmax variant computes through :func:`formers.nn.attention.core.attend`."""

from formers.nn.attention import softmax  # noqa: F401  (registers)
from formers.nn.attention import kv  # noqa: F401  (registers)
from formers.nn.attention import identity  # noqa: F401  (registers)
from formers.nn.attention import memory  # noqa: F401  (registers)
from formers.nn.attention import linformer, nystrom, reformer, synthesizer  # noqa: F401  (registers)
from formers.nn.attention import sinkhorn  # noqa: F401  (registers)
from formers.nn.attention import sparse  # noqa: F401  (registers)
from formers.nn.attention import linear  # noqa: F401  (registers)
from formers.nn.attention import performer  # noqa: F401  (registers)
from formers.nn.attention import flow  # noqa: F401  (registers)
from formers.nn.attention import streaming  # noqa: F401  (registers)
from formers.nn.attention.core import attend

__all__ = ["attend"]
