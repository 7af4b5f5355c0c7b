"""The demo's pipeline at a smaller size, through the CLI entry points a user runs:
a regression that stops the model from looking at the image fails here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from showtell.cli import main
from showtell.demo.pipeline import SETTINGS_FILE, _reuse_train_dir
from showtell.demo.synthetic import attribute_accuracy, load_attributes
from showtell.evaluation.evaluate import load_references
from showtell.evaluation.metrics import ptb_tokenize

# The demo's recipe at a test's size: the ImageNet encoder (offline EfficientNet-Lite0)
# frozen on 64x64 inputs, a small LSTM.
SMALL_PRESET = {
    "model": {
        "encoder": "efficientnet_lite0",
        "embedding_size": 128,
        "num_lstm_units": 128,
        "normalize_features": True,
        "multiscale_features": True,
        "image": {
            "resize_height": 64,
            "resize_width": 64,
            "height": 64,
            "width": 64,
            "random_flip": False,
            "colour_distortion": False,
        },
        "lstm_dropout_keep_prob": 1.0,
        "encoder_dropout_keep_prob": 1.0,
    },
    "train": {"batch_size": 32, "num_workers": 0, "log_every_n_steps": 200},
}


@pytest.mark.slow
def test_small_demo_pipeline_sees_the_images(tmp_path: Path, capsys) -> None:
    data, records, run = tmp_path / "synthetic", tmp_path / "records", tmp_path / "train"
    annotations = data / "annotations"
    preset = tmp_path / "small.json"
    preset.write_text(json.dumps(SMALL_PRESET))
    assert main(["make-synthetic", str(data), "--images=1000", "--seed=7", "--max_objects=2"]) == 0
    assert (
        main(
            [
                "build-mscoco-data",
                f"--train_image_dir={data / 'train'}",
                f"--val_image_dir={data / 'val'}",
                f"--train_captions_file={annotations / 'captions_train.json'}",
                f"--val_captions_file={annotations / 'captions_val.json'}",
                f"--output_dir={records}",
                "--train_shards=2",
                "--val_shards=1",
                "--test_shards=1",
            ]
        )
        == 0
    )
    common = [
        "train",
        f"--config={preset}",
        f"--input_file_pattern={records / 'train-*'}",
        f"--train_dir={run}",
        f"--feature_cache_dir={tmp_path / 'cache'}",
    ]
    assert main([*common, "--train_inception=false", "--number_of_steps=1200"]) == 0
    assert main([*common, "--train_inception=true", "--number_of_steps=1203"]) == 0
    eval_dir = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--metrics",
                f"--config={preset}",
                f"--input_file_pattern={records / 'test-*'}",
                f"--checkpoint_dir={run}",
                f"--eval_dir={eval_dir}",
                f"--annotations={annotations / 'captions_val.json'}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    model_cider = json.loads((eval_dir / "metrics.json").read_text())["metrics"]["CIDEr"]
    results = {
        r["image_id"]: r["caption"]
        for r in json.loads((eval_dir / "captions_results.json").read_text())
    }

    # The baseline: the most common training caption for every test image.
    counts = Counter(
        ptb_tokenize(c)
        for cs in load_references(annotations / "captions_train.json").values()
        for c in cs
    )
    fixed = tmp_path / "fixed.json"
    fixed.write_text(
        json.dumps([{"image_id": i, "caption": counts.most_common(1)[0][0]} for i in results])
    )
    assert (
        main(
            [
                "score",
                f"--results={fixed}",
                f"--annotations={annotations / 'captions_val.json'}",
                "--json",
            ]
        )
        == 0
    )
    fixed_cider = json.loads(capsys.readouterr().out)["CIDEr"]
    assert model_cider > 4 * fixed_cider, (model_cider, fixed_cider)

    # Colours of every object named right in far more scenes than chance (1/8 per object:
    # about 0.07 over scenes of one or two objects), and the number of objects in more
    # than the half a blind model gets. Measured (33 test scenes): colours 0.39, objects
    # 0.79, CIDEr-D 6.8x the fixed caption's.
    accuracy = attribute_accuracy(results, load_attributes(annotations / "attributes.json"))
    assert accuracy["colours"] > 0.25, accuracy
    assert accuracy["objects"] > 0.65, accuracy


def test_demo_reuses_a_train_dir_only_for_the_same_settings(tmp_path: Path, capsys) -> None:
    train_dir = tmp_path / "train"
    assert not _reuse_train_dir(train_dir, {"model": {"embedding_size": 256}})
    (train_dir / "model.ckpt-3000").mkdir()  # a checkpoint trained with those settings

    assert _reuse_train_dir(train_dir, {"model": {"embedding_size": 256}})
    assert (train_dir / "model.ckpt-3000").is_dir()

    # An edited preset: the old checkpoints move aside, phase 1 starts again.
    assert not _reuse_train_dir(train_dir, {"model": {"embedding_size": 512}})
    previous = tmp_path / "train.previous"
    assert (previous / "model.ckpt-3000").is_dir()
    assert [p.name for p in train_dir.iterdir()] == [SETTINGS_FILE]
    assert json.loads((train_dir / SETTINGS_FILE).read_text()) == {"model": {"embedding_size": 512}}
    assert "trained with other settings" in capsys.readouterr().out

    # A train_dir from before the settings were recorded is not trusted either.
    (train_dir / SETTINGS_FILE).unlink()
    (train_dir / "model.ckpt-10").mkdir()
    assert not _reuse_train_dir(train_dir, {"model": {"embedding_size": 512}})
    assert (previous / "model.ckpt-10").is_dir()  # replaced the older one
    assert not (previous / "model.ckpt-3000").exists()


@pytest.mark.parametrize(
    ("section", "key"), [("model", "num_lstm_unit"), ("train", "batch_sise"), ("demo", "image")]
)
def test_a_misspelt_preset_key_stops_the_demo_before_any_work(
    tmp_path: Path, capsys, section: str, key: str
) -> None:
    """Every section of the preset is read before the first scene is drawn: one line
    naming the file and the key, nothing written."""
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({**SMALL_PRESET, section: {key: 3}}))
    out = tmp_path / "demo"
    assert main(["demo", f"--config={preset}", f"--output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(preset) in err[0] and f"{section}.{key}" in err[0], err
    assert not out.exists() or not any(out.iterdir())
