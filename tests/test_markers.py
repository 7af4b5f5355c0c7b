"""Records built with other start, end and unknown words (build-mscoco-data's
--start_word/--end_word/--unknown_word) train, and their checkpoints caption from
that start word to that end word: the words travel from dataset.json into the
checkpoint, and from there to every command that captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL, tiny_train_config
from showtell.checkpoint import load_checkpoint
from showtell.data.build import BuildConfig, build_mscoco
from showtell.data.preprocess import ImagePreprocessor
from showtell.errors import ShowtellError
from showtell.inference import Captioner
from showtell.training.train import train

MARKERS = {"start_word": "<start>", "end_word": "<end>", "unknown_word": "<unk>"}


@pytest.fixture(scope="module")
def marked_records(synthetic_records: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic scenes of `synthetic_records`, built again with MARKERS."""
    source = synthetic_records.parent / "synthetic"
    out = tmp_path_factory.mktemp("marked") / "records"
    build_mscoco(
        source / "annotations" / "captions_train.json",
        source / "train",
        source / "annotations" / "captions_val.json",
        source / "val",
        BuildConfig(
            output_dir=out,
            train_shards=1,
            val_shards=1,
            test_shards=1,
            num_workers=1,
            min_word_count=2,
            **MARKERS,
        ),
    )
    return out


def test_captions_run_from_the_builds_start_word_to_its_end_word(
    marked_records: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(tiny_train_config(marked_records, run, 3), TINY_MODEL)
    checkpoint = load_checkpoint(run)
    assert checkpoint.vocab.markers == MARKERS
    assert json.loads((checkpoint.path / "config.json").read_text())["vocabulary"] == MARKERS

    # The expectation, from the files alone: a word's id is its line in word_counts.txt.
    lines = (marked_records / "word_counts.txt").read_text().splitlines()
    words = [line.rsplit(" ", 1)[0] for line in lines]
    start, end = words.index("<start>"), words.index("<end>")
    assert "<S>" not in words and "</S>" not in words

    captioner = Captioner(run, max_caption_length=6)
    assert captioner.vocab.id_to_word(len(words)) == "<unk>"
    preprocess = ImagePreprocessor(captioner.image_config, training=False)
    batch = torch.stack([preprocess(p.read_bytes()) for p in _val_images(marked_records)])
    for captions in captioner.caption_images(batch):
        for caption in captions:
            tokens = list(caption.tokens)
            assert tokens[0] == start, tokens  # im2txt's defaults would start from <unk>
            assert end not in tokens[1:-1], tokens  # the beam stops at the first end word

    # A model that always says the end word next: every caption is the start word and
    # the end word, nothing between (with another end word the beam would run on).
    with torch.no_grad():
        captioner.model.logits.bias[end] += 1000.0
    for captions in captioner.caption_images(batch):
        assert [list(c.tokens) for c in captions[:1]] == [[start, end]]
        assert captioner.sentence(captions[0]) == ""


def _val_images(records: Path) -> list[Path]:
    info = json.loads((records / "dataset.json").read_text())
    return sorted(Path(info["source"]["val_image_dir"]).iterdir())[:4]


def test_records_whose_start_word_is_not_in_the_vocabulary_are_refused(
    marked_records: Path, tmp_path: Path
) -> None:
    """Without the build's dataset.json, the words are im2txt's, which these records
    lack: an error before any work, not a model that starts every caption from <unk>."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in marked_records.iterdir():
        if path.name != "dataset.json":
            (bare / path.name).symlink_to(path)
    with pytest.raises(ShowtellError, match=r"word_counts\.txt: no '<S>', the start or end word"):
        train(tiny_train_config(bare, tmp_path / "run", 1), TINY_MODEL)
