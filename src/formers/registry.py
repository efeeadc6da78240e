"""One typed registry: kind -> name -> :class:`Entry`.

Every part of formers (token mixers, feed-forwards, norms, positions, residual schemes,
cache policies, models, tasks) registers itself here with its constructor, config class,
source paper and capabilities. ``formers list`` prints it; model construction consults the
capabilities and raises a clear error for a combination that cannot work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

KINDS = ("attention", "ffn", "norm", "position", "residual", "cache", "model", "task", "forecaster",
         "surrogate",  # surrogate: PDE surrogate models on grids (FNO, FactFormer, ...)
         "pinn",  # pinn: physics-informed models of coordinates (PINNsFormer, PINN MLP, QRes, FLS)
         "weather",  # weather: WeatherFormer encoders and their fine-tuning heads
         "symbolic")  # symbolic: trajectory -> equation models (ODEFormer variants)


@dataclass(frozen=True)
class Paper:
    """Where a part comes from: ``title``, ``arxiv`` id (or ``""``) and the section/equation."""

    title: str
    arxiv: str = ""
    where: str = ""

    def cite(self) -> str:
        s = self.title + (f" (arXiv {self.arxiv})" if self.arxiv else "")
        return s + (f", {self.where}" if self.where else "")


@dataclass(frozen=True)
class Capabilities:
    """What a part can do. Model construction checks these; nothing falls back silently.

    causal: usable with a causal mask (decoders).  bidirectional: usable without one.
    kv_cache: supports incremental decoding with a cache.  cross: usable as cross-attention.
    state_cache: decodes from a fixed-size recurrent state (cache policy ``recurrent``), not keys.
    score_bias: accepts an additive score bias (ALiBi); False for mixers without a score matrix.
    mixes_tokens: False for a mixer that leaves tokens unmixed (the ``none`` mixer of FFN-only layers).
    needs_attn_matrix: must materialise the attention matrix (no fused kernel).
    compile_safe / export_safe: works under ``torch.compile(fullgraph=True)`` / ONNX export.
    backend: the kernel path in words (shown by ``formers list``).
    """

    causal: bool = True
    bidirectional: bool = True
    mixes_tokens: bool = True
    kv_cache: bool = False
    state_cache: bool = False
    score_bias: bool = True
    cross: bool = False
    varlen: bool = False
    needs_attn_matrix: bool = False
    compile_safe: bool = True
    export_safe: bool = True
    backend: str = "-"


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    config: type | None = None
    paper: Paper | None = None
    caps: Capabilities = field(default_factory=Capabilities)
    summary: str = ""

    def build(self, *args: Any, **kwargs: Any) -> Any:
        return self.obj(*args, **kwargs)


_REG: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}


def register(
    kind: str,
    name: str,
    *,
    config: type | None = None,
    paper: Paper | None = None,
    caps: Capabilities | None = None,
    summary: str = "",
) -> Callable[[Any], Any]:
    """Decorator: register ``obj`` under ``(kind, name)``. Re-registering a name is an error."""
    if kind not in _REG:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {list(KINDS)}")

    def deco(obj: Any) -> Any:
        old = _REG[kind].get(name)
        if old is not None and old.obj is not obj:
            raise ValueError(f"{kind} {name!r} is already registered to {old.obj!r}")
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        _REG[kind][name] = Entry(
            kind, name, obj, config, paper, caps or Capabilities(), summary or (doc[0] if doc else "")
        )
        return obj

    return deco


def unregister(kind: str, name: str) -> None:
    """Remove an entry (tests register throw-away parts and clean up with this)."""
    _REG[kind].pop(name, None)


def get(kind: str, name: str) -> Entry:
    """The entry, or ``ValueError`` naming the unknown name and the known ones."""
    if kind not in _REG:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {list(KINDS)}")
    try:
        return _REG[kind][name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} {name!r}; registered: {sorted(_REG[kind])}"
        ) from None


def names(kind: str) -> list[str]:
    return sorted(get_kind(kind))


def get_kind(kind: str) -> dict[str, Entry]:
    if kind not in _REG:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {list(KINDS)}")
    return dict(_REG[kind])


def entries(kind: str | None = None) -> Iterator[Entry]:
    for k in ([kind] if kind else KINDS):
        yield from (get_kind(k)[n] for n in sorted(get_kind(k)))


def as_row(e: Entry) -> dict[str, str]:
    caps = dataclasses.asdict(e.caps)
    flags = [k for k, v in caps.items() if v is True and k not in ("compile_safe", "export_safe", "mixes_tokens")]
    if e.kind not in ("attention", "cache"):
        flags = []
    return {
        "kind": e.kind,
        "name": e.name,
        "summary": e.summary,
        "paper": e.paper.cite() if e.paper else "-",
        "capabilities": ", ".join(flags) or "-",
        "backend": e.caps.backend,
    }
