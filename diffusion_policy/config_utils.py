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


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclass fields.

    Unknown keys raise a ValueError naming them, and a value of the wrong type (`horizon: "16"`) a
    TypeError naming the field, so a typo in a config never passes silently. `where` prefixes the
    field names in messages (e.g. "network."). Validation of values happens in each dataclass'
    `__post_init__`.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"config {where or cls.__name__} must be a mapping, got {type(data).__name__}: {data!r:.80}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {[where + u for u in unknown]} for {cls.__name__}; "
                         f"valid options: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, where + name) for name, value in data.items()}
    return cls(**kwargs)


SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(hint: Any, value: Any, name: str) -> Any:
    """`value` as type `hint` (lists become tuples, mappings dataclasses); TypeError naming `name` if it is not one."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value, name) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f"{name}.")
    if origin is tuple or hint is tuple:
        _expect(isinstance(value, (list, tuple)), name, value, "a list")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_convert(args[0], v, f"{name}[{i}]") if args else v for i, v in enumerate(value))
    if origin is dict or hint is dict:
        _expect(isinstance(value, Mapping), name, value, "a mapping")
        _, item = typing.get_args(hint) or (Any, Any)
        return {str(k): _convert(item, v, f"{name}.{k}") for k, v in value.items()}
    if hint in SCALARS:
        # bool is an int in Python, and an int is a fine float; nothing else converts silently.
        ok = type(value) is hint or (hint is float and type(value) is int)
        _expect(ok, name, value, SCALARS[hint])
        return float(value) if hint is float else value
    return value


def _expect(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise TypeError(f"config field {name!r} is {value!r:.80} ({type(value).__name__}); expected {what}")
