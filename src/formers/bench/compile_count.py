"""Count torch.compile (TorchDynamo) compilations around a piece of work.

Reads TorchDynamo's process-wide counters, which exist unchanged in torch 2.4 .. 2.13:

* ``torch._dynamo.utils.counters["stats"]["unique_graphs"]``: graphs compiled so far (a first
  compilation of a function and every recompilation after a guard failure each add one; a graph
  break adds more than one);
* ``torch._dynamo.utils.guard_failures``: per code object, the reason of each failed guard that
  led to a recompilation (e.g. ``tensor 'query' size mismatch at index 2. expected 256, actual
  512``: a new sequence length; a later call with the dimension marked dynamic compiles no more).

The counts are deltas between entering and leaving the block, so they are per case when the
process is shared (the CUDA sweep) and start from zero in a fresh process (a forked CPU case).
Where torch has no dynamo, ``graphs`` is None.
"""

from __future__ import annotations

import re
from typing import Any

MAX_REASONS = 3


def _state() -> tuple[int, dict[Any, int]] | None:
    try:
        from torch._dynamo.utils import counters, guard_failures
    except Exception:  # pragma: no cover - torch without dynamo
        return None
    return int(counters["stats"]["unique_graphs"]), {k: len(v) for k, v in guard_failures.items()}


class CompileCount:
    """``with CompileCount() as cc: ...`` then ``cc.graphs`` (graphs compiled inside the block, or
    None without dynamo) and ``cc.reasons`` (up to ``MAX_REASONS`` distinct recompilation reasons,
    first line, without the compile id)."""

    def __init__(self) -> None:
        self.graphs: int | None = None
        self.reasons: list[str] = []
        self._start: tuple[int, dict[Any, int]] | None = None

    def __enter__(self) -> "CompileCount":
        self._start = _state()
        return self

    def __exit__(self, *exc) -> None:
        end = _state()
        if self._start is None or end is None:
            return
        self.graphs = end[0] - self._start[0]
        from torch._dynamo.utils import guard_failures

        seen: list[str] = []
        for code, n in end[1].items():
            for reason in guard_failures[code][self._start[1].get(code, 0):n]:
                line = re.sub(r"^\S+: ", "", str(reason).strip().splitlines()[0])[:200]
                if line not in seen:
                    seen.append(line)
        self.reasons = seen[:MAX_REASONS]

    def record(self) -> dict[str, Any]:
        """``{"compiles": graphs, "recompile_reasons": reasons}`` for a result record."""
        return {"compiles": self.graphs, "recompile_reasons": self.reasons}
