"""Flags shared by the commands: the seed's names with dashed forms, typed values, and
flags generated from the settings dataclasses (`add_dataclass_flags`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Adds `--name` and, when it has underscores, `--dashed-name` as the same flag."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*names, dest=name, **kwargs)


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
    parser: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str] = ()
) -> None:
    """One flag per field of a config dataclass, its help from the field: scalars as
    `--name` and `--dashed-name`, tuples as `--name A B`, nested dataclasses' fields as
    `--outer.name` (`--image.height`). Flags default to 'not given' so that presets and
    checkpoints fill the rest; `_given` reads them back as nested dicts."""
    group = parser.add_argument_group(cls.__name__)
    _add_fields(group, cls, prefix, "", skip)


def _add_fields(group: Any, cls: type, dest: str, flag: str, skip: Sequence[str] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            _add_fields(group, f.default_factory, f"{dest}{f.name}.", f"{flag}{f.name}.")  # type: ignore[arg-type]
            continue
        default = f.default
        kwargs: dict[str, Any] = {
            "dest": f"{dest}{f.name}",
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata.get('help', '')} (default: {default})",
        }
        if isinstance(default, bool):
            kwargs.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif isinstance(default, int | float | str):
            kwargs.update(type=type(default), metavar=f.name.upper())
        elif isinstance(default, tuple) and default:
            kwargs.update(type=type(default[0]), nargs=len(default), metavar=f.name.upper())
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {type(default).__name__}")
        names = [f"--{flag}{f.name}"]
        if "_" in f.name:
            names.append(f"--{flag}{f.name.replace('_', '-')}")
        group.add_argument(*names, **kwargs)


def given_flags(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The flags `add_dataclass_flags` added with this prefix that were given, nested
    fields as nested dicts ({"image": {"height": 128}}), tuples as tuples."""
    given: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(prefix):
            *outer, name = key[len(prefix) :].split(".")
            section = given
            for part in outer:
                section = section.setdefault(part, {})
            section[name] = tuple(value) if isinstance(value, list) else value
    return given


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """base with changes on top, nested dicts merged key by key (flags over a preset)."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = deep_merge(merged[key], value)
        merged[key] = value
    return merged


def add_beam_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("beam search (im2txt's defaults, or the preset's)")
    g.add_argument("--config", default=None, help="a preset whose 'inference' settings apply")
    add_flag(g, "beam_size", type=positive_int, default=None, help="(default: 3)")
    add_flag(g, "max_caption_length", type=positive_int, default=None, help="(default: 20)")
    add_flag(
        g,
        "length_normalization_factor",
        type=float,
        default=None,
        help="completed captions are scored logprob / length**factor (default: 0.0)",
    )


def beam_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Beam flags given on the command line, else the preset's, else im2txt's."""
    from showtell.config import InferenceConfig, load_preset, preset_section

    preset = load_preset(args.config) if args.config else {}
    settings = dataclasses.asdict(preset_section(preset, InferenceConfig, "inference", "preset"))
    for name in settings:
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return settings


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be over 0 seconds, got {text}")
    return value
