"""Flags shared by the commands: the seed's names with dashed forms, typed values, and
flags generated from the settings dataclasses (`add_dataclass_flags`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from showtell.config import load_preset, preset_path
from showtell.config.merge import FLAGS, Layer, Source, T, resolve


def flag_names(name: str, prefix: str = "") -> list[str]:
    """`--prefixname` and, when the name has underscores, `--prefixdashed-name`."""
    names = [f"--{prefix}{name}"]
    if "_" in name:
        names.append(f"--{prefix}{name.replace('_', '-')}")
    return names


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Adds `--name` and, when it has underscores, `--dashed-name` as the same flag."""
    parser.add_argument(*flag_names(name), dest=name, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_dataclass_flags(
    parser: Any,
    cls: type,
    prefix: str = "",
    skip: Sequence[str] = (),
    title: str | None = None,
    only: Sequence[str] | None = None,
) -> None:
    """One flag per field of a settings dataclass, its help and default from the field:
    `--name` and `--dashed-name`; tuples as `--name A B`; a nested dataclass's fields as
    `--outer.name` (`--image.height`), or as `--name` when its field says `flat`; a field
    without a default is a required flag. Flags default to 'not given' (presets and
    checkpoints fill the rest): `settings_from_flags` reads them back."""
    group = parser.add_argument_group(title or cls.__name__)
    if only is not None:
        skip = [f.name for f in dataclasses.fields(cls) if f.name not in only]
    _add_fields(group, cls, prefix, "", skip)


def _type_of(hint: Any) -> Any:
    """The type without `| None` (None is what the dataclass holds when not given)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _default_text(f: dataclasses.Field, scale: float) -> str:
    if f.default is dataclasses.MISSING:
        return "required"
    default = f.default
    if isinstance(default, tuple):
        return " ".join(str(x) for x in default)
    if scale != 1 and isinstance(default, int | float):
        default = type(default)(default / scale)
    return str(default)


def _add_fields(group: Any, cls: type, dest: str, flag: str, skip: Sequence[str] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("no_flag"):
            continue
        if dataclasses.is_dataclass(f.default_factory):
            inner = "" if f.metadata.get("flat") else f"{f.name}."
            _add_fields(group, f.default_factory, f"{dest}{f.name}.", flag + inner)  # type: ignore[arg-type]
            continue
        name = f.metadata.get("flag", f.name)
        scale = f.metadata.get("scale", 1)
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {
            "dest": f"{dest}{f.name}",
            "default": argparse.SUPPRESS,
            "help": f"{help_text} (default: {_default_text(f, scale)})".replace("%", "%%"),
        }
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs.update(required=True, help=help_text.replace("%", "%%"))
        kind = _type_of(hints[f.name])
        if kind is bool:
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(kind) is tuple:
            args = typing.get_args(kind)
            kwargs.update(type=args[0], nargs=len(args), metavar=name.upper())
        elif kind in (int, float, str, Path):
            kwargs.update(type=f.metadata.get("type", kind), metavar=name.upper())
            if scale != 1:
                kwargs["type"] = _scaled(kwargs["type"], scale)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {kind}")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        group.add_argument(*flag_names(name, flag), **kwargs)


def _scaled(convert: Callable[[str], Any], scale: float) -> Callable[[str], Any]:
    """A flag in other units than its field (serve's --max_request_mb: bytes)."""

    def parse(text: str) -> Any:
        return convert(text) * scale

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def given_flags(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The flags `add_dataclass_flags` added with this prefix that were given, nested
    fields as nested dicts ({"image": {"height": 128}}), tuples as tuples."""
    given: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(prefix) and key not in ("func", "command"):
            *outer, name = key[len(prefix) :].split(".")
            section = given
            for part in outer:
                section = section.setdefault(part, {})
            section[name] = tuple(value) if isinstance(value, list) else value
    return given


def settings_from_flags(
    args: argparse.Namespace, cls: type[T], prefix: str = "", *presets: Layer
) -> T:
    """The command's settings: the dataclass's defaults, the preset layers, then the flags
    given (`config.merge.resolve`, the one merge)."""
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in given_flags(args, prefix).items() if k in fields}
    return resolve(cls, *presets, (FLAGS, given))


def preset_layer(name_or_path: str | None, section: str, within: str = "") -> list[Layer]:
    """A preset's section as a layer under the flags (none without a preset); `within`:
    the settings field it fills (the captioning commands' `beam` from `inference`)."""
    if not name_or_path:
        return []
    values = load_preset(name_or_path).get(section, {})
    source = Source(str(preset_path(name_or_path)), section, f"{within}." if within else "")
    return [(source, {within: values} if within else values)]
