"""im2txt's caption record: one (image, caption) pair as a SequenceExample in a TFRecord.

The keys and types are exactly those of im2txt's `build_mscoco_data.py`, so shards
written by the original read here and ours read there:

    context       image/image_id      Int64List, one value
                  image/data          BytesList, the image file's bytes, unchanged
    feature_lists image/caption       one BytesList per token, `<S>` ... `</S>`
                  image/caption_ids   one Int64List per token
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from showtell.data.sequence_example import (
    ProtoDecodeError,
    SequenceExample,
    decode_sequence_example,
    encode_sequence_example,
)
from showtell.data.tfrecord import RecordError, read_records
from showtell.errors import ShowtellError

IMAGE_ID_KEY = "image/image_id"
IMAGE_DATA_KEY = "image/data"
CAPTION_KEY = "image/caption"
CAPTION_IDS_KEY = "image/caption_ids"


@dataclass(frozen=True)
class CaptionRecord:
    """One image-caption pair as stored in a shard."""

    image_id: int
    image_data: bytes  # the encoded image file (JPEG for MSCOCO), unchanged
    caption: tuple[str, ...]  # tokens, including the start and end words
    caption_ids: tuple[int, ...]  # one vocabulary id per token


def encode_caption_record(record: CaptionRecord) -> bytes:
    """Serialises a record as im2txt's SequenceExample."""
    example = SequenceExample(
        context={IMAGE_ID_KEY: [record.image_id], IMAGE_DATA_KEY: [record.image_data]},
        feature_lists={
            CAPTION_KEY: [[token.encode("utf-8")] for token in record.caption],
            CAPTION_IDS_KEY: [[i] for i in record.caption_ids],
        },
    )
    return encode_sequence_example(example)


def _single(values: list, key: str) -> object:
    if len(values) != 1:
        raise ProtoDecodeError(f"feature {key!r} has {len(values)} values, expected 1")
    return values[0]


def decode_caption_record(data: bytes) -> CaptionRecord:
    """Parses im2txt's SequenceExample; raises ProtoDecodeError naming a missing key."""
    example = decode_sequence_example(data)
    for key in (IMAGE_ID_KEY, IMAGE_DATA_KEY):
        if key not in example.context:
            raise ProtoDecodeError(f"missing context feature {key!r}")
    for key in (CAPTION_KEY, CAPTION_IDS_KEY):
        if key not in example.feature_lists:
            raise ProtoDecodeError(f"missing feature list {key!r}")
    caption = tuple(
        _single(f, CAPTION_KEY).decode("utf-8")  # type: ignore[union-attr]
        for f in example.feature_lists[CAPTION_KEY]
    )
    caption_ids = tuple(
        int(_single(f, CAPTION_IDS_KEY))  # type: ignore[arg-type]
        for f in example.feature_lists[CAPTION_IDS_KEY]
    )
    if len(caption) != len(caption_ids):
        raise ProtoDecodeError(f"{len(caption)} caption tokens but {len(caption_ids)} caption ids")
    return CaptionRecord(
        image_id=int(_single(example.context[IMAGE_ID_KEY], IMAGE_ID_KEY)),  # type: ignore[arg-type]
        image_data=bytes(_single(example.context[IMAGE_DATA_KEY], IMAGE_DATA_KEY)),  # type: ignore[arg-type]
        caption=caption,
        caption_ids=caption_ids,
    )


def expand_file_patterns(patterns: str | Iterable[str]) -> list[Path]:
    """Files matching comma-separated glob patterns (the seed's `--input_file_pattern`).

    Sorted and de-duplicated; a pattern that matches nothing is an error, as in im2txt.
    """
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    paths: set[Path] = set()
    for pattern in patterns:
        matches = [Path(p) for p in glob.glob(pattern.strip()) if Path(p).is_file()]
        if not matches:
            raise ShowtellError(f"{pattern}: no files match this pattern")
        paths.update(matches)
    return sorted(paths)


def read_caption_records(path: str | Path, verify: bool = True) -> Iterator[CaptionRecord]:
    """Yields the records of one shard; a malformed record is a RecordError naming it."""
    for index, data in enumerate(read_records(path, verify=verify)):
        try:
            yield decode_caption_record(data)
        except ProtoDecodeError as e:
            raise RecordError(f"{path}: record {index} is not an im2txt caption record: {e}") from e
