"""Encoder pretraining (the demo's stand-in for ImageNet weights), on the tiny data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL, tiny_train_config
from showtell.cli import main
from showtell.config import PretrainConfig
from showtell.data.synthetic import OBJECT_LABELS_FILE, cell_labels, load_attributes
from showtell.errors import ShowtellError
from showtell.training.checkpoint import load_checkpoint
from showtell.training.pretrain import load_labels, pretrain_encoder
from showtell.training.train import train


def labels_file(records: Path) -> Path:
    return records.parent / "synthetic" / "annotations" / OBJECT_LABELS_FILE


def test_synthetic_labels_are_the_ground_truth_per_cell(synthetic_records: Path) -> None:
    labels = load_labels(labels_file(synthetic_records))
    truth = load_attributes(labels_file(synthetic_records).with_name("attributes.json"))
    assert (labels.slots, labels.classes) == (9, 33) and labels.of_image.keys() == truth.keys()
    for image_id, objects in truth.items():
        row = labels.of_image[image_id]
        assert row == cell_labels(objects) and sum(c > 0 for c in row) == len(objects)


def test_pretrained_weights_learn_and_start_phase_one(
    synthetic_records: Path, tmp_path: Path
) -> None:
    out = tmp_path / "encoder.safetensors"
    config = PretrainConfig(steps=60, batch_size=16, learning_rate=0.003, num_workers=0)
    summary = pretrain_encoder(
        TINY_MODEL, str(synthetic_records / "train-*"), labels_file(synthetic_records), out, config
    )
    # An untrained classifier pays ~ln(33) per slot; after 60 steps far less.
    assert summary["steps"] == 60 and summary["loss"] < 0.5 * 9 * math.log(33), summary
    assert json.loads(out.with_name(out.name + ".json").read_text())["config"]["steps"] == 60

    run = tmp_path / "run"
    train(
        tiny_train_config(synthetic_records, run, 1, inception_checkpoint_file=str(out)), TINY_MODEL
    )
    saved = load_checkpoint(run).model_state()
    for name, tensor in load_file(out).items():
        assert torch.equal(saved[f"encoder.backbone.{name}"], tensor), name


def test_cli_and_clear_errors(synthetic_records: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "enc.safetensors"
    args = [
        "pretrain-encoder",
        f"--input_file_pattern={synthetic_records / 'train-*'}",
        f"--labels_file={labels_file(synthetic_records)}",
        f"--output_file={out}",
        "--encoder=cnn_small",
        "--steps=2",
        "--batch_size=8",
        "--num_workers=0",
    ]
    assert main(args) == 0 and out.is_file()
    assert "Pretrained cnn_small" in capsys.readouterr().out

    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps({"slots": 2, "classes": 3, "labels": {"1": [0, 5]}}))
    with pytest.raises(ShowtellError, match=r"labels.json: image 1 has labels \[0, 5\]"):
        load_labels(bad)
    bad.write_text("[1, 2]")
    assert main([*args[:2], f"--labels_file={bad}", *args[3:]]) == 2
    assert f"{bad}: not a labels file" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"slots": 1, "classes": 2, "labels": {"999999": [1]}}))
    assert main([*args[:2], f"--labels_file={other}", *args[3:]]) == 2
    assert "none of the" in capsys.readouterr().err
