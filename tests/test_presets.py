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
