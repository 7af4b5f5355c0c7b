"""Preset files given to `showtell train --config`: a misspelt key anywhere (a section,
the model's nested image settings) is one line naming the file and the key, before any
work starts; flags given on the command line win over the preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from showtell.cli import main


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"train": {"batch_sise": 3}}, "unknown TrainConfig field 'batch_sise'"),
        ({"model": {"embeding_size": 3}}, "unknown ModelConfig field 'embeding_size'"),
        ({"model": {"image": {"heigth": 3}}}, "unknown ImageConfig field 'heigth'"),
        ({"trian": {}}, "unknown sections ['trian']"),
    ],
)
def test_train_preset_with_an_unknown_key_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: dict, message: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    argv = ["train", "--config", str(path), "--input_file_pattern", str(tmp_path / "none-*")]
    assert main([*argv, "--train_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: {path}") and message in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_nested_and_tuple_flags_go_over_the_preset_key_by_key(
    synthetic_records: Path, tmp_path: Path
) -> None:
    """`--image.height` (and its dashed form) and tuple flags reach the model's config;
    the preset's other image settings stay (a flag changes one key, not the section)."""
    from showtell.checkpoint import load_checkpoint
    from showtell.config import ModelConfig

    preset = tmp_path / "mine.json"
    model = {
        "encoder": "cnn_small",
        "embedding_size": 16,
        "num_lstm_units": 16,
        "image": {"resize_height": 40, "resize_width": 40, "random_flip": False},
    }
    preset.write_text(json.dumps({"model": model, "train": {"batch_size": 4}}))
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(preset),
        f"--input_file_pattern={synthetic_records / 'train-?????-of-00002'}",
        f"--train_dir={run}",
        "--number_of_steps=1",
        "--num_workers=0",
        "--image.height=32",
        "--image.width",
        "32",
        "--image.saturation-range",
        "0.75",
        "1.25",
    ]
    assert main(argv) == 0
    image = load_checkpoint(run).model_config.image
    assert (image.height, image.width, image.resize_height, image.resize_width) == (32, 32, 40, 40)
    assert image.random_flip is False  # from the preset
    assert image.saturation_range == (0.75, 1.25)
    assert image.contrast_range == ModelConfig().image.contrast_range  # the default
