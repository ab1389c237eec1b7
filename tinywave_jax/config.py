"""Typed configs: dataclasses built from YAML plus `key=value` overrides, checked at start-up.

Every config in the project is a (nested) dataclass. `load_config(Cls, "x.yaml", ["a.b=3"])`
reads the YAML (which may name a `base:` file to merge over, relative to itself), applies the
dotted overrides, and builds `Cls`, failing with a `ConfigError` that names the offending key for
an unknown key, a value of the wrong type, or a choice outside a `Literal`. A dataclass may define
`validate(self)` for cross-field checks; it is called after construction, innermost first. One
that takes a `key` argument is given its dotted path in the file, to name keys as written.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, reading numbers as people write them: YAML 1.1 (PyYAML) needs a dot
    in a float, so `3e-4` and `1e4` would be strings; YAML 1.2 and Python read them as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """yaml.safe_load with numbers such as `3e-4` and `1e4` read as floats (_Loader)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks/converts `value` to annotation `tp`; `key` is the dotted path for messages."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1 and dataclasses.is_dataclass(arms[0]) and isinstance(value, dict):
            return _coerce(value, arms[0], key)  # an optional section: its errors name its keys
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)} ({'; '.join(errors)})")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            elem = args[0] if args else Any
            items = [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():  # 1e4 steps
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


_BUILDING = contextvars.ContextVar("tinywave_config_key", default="")


def building_key() -> str:
    """The dotted key of the config `from_dict` is constructing right now ("" otherwise): for
    checks in `__post_init__`, which run before `from_dict` can pass `key` to `validate`."""
    return _BUILDING.get()


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Builds dataclass `cls` from `data`, rejecting unknown keys and wrongly typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys{' under ' + prefix if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    token = _BUILDING.set(prefix)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    finally:
        _BUILDING.reset(token)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        # A config that can sit at several places in a file takes `key`, its dotted path there,
        # so its errors name the key as the user wrote it.
        if prefix and "key" in inspect.signature(validate).parameters:
            validate(key=prefix)
        else:
            validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain dict/list form of a config (tuples become lists), for YAML/JSON dumps."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merged(*layers: dict) -> dict:
    """The mappings merged in order: a later one's mapping merges key by key into an earlier
    one's at the same key, any other value replaces it (a YAML's `base:` chain, the demo's
    presets)."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = (
                merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
            )
    return out


def _yaml_error(e: yaml.YAMLError, column_offset: int = 0) -> str:
    """One line, 'line L, column C: problem (while ... from line L0, column C0)', where a YAML
    error's own text spans several lines; `column_offset` shifts columns on the first line."""

    def at(mark) -> str:
        col = mark.column + 1 + (column_offset if mark.line == 0 else 0)
        return f"line {mark.line + 1}, column {col}"

    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is None or not problem:
        return " ".join(str(e).split())
    out = f"{at(mark)}: {problem}"
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        out += f" ({context}" + (f" from {at(context_mark)}" if context_mark else "") + ")"
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Reads a config YAML, merging it over its `base:` file (a path relative to it) if any.
    A malformed file is a ConfigError naming the file and line; a `base:` cycle one listing
    the files in the cycle."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    key = path.resolve()
    if key in _chain:
        cycle = [str(p) for p in _chain[_chain.index(key) :]] + [str(key)]
        raise ConfigError(f"config base: files form a cycle: {' -> '.join(cycle)}")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_error(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
        if not (path.parent / base).is_file():
            raise ConfigError(f"{path}: base: config file not found: {path.parent / base}")
        data = merged(read_yaml(path.parent / base, (*_chain, key)), data)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `a.b.c=value` overrides; values are parsed as YAML (`3`, `true`, `[1,2]`, `x`)."""
    data = merged(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key (expected a.b.c=value)")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        try:
            node[parts[-1]] = load_yaml(raw)
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML: {_yaml_error(e, len(key) + 1)}"
            ) from None
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """YAML file (optional) + overrides -> validated `cls` instance."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, list(overrides)))
