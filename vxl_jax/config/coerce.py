"""The one config builder: a strict ``dict -> frozen dataclass`` conversion driven by the type hints.

Used for the model sections (:mod:`vxl_jax.config.schema`), the ``train`` / ``data`` / ``checkpoint``
sections (:mod:`vxl_jax.train.config`) and the beacon fields of a Hugging Face ``config.json``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from vxl_jax.config.errors import ConfigError


def build(cls, d: Mapping[str, Any] | None, where: str = ""):
    """Strict ``dict -> dataclass`` (nested sections included): unknown keys and values of the wrong type raise
    :class:`ConfigError` naming the field; a ``validate()`` method, when the class has one, is called."""
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) in {where or 'config'}: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        out = cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where or 'config'}: {e}") from e
    if hasattr(out, "validate"):
        out.validate()
    return out


def _coerce(tp, value, where: str):
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "1e-6" / "1e6" (no dot) as strings; accept them as numbers.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
