"""Build im2txt's records: shards of (image, caption) SequenceExamples + word_counts.txt.

This is the seed's `build_mscoco_data.py`, reproduced where the output depends on it:
one record per (image, caption) pair; pairs shuffled with `random.seed(12345)`; the
shuffled list cut into shards with im2txt's nested `np.linspace` over
`min(num_shards, num_threads)` ranges, so shard k holds the same pairs as the
original's shard k (under Python 3, whose shuffle differs from Python 2's); the
vocabulary built from training captions only.

Beyond the original: the shards are written by a pool of processes (memory stays
bounded: each worker streams one image at a time and the main process holds only
file names and captions), a bad image (unreadable, not a regular file, not decodable,
over the pixel limit) or an empty caption is skipped, named once on stderr and counted
instead of stopping the run, each shard is written under a temporary name and renamed
when complete, and `dataset.json` records what was built. A malformed caption file is
an error before any work (see `sources`), and so is a build that would write no
training pair.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from showtell.config import opt
from showtell.config.merge import SettingError, check_least
from showtell.data.images import (
    check_max_pixels,
    max_image_pixels,
    printable,
)
from showtell.data.shards import init_worker, warn, write_split
from showtell.data.sources import (
    ImageMetadata,
    fraction_splits,
    load_coco_captions,
    load_karpathy_splits,
    mscoco_im2txt_splits,
)
from showtell.data.tokenize import tokenize_caption
from showtell.data.vocab import END_WORD, MARKERS, START_WORD, UNKNOWN_WORD, Vocabulary
from showtell.errors import ShowtellError

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"


@dataclass
class BuildConfig:
    """Options of `showtell build-mscoco-data`; defaults are im2txt's flags. Each field is
    a flag (`cli/data.py` generates them), its help written here."""

    output_dir: Path = field(metadata={"help": "where shards, word_counts.txt, dataset.json go"})
    train_shards: int = opt(256, "shards of the training split")
    val_shards: int = opt(4, "shards of the validation split")
    test_shards: int = opt(8, "shards of the test split")
    num_threads: int = opt(8, "im2txt's writer threads; fixes which pairs land in which shard")
    num_workers: int | None = opt(None, "processes writing shards (None: min(num_threads, CPUs))")
    start_word: str = opt(START_WORD, "token prepended to every caption")
    end_word: str = opt(END_WORD, "token appended to every caption")
    unknown_word: str = opt(UNKNOWN_WORD, "the word of out-of-vocabulary ids (not in the file)")
    min_word_count: int = opt(4, "keep words seen at least this often in training captions")
    word_counts_output_file: Path | None = field(
        default=None,
        metadata={"help": "vocabulary file (None: OUTPUT_DIR/word_counts.txt)"},
    )
    max_pixels: int | None = opt(
        None, "skip images with more pixels (None: $SHOWTELL_MAX_PIXELS, else data/images.py's)"
    )

    def shards(self, split: str) -> int:
        return {"train": self.train_shards, "val": self.val_shards, "test": self.test_shards}[split]

    def __post_init__(self) -> None:
        check_least("num_threads", self.num_threads, 1)
        check_least("min_word_count", self.min_word_count, 0)
        if self.num_workers is not None:
            check_least("num_workers", self.num_workers, 1)
        if self.max_pixels is not None:
            check_least("max_pixels", self.max_pixels, 1)
        for split in ("train", "val", "test"):
            n, name = self.shards(split), f"{split}_shards"
            check_least(name, n, 1)
            # im2txt's rule: each thread writes the same number of shards.
            if n >= self.num_threads and n % self.num_threads:
                raise SettingError(
                    f"--{name} {n} must be a multiple of --num_threads "
                    f"{self.num_threads} (or smaller than it)",
                    name,
                    "num_threads",
                )

    def validate(self) -> None:
        """The pixel limit from the environment where none was given (checked then)."""
        self.max_pixels = check_max_pixels(self.max_pixels or max_image_pixels())


def _tokenize_many(captions: list[str]) -> list[list[str]]:
    return [tokenize_caption(c) for c in captions]


def tokenize_splits(
    splits: dict[str, list[ImageMetadata]], config: BuildConfig, pool: Any
) -> tuple[dict[str, list[tuple[ImageMetadata, list[list[str]]]]], list[dict[str, Any]]]:
    """Each image with its tokenized captions (`<S> ... </S>`); empty captions skipped.

    Tokenizing is spread over the pool in chunks of images, results kept in order.
    """
    tokenized: dict[str, list[tuple[ImageMetadata, list[list[str]]]]] = {}
    skipped: list[dict[str, Any]] = []
    chunk = 500
    with tqdm(
        total=sum(len(images) for images in splits.values()),
        desc="tokenizing captions",
        unit="img",
        file=sys.stderr,
    ) as bar:
        for split, images in splits.items():
            tokenized[split] = []
            chunks = [images[i : i + chunk] for i in range(0, len(images), chunk)]
            raw_chunks = ([c for image in part for c in image.captions] for part in chunks)
            for part, words_list in zip(chunks, pool.imap(_tokenize_many, raw_chunks), strict=True):
                words_iter = iter(words_list)
                for image in part:
                    captions = []
                    for raw in image.captions:
                        words = next(words_iter)
                        if not words:
                            warn(
                                f"Skipping caption of image {image.image_id} "
                                f"({printable(str(image.filename))}): it tokenizes to "
                                f"nothing: {raw!r}"
                            )
                            skipped.append({"image_id": image.image_id, "caption": raw})
                            continue
                        captions.append([config.start_word, *words, config.end_word])
                    if captions:
                        tokenized[split].append((image, captions))
                bar.update(len(part))
    return tokenized, skipped


def build_records(
    splits: dict[str, list[ImageMetadata]],
    config: BuildConfig,
    source: dict[str, Any],
) -> dict[str, Any]:
    """Writes all splits, the vocabulary and dataset.json; returns dataset.json's content.

    A build with no training image is an error before any work, and one whose every
    training image was skipped is an error after it (its shards are removed).
    """
    config.validate()
    if not splits.get("train"):
        raise ShowtellError(
            f"{_source_files(source)}: no image with a caption for the training split "
            f"({sum(len(images) for images in splits.values()):,} images in all)"
        )
    config.output_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = config.word_counts_output_file or config.output_dir / "word_counts.txt"

    workers = config.num_workers or min(config.num_threads, os.cpu_count() or 1)
    context = mp.get_context("spawn")  # not fork: the parent runs tqdm's monitor thread
    progress = context.Queue()
    with context.Pool(workers, initializer=init_worker, initargs=(progress,)) as pool:
        return _build_records(splits, config, source, vocab_file, pool, progress)


def _build_records(
    splits: dict[str, list[ImageMetadata]],
    config: BuildConfig,
    source: dict[str, Any],
    vocab_file: Path,
    pool: Any,
    progress: Any,
) -> dict[str, Any]:
    tokenized, skipped_captions = tokenize_splits(splits, config, pool)
    if not tokenized["train"]:
        raise ShowtellError(f"{_source_files(source)}: every training caption tokenizes to nothing")
    vocab = Vocabulary.build(
        (c for _, captions in tokenized["train"] for c in captions),
        config.min_word_count,
        start_word=config.start_word,
        end_word=config.end_word,
        unknown_word=config.unknown_word,
    )
    Path(vocab_file).parent.mkdir(parents=True, exist_ok=True)
    vocab.save(vocab_file)
    logger.info(f"Wrote vocabulary file: {vocab_file} ({len(vocab.words)} words)")

    skipped_files: dict[str, str] = {}
    summaries = {
        split: write_split(
            split,
            images,
            vocab,
            config.output_dir,
            config.shards(split),
            config.num_threads,
            config.max_pixels,
            skipped_files,
            pool,
            progress,
        )
        for split, images in tokenized.items()
    }
    if summaries["train"].pairs == 0:
        for summary in summaries.values():
            for name in summary.shards:
                (config.output_dir / name).unlink(missing_ok=True)
        raise ShowtellError(
            f"{_source_files(source)}: no training pair was written: all "
            f"{summaries['train'].skipped_pairs:,} were skipped for their image files "
            "(named above); the shards were removed"
        )
    info = {
        "source": source,
        "splits": {split: asdict(s) for split, s in summaries.items()},
        "vocabulary": {
            "file": str(vocab_file),
            "words": len(vocab.words),
            "size": len(vocab),  # with the unknown word: the model's vocab_size
            "min_word_count": config.min_word_count,
            "start_word": config.start_word,
            "end_word": config.end_word,
            "unknown_word": config.unknown_word,
        },
        "max_pixels": config.max_pixels,
        "skipped_files": [{"file": f, "reason": r} for f, r in sorted(skipped_files.items())],
        "skipped_captions": skipped_captions,
    }
    (config.output_dir / DATASET_JSON).write_text(json.dumps(info, indent=2) + "\n")
    logger.info(format_summary(info))
    return info


def build_markers(folder: Path) -> dict[str, str]:
    """The start, end and unknown words of the build whose dataset.json is in `folder`
    (records built with `--start_word` etc.), as `Vocabulary.load` takes them; {} where
    there is no dataset.json (im2txt's own records: its words, the defaults)."""
    path = folder / DATASET_JSON
    if not path.is_file():
        return {}
    try:
        vocabulary = json.loads(path.read_text(encoding="utf-8")).get("vocabulary", {})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise ShowtellError(f"{path}: not a dataset.json of showtell's build ({e})") from e
    return {k: vocabulary[k] for k in MARKERS if isinstance(vocabulary.get(k), str)}


def _source_files(source: dict[str, Any]) -> str:
    """The caption or split files a build reads, for messages."""
    return ", ".join(printable(str(v)) for k, v in source.items() if k.endswith("_file"))


def format_summary(info: dict[str, Any]) -> str:
    """A short table of what a build wrote, for the console."""
    lines = [f"{'split':<6} {'images':>9} {'pairs':>10} {'shards':>7} {'pairs/s':>9}"]
    for split, s in info["splits"].items():
        rate = s["pairs"] / s["seconds"] if s["seconds"] else 0.0
        lines.append(
            f"{split:<6} {s['images']:>9,} {s['pairs']:>10,} {len(s['shards']):>7} {rate:>9,.0f}"
        )
    lines.append(
        f"vocabulary: {info['vocabulary']['words']:,} words (+{info['vocabulary']['unknown_word']})"
        f"; skipped: {len(info['skipped_files'])} image files, "
        f"{len(info['skipped_captions'])} empty captions"
    )
    return "\n".join(lines)


def build_mscoco(
    train_captions_file: Path,
    train_image_dir: Path,
    val_captions_file: Path,
    val_image_dir: Path,
    config: BuildConfig,
) -> dict[str, Any]:
    """The seed's build_mscoco_data: MSCOCO 2014 (or anything in its layout), im2txt's split."""
    config.validate()
    train = load_coco_captions(train_captions_file, train_image_dir)
    val = load_coco_captions(val_captions_file, val_image_dir)
    train_ids = {image.image_id for image in train}
    shared = [image.image_id for image in val if image.image_id in train_ids]
    if shared:
        raise ShowtellError(
            f"{printable(str(val_captions_file))}: {len(shared):,} image ids are in "
            f"{printable(str(train_captions_file))} too (the first: {shared[0]}); image ids "
            "must be unique across train and val"
        )
    source = {
        "kind": "coco-2014-im2txt-split",
        "train_captions_file": str(train_captions_file),
        "train_image_dir": str(train_image_dir),
        "val_captions_file": str(val_captions_file),
        "val_image_dir": str(val_image_dir),
    }
    return build_records(mscoco_im2txt_splits(train, val), config, source)


def build_coco_file(
    captions_file: Path,
    image_dir: Path,
    val_fraction: float,
    test_fraction: float,
    config: BuildConfig,
) -> dict[str, Any]:
    """Any one COCO-format caption file, cut in file order into train, val and test."""
    config.validate()
    images = load_coco_captions(captions_file, image_dir)
    source = {
        "kind": "coco-format",
        "captions_file": str(captions_file),
        "image_dir": str(image_dir),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    return build_records(fraction_splits(images, val_fraction, test_fraction), config, source)


def build_karpathy(split_file: Path, image_dir: Path, config: BuildConfig) -> dict[str, Any]:
    """A Karpathy-split JSON: train (+restval), val, test as the file assigns them."""
    config.validate()
    splits = load_karpathy_splits(split_file, image_dir)
    source = {"kind": "karpathy", "split_file": str(split_file), "image_dir": str(image_dir)}
    return build_records(splits, config, source)
