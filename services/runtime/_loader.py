"""Turns a YAML document plus environment overrides into frozen, typed dataclasses.

The schema is the dataclasses themselves: field names are keys, type hints are types, defaults
make a key optional. One rule for the environment: ``PBXMESH_`` + the key path in upper case,
joined by ``_`` (``connector.lease_ttl`` -> ``PBXMESH_CONNECTOR_LEASE_TTL``). Scalars are taken as
they are, lists of scalars as comma-separated values, anything else as a YAML flow value.
Every error names the key; a value is quoted only when the key does not hold a secret.

Every string (and Secret) is checked by one rule (services/runtime/text.py): no control
characters, and at most ``MAX_TEXT`` characters unless the field's metadata sets ``max_length``
(``dataclasses.field(default="", metadata=max_length(128))``). Every integer must fit in 32 bits
(the sections check their own tighter bounds).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

import yaml

from services.runtime.text import MAX_TEXT, problem

ENV_PREFIX = "PBXMESH_"
MAX_LENGTH = "max_length"  # field metadata: the longest string the field takes
MAX_INT = 2**31 - 1

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or environment value that cannot be used; the message names the key."""


def max_length(limit: int) -> dict[str, int]:
    """Field metadata: a string field longer than ``limit`` characters is an error."""
    return {MAX_LENGTH: limit}


@dataclasses.dataclass(frozen=True)
class Secret:
    """A string that never shows itself in logs, reprs or error messages."""

    value: str = dataclasses.field(repr=False, default="")

    def __repr__(self) -> str:
        return "Secret(***)" if self.value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self.value else ""

    def __bool__(self) -> bool:
        return bool(self.value)


def load(schema: type[T], document: Mapping[str, Any] | None, environ: Mapping[str, str]) -> T:
    """Builds ``schema`` from a parsed document, then applies ``PBXMESH_*`` overrides."""
    if document is not None and not isinstance(document, Mapping):
        raise ConfigError(f"config: expected a mapping, got {_kind(document)}")
    data: dict[str, Any] = dict(document or {})
    known = _apply_env(schema, data, environ, ())
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f"unknown environment variable {unknown[0]}")
    return _build(schema, data, "")


def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _apply_env(cls: type[Any], data: dict[str, Any], environ: Mapping[str, str], path: tuple[str, ...]) -> set[str]:
    """Writes overrides into ``data`` and returns every variable name the schema knows."""
    known: set[str] = set()
    for field in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_hints(cls)[field.name])
        key_path = (*path, field.name)
        if dataclasses.is_dataclass(tp) and tp is not Secret:
            sub = data.get(field.name)
            sub_dict: dict[str, Any] = dict(sub) if isinstance(sub, Mapping) else {}
            sub_known = _apply_env(typing.cast(type[Any], tp), sub_dict, environ, key_path)
            known |= sub_known
            if any(name in environ for name in sub_known) or isinstance(sub, Mapping):
                data[field.name] = sub_dict
            continue
        name = ENV_PREFIX + "_".join(key_path).upper()
        known.add(name)
        if name in environ:
            data[field.name] = _parse_env(tp, environ[name], ".".join(key_path))
    return known


def _parse_env(tp: Any, raw: str, key: str) -> Any:
    if tp in (str, Secret, int, bool, float):
        return raw
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
    if item in (str, int) and not raw.lstrip().startswith("["):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if item is Secret and not raw.lstrip().startswith("["):
        return [raw]  # one secret, taken whole (a secret may hold commas)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: environment value is not valid YAML ({exc.__class__.__name__})") from None


def _build(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {_kind(data)} {_short(data)}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
    for key in data:
        if key not in names:
            name = str(key)
            shown = name if problem(name, 64) is None else _short(name)
            raise ConfigError(f"unknown key {_join(path, shown)}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(typing.cast(Any, cls)):
        key = _join(path, field.name)
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key {key}")
            continue
        limit = field.metadata.get(MAX_LENGTH, MAX_TEXT)
        values[field.name] = _convert(hints[field.name], data[field.name], key, limit)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, limit: int = MAX_TEXT) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: a value is required")
    if tp is Secret:
        # A secret is never guessed from another type: YAML reads 0123 as 83, and 1e3 as a string.
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_kind(value)} (quote it)")
        _check_text(value, key, limit)
        return Secret(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML reads 0100 as 64 and +49100 as 49100: insist on quotes rather than guess.
            hint = " (quote it)" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            raise ConfigError(f"{key}: expected a string, got {_kind(value)} {_short(value)}{hint}")
        _check_text(value, key, limit)
        return value
    if tp is bool:
        return _to_bool(value, key)
    if tp is int:
        return _to_int(value, key)
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type[Any], tp), value, key)
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            shown = "" if item is Secret else f" {_short(value)}"
            raise ConfigError(f"{key}: expected a list, got {_kind(value)}{shown}")
        return tuple(_convert(item, v, f"{key}[{i}]", limit) for i, v in enumerate(value))
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _check_text(value: str, key: str, limit: int) -> None:
    wrong = problem(value, limit)
    if wrong is not None:
        raise ConfigError(f"{key}: the value {wrong}")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,20}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {_kind(value)} {_short(value)}")
    if not -MAX_INT <= value <= MAX_INT:
        raise ConfigError(f"{key}: {_short(value)} is out of range")
    return value


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
