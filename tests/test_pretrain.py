"""Encoder pretraining (the demo's stand-in for ImageNet weights), on the tiny data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_MODEL, tiny_train_config
from showtell.checkpoint import load_checkpoint
from showtell.cli import main
from showtell.config import ImageConfig, PretrainConfig, model_config_from_dict
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.data.synthetic import OBJECT_LABELS_FILE, cell_labels, load_attributes
from showtell.encoders import build_encoder, load_pretrained
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell
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

    weights = load_file(out)
    assert weights["label_head.weight"].shape == (9 * 33, 2048)

    # A model without a label head loads the backbone and leaves the head out...
    run = tmp_path / "run"
    train(
        tiny_train_config(synthetic_records, run, 1, inception_checkpoint_file=str(out)), TINY_MODEL
    )
    saved = load_checkpoint(run).model_state()
    assert not any(name.startswith("encoder.label_head.") for name in saved)
    for name, tensor in weights.items():
        if not name.startswith("label_head."):
            assert torch.equal(saved[f"encoder.backbone.{name}"], tensor), name

    # ...one with `encoder_label_head` keeps the head, and its class probabilities (one
    # distribution per cell) join the features.
    with_head = {**TINY_MODEL, "encoder_label_head": [9, 33]}
    run = tmp_path / "run-head"
    train(
        tiny_train_config(synthetic_records, run, 1, inception_checkpoint_file=str(out)), with_head
    )
    checkpoint = load_checkpoint(run)
    model = ShowAndTell(checkpoint.model_config)
    model.load_state_dict(checkpoint.model_state())
    model.eval()
    assert model.image_embedding.in_features == 2048 + 9 * 33
    pretrained = build_encoder("cnn_small", label_head=(9, 33))
    load_pretrained(pretrained, str(out))
    pretrained.eval()
    images = _some_images(synthetic_records, checkpoint.model_config.image)
    with torch.no_grad():
        features = model.encoder(images)  # (B, 2048 + 297)
        backbone = pretrained.backbone_features(images)  # (B, 2048)
        probs = pretrained.label_logits(backbone).softmax(-1)  # (B, 9, 33)
    assert torch.allclose(features[:, :2048], backbone, atol=1e-6)
    assert torch.allclose(features[:, 2048:], probs.flatten(1), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(len(images), 9), atol=1e-5)


def _some_images(records: Path, image: ImageConfig) -> torch.Tensor:
    """Up to 32 training images, preprocessed for evaluation."""
    preprocess = ImagePreprocessor(image, training=False)
    images = []
    for path in expand_file_patterns(str(records / "train-*")):
        images += [preprocess(record.image_data) for record in read_caption_records(path)]
    return torch.stack(images[:32])


def test_label_head_errors_name_the_file_and_the_problem(
    synthetic_records: Path, tmp_path: Path
) -> None:
    with_head = {**TINY_MODEL, "encoder_label_head": [9, 33]}
    config = PretrainConfig(steps=1, batch_size=8, num_workers=0)
    with pytest.raises(ShowtellError, match=r"9 slots x 33 classes, but .* is 4 x 33"):
        pretrain_encoder(
            {**TINY_MODEL, "encoder_label_head": [4, 33]},
            str(synthetic_records / "train-*"),
            labels_file(synthetic_records),
            tmp_path / "never.safetensors",
            config,
        )
    with pytest.raises(ShowtellError, match=r"\[9, 33, 1\]: give \[slots, classes\]"):
        ShowAndTell(model_config_from_dict({**with_head, "encoder_label_head": [9, 33, 1]}))

    out = tmp_path / "encoder.safetensors"
    pretrain_encoder(
        TINY_MODEL, str(synthetic_records / "train-*"), labels_file(synthetic_records), out, config
    )
    encoder = build_encoder("cnn_small", label_head=(9, 33))
    with pytest.raises(ShowtellError, match="needs a trained label head"):
        load_pretrained(encoder)
    backbone_only = tmp_path / "backbone.safetensors"
    save_file({k: v for k, v in load_file(out).items() if "label_head" not in k}, backbone_only)
    with pytest.raises(ShowtellError, match=rf"{backbone_only}: has no label head"):
        load_pretrained(encoder, str(backbone_only))
    with pytest.raises(ShowtellError, match=rf"{out}: its label head \(297x2048 weights\)"):
        load_pretrained(build_encoder("cnn_small", label_head=(9, 30)), str(out))
    load_pretrained(encoder, str(out))  # the right shape loads


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


def test_cpu_bf16_pretraining_only_where_the_cpu_has_it(
    synthetic_records: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import showtell.device as training

    def pretrain(name: str, cpu_bf16: bool) -> dict[str, torch.Tensor]:
        config = PretrainConfig(steps=3, batch_size=8, num_workers=0, cpu_bf16=cpu_bf16)
        out = tmp_path / f"{name}.safetensors"
        pretrain_encoder(
            TINY_MODEL,
            str(synthetic_records / "train-*"),
            labels_file(synthetic_records),
            out,
            config,
        )
        return load_file(out)

    fp32 = pretrain("fp32", False)
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    fallback = pretrain("fallback", True)
    assert "no bfloat16 instructions; training in float32" in capsys.readouterr().out
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    bf16 = pretrain("bf16", True)
    assert all(torch.equal(fp32[k], fallback[k]) for k in fp32)
    head = "label_head.weight"
    assert bf16[head].dtype == torch.float32 and not torch.equal(bf16[head], fp32[head])
    assert torch.allclose(bf16[head], fp32[head], atol=0.05)
