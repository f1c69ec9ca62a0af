"""Config plumbing shared by the CLIs: dotted overrides, presets, and dict round trips.

    config = load_preset("tiny")                                   # mc_jax/configs/tiny.py: CONFIG
    config = apply_overrides(config, ["mixer.aggregation=ssc", "mixer.top_k=2", "num_layers=4"])

Override values are parsed from the dataclass field types: ``int``, ``float``, ``str``, ``bool`` (true/false/1/0/
yes/no), ``X | None`` (``none``/``null``), ``tuple[str, ...]`` (comma separated; ``()`` for empty). The paths work on
any frozen-dataclass tree, so a root config holding ``model: ModelConfig`` takes ``model.mixer.aggregation=ssc``.
All overrides are applied before validation, then the whole tree is rebuilt (``__post_init__`` checks the result),
so order does not matter and intermediate states may be invalid (``mixer.aggregation=ssc`` then ``mixer.top_k=2``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import importlib.util
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PRESET_PACKAGE = "mc_jax.configs"  # the shipped presets: package data, so installed wheels have them too
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse_value(text: str, tp: Any, *, name: str = "value") -> Any:
    """Parse ``text`` as type ``tp`` (see the module docstring for the supported types)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        others = [a for a in args if a is not type(None)]
        errors = []
        for option in others:
            try:
                return parse_value(text, option, name=name)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{name}: cannot parse {text!r} as {tp}: {'; '.join(errors)}")
    if origin is tuple:
        inner = args[0] if args else str
        stripped = text.strip().strip("()[]").strip()
        if not stripped:
            return ()
        return tuple(parse_value(part.strip(), inner, name=name) for part in stripped.split(",") if part.strip())
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ValueError(f"{name}: expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}: expected an int, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}: expected a float, got {text!r}") from None
    if tp is str:
        return text
    if dataclasses.is_dataclass(tp):
        raise ValueError(f"{name} is a section ({tp.__name__}); set one of its fields, e.g. {name}.<field>=...")
    raise ValueError(f"{name}: cannot parse values of type {tp}")


def _as_nested(config: Any) -> dict[str, Any]:
    """Shallow field dict with nested dataclasses turned into (mutable) nested dicts, without validation."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = _as_nested(value) if dataclasses.is_dataclass(value) else value
    return out


def _rebuild(cls: type, values: Mapping[str, Any]) -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        tp = types_[name]
        kwargs[name] = _rebuild(tp, value) if dataclasses.is_dataclass(tp) and isinstance(value, Mapping) else value
    return cls(**kwargs)


def _set(cls: type, tree: dict[str, Any], path: list[str], text: str, full: str, prefix: str = "") -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    head = path[0]
    if head not in names:
        where = f"section {prefix!r}" if prefix else "the root"
        raise ValueError(f"unknown config key {full!r}: {head!r} is not a field of {where} ({cls.__name__}); "
                         f"fields: {names}")
    tp = _field_types(cls)[head]
    if len(path) == 1:
        tree[head] = parse_value(text, tp, name=full)
        return
    if not dataclasses.is_dataclass(tp):
        raise ValueError(f"unknown config key {full!r}: {prefix + head!r} is a value, not a section")
    _set(tp, tree[head], path[1:], text, full, prefix + head + ".")


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Return ``config`` with ``"a.b.c=value"`` overrides applied (see the module docstring); validates once."""
    tree = _as_nested(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("--")
        if not key:
            raise ValueError(f"override {item!r} has an empty key")
        _set(type(config), tree, key.split("."), text.strip(), key)
    return _rebuild(type(config), tree)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for JSON / checkpoint metadata."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        return list(x) if isinstance(x, tuple) else x
    return plain(config)


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_dict`; unknown keys raise ``ValueError``."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ValueError(f"unknown keys {unknown} for {cls.__name__}; fields: {list(types_)}")
    kwargs = {}
    for name, value in data.items():
        tp = types_[name]
        if dataclasses.is_dataclass(tp):
            value = from_dict(tp, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _preset_files():
    return importlib.resources.files(PRESET_PACKAGE)


def preset_names() -> list[str]:
    """The shipped presets (``mc_jax/configs/<name>.py``)."""
    return sorted(f.name[:-3] for f in _preset_files().iterdir()
                  if f.name.endswith(".py") and not f.name.startswith("_"))


def load_preset(name_or_path: str) -> Any:
    """``CONFIG`` of the shipped preset ``name`` (``mc_jax/configs/<name>.py``) or of a python file (a path ending
    in ``.py``)."""
    if name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"no preset file {name_or_path!r} (a path ending in .py must be a python file defining "
                             f"CONFIG); shipped presets: {preset_names()}")
        spec = importlib.util.spec_from_file_location(f"mc_jax_preset_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        origin = str(path)
    else:
        if not name_or_path.isidentifier() or not _preset_files().joinpath(f"{name_or_path}.py").is_file():
            raise ValueError(f"no preset {name_or_path!r}; shipped presets: {preset_names()} (or give a path to a .py "
                             "file defining CONFIG)")
        module = importlib.import_module(f"{PRESET_PACKAGE}.{name_or_path}")
        origin = f"{PRESET_PACKAGE}.{name_or_path}"
    if not hasattr(module, "CONFIG"):
        raise ValueError(f"preset {origin} does not define CONFIG")
    return module.CONFIG


__all__ = ["PRESET_PACKAGE", "apply_overrides", "from_dict", "load_preset", "parse_value", "preset_names", "to_dict"]
