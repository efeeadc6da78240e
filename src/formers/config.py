"""The base of every config dataclass: validation helpers and plain-dict / JSON / YAML round trips.

Configs are the single source of a model's or a run's shape. They are plain dataclasses;
``Config.from_dict`` rebuilds nested dataclasses (and lists of them) and rejects unknown keys,
so a typo in a YAML file is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X``, ``X | None``, ``Optional[X]``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _build(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    dc = _dataclass_of(tp)
    if dc is not None and isinstance(value, dict):
        return dc.from_dict(value) if issubclass(dc, Config) else dc(**value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) in (list, tuple):
                return _build(arg, value)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_build(arg, v) for v in value]
        return tuple(items) if origin is tuple else items
    return value


class Config:
    """Mixin for dataclass configs: ``to_dict``, ``from_dict``, ``save``, ``load``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown field(s) {unknown}; allowed: {sorted(fields)}"
            )
        hints = typing.get_type_hints(cls)
        check_types(cls.__name__, data, hints)
        kwargs = {k: _build(hints[k], v) for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def save(self, path: str | Path) -> None:
        """Write as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
        from formers.atomic import write_text

        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return cls.from_dict(data)


def check_positive(owner: str, **values: float | int | None) -> None:
    """Raise ``ValueError`` naming the first field whose value is not > 0 (None is skipped)."""
    for name, v in values.items():
        if v is not None and not v > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {v!r}")


def check_choice(owner: str, name: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{owner}.{name} = {value!r} is not one of {allowed}")


def check_options(owner: str, fn: Any, options: dict[str, Any], reserved: typing.Iterable[str] = ()) -> None:
    """Raise ``ValueError`` if ``options`` holds a keyword that callable ``fn`` does not take, and
    ``TypeError`` if a value does not fit the parameter's annotation.

    ``reserved`` names parameters filled by the caller (not user options); ``self`` always is.
    A callable that takes ``**kwargs`` accepts everything.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p in params if p not in ("self", *reserved)]
    bad = [k for k in options if k not in allowed]
    if bad:
        raise ValueError(f"{owner} does not take option(s) {bad}; allowed: {allowed}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # annotations that cannot be resolved: names are checked, types are not
        hints = {}
    check_types(owner, options, hints)


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (int, float, bool, str, Literal, Optional /
    unions, list/tuple/dict of those, dataclasses; anything else is accepted). An int is a valid
    float; a bool is not a valid int or float; a float is not a valid int."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [Any]
        return isinstance(value, (list, tuple)) and all(conforms(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, dict))
    return True


def check_types(owner: str, values: dict[str, Any], hints: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming the first value that does not fit its annotation."""
    for name, value in values.items():
        tp = hints.get(name, Any)
        if not conforms(value, tp):
            shown = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            raise TypeError(f"{owner}.{name} = {value!r} ({type(value).__name__}) is not a valid {shown}")
