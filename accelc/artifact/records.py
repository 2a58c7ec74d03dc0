"""Frozen dataclasses <-> JSON values, checked against their type hints. Stdlib only.

A record's fields are read from a JSON object by their type hints: str, int, float (an int is
accepted and kept as it is), bool, Literal[...], X | None, tuple[X, ...], tuple[X, Y],
dict[str, X], Any (a JSON value kept as it is) and nested records. Unknown, missing and mistyped
fields raise `Invalid` with the JSON path of the value, e.g. `inputs[0].shape[1]`.

JSON presence follows the defaults: a field whose default is None or False may be absent and is
left out when it holds that default (how the compiler has always written them), unless its
metadata says `null=True` (then it is written as null); every other field must be present. A
record may set `EXTRA` to the name of a dict field that takes the keys it does not declare (a
pass's own statistics), written back beside the declared ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from functools import lru_cache
from typing import Any, ClassVar, Literal, Union


class Invalid(ValueError):
    """A JSON value that does not fit its record; `path` says where (empty: the whole value)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message

    def under(self, prefix: str) -> Invalid:
        return Invalid(_join(prefix, self.path), self.message)


def nullable(**kwargs) -> Any:
    """A field that may be absent (None) but is written as null when None."""
    return dataclasses.field(default=None, metadata={"null": True}, **kwargs)


class Record:
    """Base of the typed records: `parse` JSON values into one, `to_json` back."""

    EXTRA: ClassVar[str | None] = None

    @classmethod
    def parse(cls, data: Any, path: str = ""):
        """The record for `data`, or Invalid naming the path of the first value that does not fit."""
        return _record(cls, data, path)

    def to_json(self) -> dict:
        return dump(self)


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


@lru_cache(maxsize=None)
def _fields(cls) -> tuple[tuple[str, Any, bool, bool], ...]:
    """(name, type hint, required in JSON, written as null when None) per declared field."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        optional = f.default is None or f.default is False
        rows.append((f.name, hints[f.name], not optional, bool(f.metadata.get("null"))))
    return tuple(rows)


def _record(cls, data: Any, path: str):
    if not isinstance(data, dict):
        raise Invalid(path, f"expected an object, got {_kind(data)}")
    fields = _fields(cls)
    declared = {name for name, *_ in fields if name != cls.EXTRA}
    unknown = [key for key in data if key not in declared]
    if unknown and cls.EXTRA is None:
        close = difflib.get_close_matches(str(unknown[0]), sorted(declared), n=1)
        raise Invalid(_join(path, str(unknown[0])), "unknown field" + (f" (did you mean '{close[0]}'?)"
                                                                        if close else ""))
    values = {}
    for name, hint, required, _ in fields:
        if name == cls.EXTRA:
            values[name] = {key: data[key] for key in unknown}
        elif name in data:
            values[name] = _value(hint, data[name], _join(path, name))
        elif required:
            raise Invalid(_join(path, name), "missing field")
    try:
        return cls(**values)
    except Invalid as exc:  # a record's own check (__post_init__) names a path inside it
        raise exc.under(path) from None


def _value(hint: Any, data: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return data
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record(hint, data, path)
    if origin in (Union, types.UnionType):
        return _union(hint, args, data, path)
    if origin is Literal:
        if data not in args or isinstance(data, bool) != isinstance(args[0], bool):
            raise Invalid(path, f"expected one of {', '.join(map(repr, args))}, got {data!r:.60}")
        return data
    if origin is tuple:
        return _tuple(args, data, path)
    if origin is dict:
        if not isinstance(data, dict):
            raise Invalid(path, f"expected an object, got {_kind(data)}")
        return {key: _value(args[1], item, f"{path}[{key!r}]") for key, item in data.items()}
    return _scalar(hint, data, path)


def _union(hint, args, data: Any, path: str) -> Any:
    if data is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    if len(options) == 1:
        return _value(options[0], data, path)
    for option in options:
        try:
            return _value(option, data, path)
        except Invalid:
            continue
    raise Invalid(path, f"expected {' or '.join(_name(o) for o in args)}, got {_kind(data)} {data!r:.40}")


def _tuple(args, data: Any, path: str) -> tuple:
    if not isinstance(data, list):
        raise Invalid(path, f"expected a list, got {_kind(data)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_value(args[0], item, f"{path}[{i}]") for i, item in enumerate(data))
    if len(data) != len(args):
        raise Invalid(path, f"expected a list of {len(args)}, got {len(data)} item(s)")
    return tuple(_value(arg, item, f"{path}[{i}]") for i, (arg, item) in enumerate(zip(args, data)))


def _scalar(hint: Any, data: Any, path: str) -> Any:
    accepted = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}.get(hint)
    if accepted is None:
        raise TypeError(f"records cannot hold {hint!r}")  # a programming error in a record's declaration
    if not isinstance(data, accepted) or (hint is not bool and isinstance(data, bool)):
        raise Invalid(path, f"expected {_name(hint)}, got {_kind(data)}")
    return data


def _name(hint: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            type(None): "null"}.get(hint, str(hint).replace("typing.", ""))


def dump(value: Any) -> Any:
    """JSON values (dicts, lists, numbers, strings) for a record, tuple, dict or scalar."""
    if isinstance(value, Record):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == value.EXTRA:
                out.update(dump(item))
            elif not (item is f.default and item in (None, False) and not f.metadata.get("null")):
                out[f.name] = dump(item)
        return out
    if isinstance(value, (tuple, list)):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {key: dump(item) for key, item in value.items()}
    return value
