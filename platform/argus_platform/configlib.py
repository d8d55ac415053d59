"""Typed dataclass configs: YAML in, `--set a.b=c` overrides, unknown keys rejected.

Every job has one root config dataclass. `load_config(Root, path, overrides)` reads the YAML,
applies overrides (values parsed as YAML scalars/lists, then type-checked against the field's
annotation) and builds the nested dataclasses. Errors name the dotted key, the value seen and
what was expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


def documented(text: str, default: Any = None, factory: Any = None) -> Any:
    """A dataclass field with its `--help` text (and a default value or factory)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": text})
    return dataclasses.field(default=default, metadata={"help": text})


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` (converting int→float and dict→dataclass)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: value {value!r} matches none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix or "<root>"
        raise ConfigError(
            f"unknown config key(s) {', '.join(_join(prefix, k) for k in unknown)} "
            f"under {where}; known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(value, hints[name], _join(prefix, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without a default is missing
        raise ConfigError(f"{prefix or '<root>'}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list form of a config (what crosses process boundaries)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Defaults ← YAML file ← overrides, then type-checked into `cls`."""
    data = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        _check_keys(cls, loaded, "", str(path))
        _deep_merge(data, loaded)
    for assignment in overrides:
        dotted = assignment.split("=", 1)[0]
        _check_keys(cls, _nest(dotted), "", f"--set {assignment}")
        apply_override(data, assignment)
    return from_dict(cls, data)


def _nest(dotted: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    keys = dotted.strip().split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = None
    return out


def _check_keys(cls: type, data: dict[str, Any], prefix: str, source: str) -> None:
    """Reject unknown keys early, naming where they came from."""
    hints = typing.get_type_hints(cls)
    for k, v in data.items():
        if k not in hints:
            known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
            raise ConfigError(f"{source}: unknown config key {_join(prefix, k)!r}; known keys here: {known}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            _check_keys(tp, v, _join(prefix, k), source)


def _deep_merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every leaf field — used by `--help`."""
    rows = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
        else:
            rows.append((key, _type_name(tp), to_dict(getattr(default, f.name)), f.metadata.get("help", "")))
    return rows
