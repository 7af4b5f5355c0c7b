"""The one merge of settings: a dataclass's defaults, then a preset's section, then the
flags given, key by key (nested sections too), each value converted to its field's
declared type. What went wrong is one line naming the flag (`--image.height`) or the
file and key (`mine.json: model.image.height`): an unknown key, a value of the wrong
type, or what the dataclass's own checks (`SettingError`) refuse."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from showtell.errors import ShowtellError

T = TypeVar("T")


class SettingError(ShowtellError):
    """A bad value or a contradiction found by a settings dataclass's own checks. The
    message names the fields as flags (`--height`); `resolve` rewrites those names to
    where each value came from (`--image.height`, or `FILE: model.image.height`)."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise SettingError(f"--{name} {value}: use one of {', '.join(choices)}", name)


def check_least(name: str, value: float, least: float) -> None:
    if value < least:
        raise SettingError(f"--{name} {value}: give {least:g} or more", name)


@dataclass(frozen=True)
class Source:
    """Where settings came from, to name a key in an error: the command line
    (`--image.height`) or a section of a file (`FILE: model.image.height`)."""

    file: str | None = None  # None: the command line
    section: str = ""
    within: str = ""  # the field the section's values are nested under ("beam.")

    def name(self, key: str) -> str:
        key = key.removeprefix(self.within)
        if self.file is None:
            return f"--{key}"
        return f"{self.section}.{key}" if self.section else key


FLAGS = Source()
Layer = tuple[Source, Mapping[str, Any]]


def _convert(value: Any, hint: Any, where: str) -> Any:
    """value as the field's declared type (JSON's lists as tuples, ints as floats)."""
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _convert(value, hint, where)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ShowtellError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise ShowtellError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is Path and isinstance(value, str | Path):
        return Path(value)
    raise ShowtellError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _flatten(cls: type, values: Mapping[str, Any], source: Source, prefix: str = "") -> dict:
    """{"image.height": (value, source), ...}; an unknown key is an error naming it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flat: dict[str, tuple[Any, Source]] = {}
    for key, value in values.items():
        if key not in fields:
            where = f"{source.file}: " if source.file is not None else ""
            raise ShowtellError(
                f"{where}unknown {cls.__name__} field {key!r} ({source.name(prefix + key)})"
            )
        nested = fields[key].default_factory
        if dataclasses.is_dataclass(nested) and isinstance(value, Mapping):
            flat.update(_flatten(nested, value, source, f"{prefix}{key}."))  # type: ignore[arg-type]
        else:
            flat[prefix + key] = (value, source)
    return flat


def _name(key: str, flag: str, given: dict[str, tuple[Any, Source]]) -> tuple[str, str | None]:
    """(how to name a field in a message, the file its value came from, if any)."""
    source = given.get(key, (None, FLAGS))[1]
    return (flag, None) if source.file is None else (source.name(key), source.file)


def _named(error: SettingError, names: dict[str, tuple[str, str | None]]) -> str:
    """The error's message with each key named where its value came from."""
    message, files = str(error), []
    for key in error.keys:
        name, file = names[key]
        message = re.sub(rf"--{re.escape(key)}(?![\w.-])", lambda _m, n=name: n, message)
        if file is not None and file not in files:
            files.append(file)
    return f"{', '.join(files)}: {message}" if files else message


def _build(
    cls: type, base: Any, given: dict[str, tuple[Any, Source]], prefix: str, flags: str = ""
) -> Any:
    """cls from base and the given values; `flags` is the fields' flag prefix (a nested
    dataclass's `--image.`, none for one whose field says `flat`)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    names: dict[str, tuple[str, str | None]] = {}
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(f.default_factory):
            inner = getattr(base, f.name) if base is not None else None
            nested = flags if f.metadata.get("flat") else f"{flags}{f.name}."
            values[f.name] = _build(f.default_factory, inner, given, f"{key}.", nested)  # type: ignore[arg-type]
            continue
        names[f.name] = _name(key, f"--{flags}{f.metadata.get('flag', f.name)}", given)
        if key in given:
            name, file = names[f.name]
            values[f.name] = _convert(
                given[key][0], hints[f.name], f"{file}: {name}" if file else name
            )
        elif base is not None:
            values[f.name] = getattr(base, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ShowtellError(f"{names[f.name][0]} is required")
    try:
        return cls(**values)
    except SettingError as e:
        raise ShowtellError(_named(e, names)) from None


def resolve(cls: type[T], *layers: Layer, base: T | None = None) -> T:
    """The one merge of settings: `base` (else the dataclass's defaults) under each layer
    in turn (a preset's section, then the flags given), key by key, nested sections too;
    each value converted to its field's type. An unknown key, a value of the wrong type,
    a bad value or a contradiction is one line naming the flag or the file and key."""
    given: dict[str, tuple[Any, Source]] = {}
    for source, values in layers:
        given.update(_flatten(cls, values, source))
    return _build(cls, base, given, "")


def given_keys(cls: type, *layers: Layer) -> frozenset[str]:
    """The dotted names of the fields the layers set ("encoder", "image.height")."""
    return frozenset(k for source, values in layers for k in _flatten(cls, values, source))


def default_of(cls: type, name: str) -> Any:
    """A field's default, for a function that takes it one by one (one default, written
    in the dataclass)."""
    f = cls.__dataclass_fields__[name]  # type: ignore[attr-defined]
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
