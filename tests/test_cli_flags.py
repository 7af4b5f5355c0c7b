"""The one flag builder: every command's flags come from its settings dataclass, with
im2txt's names and the dashed forms, nested fields as `--image.height`, tuples as
`--name A B`; the defaults its help shows are the dataclasses' own; a bad value or a
contradiction is one line naming the flag (or the preset file and key)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from showtell.cli import build_parser, main
from showtell.cli.flags import add_dataclass_flags, given_flags
from showtell.config import ImageConfig, InferenceConfig, ModelConfig
from showtell.config.commands import (
    EvaluateSettings,
    RunInferenceSettings,
    ServeLimits,
    ServeSettings,
)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_nested_dashed_and_tuple_flags_are_generated() -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, ModelConfig, "model.")
    args = parser.parse_args(
        [
            "--image.height=32",
            "--image.resize-width",
            "40",
            "--image.saturation-range",
            "0.75",
            "1.25",
            "--image.contrast_range",
            "0.5",
            "2",
            "--num-lstm-units=7",
            "--image.random_flip=false",
            "--normalize_features",
        ]
    )
    assert given_flags(args, "model.") == {
        "image": {
            "height": 32,
            "resize_width": 40,
            "saturation_range": (0.75, 1.25),
            "contrast_range": (0.5, 2.0),
            "random_flip": False,
        },
        "num_lstm_units": 7,
        "normalize_features": True,
    }
    # Every field of the nested image settings has both spellings.
    options = {o for a in parser._actions for o in a.option_strings}
    for f in dataclasses.fields(ImageConfig):
        assert f"--image.{f.name}" in options
        assert f"--image.{f.name.replace('_', '-')}" in options


def _flat_fields(cls: type) -> list[dataclasses.Field]:
    """A settings dataclass's fields, nested `flat` ones (beam, limits) in their place."""
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            found += _flat_fields(f.default_factory)  # type: ignore[arg-type]
        else:
            found.append(f)
    return found


@pytest.mark.parametrize(
    ("command", "cls"),
    [
        ("evaluate", EvaluateSettings),
        ("serve", ServeSettings),
        ("run-inference", RunInferenceSettings),
    ],
)
def test_help_shows_the_dataclasses_defaults(command: str, cls: type) -> None:
    helps = {a.dest: a.help or "" for a in _subparser(command)._actions}
    fields = _flat_fields(cls)
    assert len(fields) >= 10
    for f in fields:
        dest = next(d for d in helps if d == f.name or d.endswith(f".{f.name}"))
        if f.default is dataclasses.MISSING:
            assert "default" not in helps[dest]
            continue
        default = f.default // f.metadata.get("scale", 1) if "scale" in f.metadata else f.default
        assert helps[dest].endswith(f"(default: {default})"), (dest, helps[dest])
    # The beam's, as the issue found typed in by hand ("(default: 3)") before.
    beam = helps["beam.beam_size"]
    assert beam.endswith(f"(default: {InferenceConfig.__dataclass_fields__['beam_size'].default})")


def test_serve_limits_default_to_the_dataclass() -> None:
    args = _subparser("serve").parse_args(["--checkpoint_path", "x"])
    from showtell.cli.apps import _settings

    settings = _settings(args, ServeSettings)
    assert settings.limits == ServeLimits()
    assert settings.beam == InferenceConfig()
    args = _subparser("serve").parse_args(["--checkpoint_path", "x", "--max_request_mb", "2"])
    assert _settings(args, ServeSettings).limits.max_request_bytes == 2 * 2**20


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch_size", "0"], "error: --batch_size 0: give 1 or more"),
        (["--optimizer", "RMSprop"], "error: --optimizer RMSprop: use one of SGD"),
        (["--image.height", "400"], "error: --image.height 400 is larger than"),
        (["--lstm_dropout_keep_prob", "0"], "error: --lstm_dropout_keep_prob 0.0"),
        (
            ["--scst", "--train_inception"],
            "error: --scst trains the decoder on cached features: --train_inception=false",
        ),
    ],
)
def test_train_flag_with_a_bad_value_or_a_contradiction_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    argv = ["train", f"--input_file_pattern={tmp_path / 'none-*'}", f"--train_dir={tmp_path / 'r'}"]
    assert _error(capsys, [*argv, *flags]).startswith(message)
    assert not (tmp_path / "r").exists()


def test_beam_flag_with_a_bad_value_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["run-inference", "--input_files", "x.jpg"], ["serve"]):
        argv = [*command, "--checkpoint_path", str(tmp_path), "--beam_size", "0"]
        assert _error(capsys, argv) == "error: --beam_size 0: give 1 or more"
    argv = ["serve", "--checkpoint_path", str(tmp_path), "--body_timeout", "0"]
    assert _error(capsys, argv) == "error: --body_timeout 0.0: give over 0 seconds"


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"model": {"image": {"height": 400}}}, "model.image.height 400 is larger than"),
        ({"train": {"batch_size": "many"}}, "train.batch_size: expected int, got 'many'"),
        ({"train": {"scst": True, "train_inception": True}}, "train.train_inception=false"),
    ],
)
def test_preset_with_a_bad_value_names_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: dict, message: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    argv = ["train", "--config", str(path), f"--input_file_pattern={tmp_path / 'none-*'}"]
    err = _error(capsys, [*argv, f"--train_dir={tmp_path / 'r'}"])
    assert err.startswith(f"error: {path}: ") and message in err


def test_inference_preset_with_an_unknown_key_names_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"inference": {"beam_sise": 2}}))
    argv = ["run-inference", "--checkpoint_path", str(tmp_path), "--input_files", "x.jpg"]
    err = _error(capsys, [*argv, "--config", str(path)])
    assert err == f"error: {path}: unknown InferenceConfig field 'beam_sise' (inference.beam_sise)"
