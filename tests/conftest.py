"""Shared fixtures: small COCO-layout data sets made by the tests themselves."""

from __future__ import annotations

import faulthandler
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from showtell.config import TrainConfig
from showtell.data.build import BuildConfig, build_mscoco
from showtell.demo.synthetic import SyntheticConfig, make_synthetic
from showtell.logs import ROOT, configure_console

# If the interpreter has not exited this long after the last test, something blocks it
# (a thread that never ends, a __del__ waiting on a lock): every thread's stack is
# printed and the run exits with status 1, instead of a CI that times out without a word.
EXIT_WATCHDOG_S = 300


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_WATCHDOG_S, exit=True)


@pytest.fixture(autouse=True)
def _console_log() -> Iterator[None]:
    """The library's log lines on the console, as the CLI shows them, for tests that
    call library functions directly and read what they report; a test that sets up a
    torchrun rank other than 0 (which quiets the log) does not quiet the tests after it."""
    configure_console()
    logger = logging.getLogger(ROOT)
    level = logger.level
    yield
    logger.setLevel(level)


# A model small enough to train in seconds on the synthetic 32x32 scenes.
TINY_MODEL = {
    "encoder": "cnn_small",
    "embedding_size": 32,
    "num_lstm_units": 32,
    "normalize_features": True,
    "image": {"resize_height": 36, "resize_width": 36, "height": 32, "width": 32},
}


def jpeg_bytes(colour: tuple[int, int, int] = (200, 30, 30), size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_coco(path: Path, images: list[tuple[int, str]], captions: dict[int, list[str]]) -> Path:
    """A COCO caption file; `images` keeps its order, as the real files do."""
    data = {
        "images": [{"id": i, "file_name": name} for i, name in images],
        "annotations": [
            {"id": 1000 * i + k, "image_id": i, "caption": c}
            for i, cs in captions.items()
            for k, c in enumerate(cs)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_coco_layout(
    root: Path, num_train: int, num_val: int, captions_per_image: int = 2
) -> dict[str, Path]:
    """train2014/ + val2014/ + annotations/ with valid JPEGs and simple captions."""
    paths = {
        "train_image_dir": root / "train2014",
        "val_image_dir": root / "val2014",
        "train_captions_file": root / "annotations" / "captions_train2014.json",
        "val_captions_file": root / "annotations" / "captions_val2014.json",
    }
    words = ["red", "blue", "green", "small", "large"]
    for split, first_id, count in (("train", 1, num_train), ("val", 10_001, num_val)):
        image_dir = paths[f"{split}_image_dir"]
        image_dir.mkdir(parents=True)
        images, captions = [], {}
        # Ids descend so that file order (kept) differs from id order (not used).
        for k in range(count):
            image_id = first_id + count - k
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            (image_dir / name).write_bytes(jpeg_bytes((k * 7 % 256, 50, 100)))
            images.append((image_id, name))
            captions[image_id] = [
                f"A {words[(k + c) % 5]} thing number {c}." for c in range(captions_per_image)
            ]
        write_coco(paths[f"{split}_captions_file"], images, captions)
    return paths


@pytest.fixture
def coco_layout(tmp_path: Path) -> dict[str, Path]:
    return make_coco_layout(tmp_path / "coco", num_train=6, num_val=20)


def tiny_train_config(records: Path, train_dir: Path, steps: int, **changes: object) -> TrainConfig:
    """Training settings for the tiny model on `synthetic_records`, quick on a CPU."""
    values = dict(
        input_file_pattern=str(records / "train-*"),
        train_dir=str(train_dir),
        number_of_steps=steps,
        batch_size=16,
        feature_cache_dir=str(records.parent / "feature-cache"),
        num_workers=0,
        save_interval_secs=0,
        log_every_n_steps=10,
        seed=3,
    )
    values.update(changes)
    return TrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def synthetic_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Records of 160 synthetic 32x32 scenes: train, val and test shards."""
    root = tmp_path_factory.mktemp("data")
    s = root / "synthetic"
    make_synthetic(s, SyntheticConfig(num_images=160, seed=5, image_size=32), workers=1)
    build_mscoco(
        s / "annotations" / "captions_train.json",
        s / "train",
        s / "annotations" / "captions_val.json",
        s / "val",
        BuildConfig(
            output_dir=root / "records",
            train_shards=2,
            val_shards=1,
            test_shards=1,
            num_workers=1,
            min_word_count=2,
        ),
    )
    return root / "records"


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train_dir holding a tiny model trained for 200 phase-1 steps."""
    from showtell.training.train import train

    train_dir = tmp_path_factory.mktemp("tiny-run")
    train(tiny_train_config(synthetic_records, train_dir, 200, log_every_n_steps=100), TINY_MODEL)
    return train_dir
