"""Typed dataclass configs <-> plain dicts (JSON checkpoints, hydra configs)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance as nested plain dicts/lists (tuples become lists), JSON-serialisable."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclass fields.

    Unknown keys raise a ValueError naming them, so a typo in a config never passes silently.
    Validation happens in each dataclass' `__post_init__`.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"config for {cls.__name__} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value) for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v) for v in value)
    if origin is dict and isinstance(value, Mapping):
        _, item = typing.get_args(hint) or (Any, Any)
        return {str(k): _convert(item, v) for k, v in value.items()}
    return value
