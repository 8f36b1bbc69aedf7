"""Dataclass configs: loaded from YAML, overridden with ``a.b=value`` on the command line, strict.

Every job has one dataclass config. :func:`from_dict` builds it from nested dicts and rejects unknown
keys and values of the wrong type *before* any work starts; :func:`to_dict` is its inverse and is what
checkpoints store, so inference rebuilds everything from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from registry.fields import check_bounds
from shards.outputs import decode_utf8

C = TypeVar("C")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the example configs (configs/*.yaml)


class ConfigError(ValueError):
    """A config that cannot be right: unknown key, wrong type, bad value."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (and convert the lossless cases: int->float, list->tuple)."""
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
                return _coerce(value, arg, where)
            except ConfigError:
                pass  # try the next member; the error below names them all
        raise ConfigError(f"{where}: {value!r} is not {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if isinstance(value, bool) and value not in get_args(tp):
            # YAML 1.1 reads no/off/yes/on as booleans: `run.precision=no` means the choice "no"
            words = [a for a in get_args(tp) if isinstance(a, str) and _parse_value(a) is value]
            value = words[0] if len(words) == 1 else value
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            # "a,b,c" on the command line is a list; its items are read like override values ("-6,6" is
            # two numbers) unless they are declared strings
            value = [v.strip() for v in value.split(",") if v.strip()]
            if not all(a in (str, Ellipsis) for a in get_args(tp)):
                value = [_parse_value(v, keep_invalid=True) for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-.") in ("inf", "nan"):
            return float(value.strip().lower().replace(".inf", "inf"))  # "inf" as written by config_json
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build dataclass ``cls`` from a nested dict; unknown keys, wrong types, values out of a field's range
    (:func:`registry.fields.check_bounds`) and the dataclass's own ``validate()`` raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    obj = cls(**kwargs)
    try:
        check_bounds(obj, where)  # every field's range (registry.fields), named by its dotted path
    except ValueError as err:
        raise ConfigError(str(err)) from err
    check = getattr(obj, "validate", None)  # then the checks that involve several fields
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as err:  # validators outside engine (kernels.features, kernels.augment) raise plain ValueError
            raise ConfigError(str(err)) from err
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, ready for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_json(obj: Any) -> Any:
    """:func:`to_dict` for strict JSON files: non-finite floats (e.g. ``chroma_norm: inf``) become the
    strings ``"inf"`` / ``"-inf"`` / ``"nan"``, which :func:`from_dict` reads back as floats."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(to_dict(obj))


def _parse_value(raw: str, keep_invalid: bool = False) -> Any:
    """A command-line value read as YAML (``3``, ``1e-3``, ``[a,b]``, ``null``); text that is not valid YAML
    raises ``yaml.YAMLError``, or is returned as it is with ``keep_invalid``."""
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        if keep_invalid:
            return raw
        raise
    if isinstance(value, str) and value == raw.strip():
        # YAML 1.1 reads "3e-4" as a string; a number is meant (a quoted '3e-4' stays a string)
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (values parsed as YAML: ``3``, ``1e-3``, ``[a,b]``)."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        try:
            value = _parse_value(raw)
        except yaml.YAMLError as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({reason}); quote it"
            ) from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict: :class:`ConfigError` when it is missing, not a mapping or not YAML;
    :class:`shards.outputs.InputError` (one line naming the file and the byte) when it is not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(decode_utf8(path.read_bytes(), path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """YAML file (optional) + ``key=value`` overrides -> validated dataclass ``cls``."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)
