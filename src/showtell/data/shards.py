"""Writing a split's records into im2txt's shards: the pairs shuffled as im2txt did,
cut into shards as its threads cut them (`shard_plan`), each shard written by a pool
worker to `NAME.tmp` and renamed when complete, unreadable images skipped and reported.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from showtell.data.images import BadImageError, printable, read_image_file, verify_image
from showtell.data.records import CaptionRecord, encode_caption_record
from showtell.data.sources import ImageMetadata
from showtell.data.tfrecord import TFRecordWriter
from showtell.data.vocab import Vocabulary

logger = logging.getLogger(__name__)

SHUFFLE_SEED = 12345  # im2txt's random.seed(12345) before shuffling each split's pairs


@dataclass
class SplitSummary:
    """What was written for one split."""

    images: int = 0  # images with at least one record written
    pairs: int = 0  # records written
    shards: list[str] = field(default_factory=list)
    skipped_pairs: int = 0  # pairs whose image could not be read or decoded
    seconds: float = 0.0


# A pair as the workers see it: (image_id, image path, caption tokens, caption ids).
_Pair = tuple[int, str, list[str], list[int]]


def shard_plan(num_pairs: int, num_shards: int, num_threads: int) -> list[tuple[int, int, int]]:
    """(shard index, start, end) over the shuffled pairs, exactly as im2txt cut them."""
    threads = min(num_shards, num_threads)
    spacing = np.linspace(0, num_pairs, threads + 1).astype(int)
    shards_per_thread = num_shards // threads
    plan = []
    for t in range(threads):
        bounds = np.linspace(spacing[t], spacing[t + 1], shards_per_thread + 1).astype(int)
        for s in range(shards_per_thread):
            plan.append((t * shards_per_thread + s, int(bounds[s]), int(bounds[s + 1])))
    return plan


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def warn(message: str) -> None:
    """A warning printed above the progress bars, not through them."""
    tqdm.write(message, file=sys.stderr)


_progress: Any = None  # the queue through which workers report, set by init_worker


def init_worker(progress: Any) -> None:
    """A pool worker's initializer: where its progress messages go."""
    global _progress
    _progress = progress


def _write_shard(path: str, pairs: list[_Pair], max_pixels: int) -> tuple[str, int, set[int]]:
    """Writes one shard (to `path.tmp`, then renamed); returns (path, records, ids)."""
    tmp = path + ".tmp"
    written, image_ids = 0, set()
    bad: dict[str, str] = {}
    pending = 0
    with TFRecordWriter(tmp) as writer:
        for image_id, filename, caption, caption_ids in pairs:
            if filename in bad:
                _progress.put(("skip", filename, bad[filename]))
                continue
            try:
                data = read_image_file(filename)
                verify_image(data, max_pixels)
            except BadImageError as e:
                bad[filename] = str(e)
            if filename in bad:
                _progress.put(("skip", filename, bad[filename]))
                continue
            writer.write(
                encode_caption_record(
                    CaptionRecord(image_id, data, tuple(caption), tuple(caption_ids))
                )
            )
            written += 1
            image_ids.add(image_id)
            pending += 1
            if pending == 64:
                _progress.put(("done", pending))
                pending = 0
    _progress.put(("done", pending))
    os.replace(tmp, path)
    _progress.put(("shard", path))
    return path, written, image_ids


def write_split(
    split: str,
    images: list[tuple[ImageMetadata, list[list[str]]]],
    vocab: Vocabulary,
    output_dir: Path,
    num_shards: int,
    num_threads: int,
    max_pixels: int,
    skipped_files: dict[str, str],
    pool: Any,
    progress: Any,
) -> SplitSummary:
    """Writes one split's (image, caption) pairs, shuffled as im2txt did, into
    `num_shards` shards by the pool's workers (started with `init_worker`); files that
    cannot be read are skipped, each reported once (`skipped_files`)."""
    start = time.perf_counter()
    pairs: list[_Pair] = [
        (image.image_id, str(image.filename), caption, vocab.encode(caption))
        for image, captions in images
        for caption in captions
    ]
    random.Random(SHUFFLE_SEED).shuffle(pairs)  # == random.seed(12345); random.shuffle
    num_pairs = len(pairs)
    plan = shard_plan(len(pairs), num_shards, num_threads)
    names = [shard_name(split, index, num_shards) for index, _, _ in plan]

    summary = SplitSummary(shards=names)
    image_ids: set[int] = set()
    bar = tqdm(total=num_pairs, desc=f"writing {split}", unit="pair", file=sys.stderr)
    results = [
        pool.apply_async(_write_shard, (str(output_dir / name), pairs[begin:end], max_pixels))
        for name, (_, begin, end) in zip(names, plan, strict=True)
    ]
    del pairs  # the workers have their slices; keep the main process small

    # Each worker's messages arrive in order and end with "shard": once every shard
    # has reported, every skip of this split has been counted.
    finished = 0
    while finished < len(results):
        try:
            message = progress.get(timeout=0.5)
        except queue.Empty:
            for result in results:
                if result.ready() and not result.successful():
                    result.get()  # re-raises the worker's exception here
            continue
        if message[0] == "done":
            bar.update(message[1])
        elif message[0] == "skip":
            _, filename, reason = message
            summary.skipped_pairs += 1
            bar.update()
            if filename not in skipped_files:
                skipped_files[filename] = reason
                warn(f"Skipping file with invalid image data: {printable(filename)} ({reason})")
        else:
            finished += 1
    for result in results:
        _, written, ids = result.get()
        summary.pairs += written
        image_ids |= ids
    bar.close()
    summary.images = len(image_ids)
    summary.seconds = time.perf_counter() - start
    logger.info(
        f"{datetime.now()}: Finished processing all {num_pairs} image-caption "
        f"pairs in data set '{split}'."
    )
    return summary
