"""Reading the records for training and evaluation: a PyTorch IterableDataset over a
shard glob, and im2txt's dynamic-padding batches.

Each reader (one DataLoader worker of one DDP rank) gets its own share of the data,
so that every record is read exactly once per epoch: whole shards when there are at
least as many shards as readers (the shard list shuffled per epoch in training, the
same way on every reader), otherwise every reader walks all shards and keeps every
n-th record. In training a shuffle buffer mixes records across shards; im2txt held
2 x 2300 serialized records, and the buffer here is that size split among the local
workers, so memory does not grow with the number of workers.

Resuming mid-epoch is exact: every example carries its reader and its place in that
reader's shuffled stream, each batch the place of its last example, and an
`EpochPosition` (records consumed per reader, the reader due next) restores the rest
of the epoch as it would have come: each reader shuffles from the start again and
skips what was consumed, without decoding it (its distortions are seeded by the
place, not drawn in sequence), and the DataLoader's round robin over its workers
starts at the reader that was due next.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from showtell.config import SHUFFLE_BUFFER, ImageConfig
from showtell.data.images import BadImageError
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import CaptionRecord, expand_file_patterns, read_caption_records

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One image-caption pair, ready to batch."""

    image: torch.Tensor | bytes  # (3, H, W) float in [-1, 1], or the encoded bytes
    caption_ids: torch.Tensor  # (L,) int64, `<S>` ... `</S>`
    image_id: int
    # (local reader, records of its shuffled stream consumed up to and including this)
    source: tuple[int, int] = (0, 0)


@dataclass
class Batch:
    """im2txt's batch: caption [<S> w1 .. wn </S>] gives input [<S> w1 .. wn] and target
    [w1 .. wn </S>], mask 1 on those n+1 positions; padded with 0 to the longest."""

    images: torch.Tensor | list[bytes]  # (B, 3, H, W) float, (B, D) cached features, or bytes
    input_seqs: torch.Tensor  # (B, T) int64
    target_seqs: torch.Tensor  # (B, T) int64
    mask: torch.Tensor  # (B, T) int32, 1 where a target is real
    image_ids: torch.Tensor  # (B,) int64
    source: tuple[int, int] | None = None  # its last example's (reader, records consumed)

    def pin_memory(self) -> Batch:
        return Batch(
            self.images.pin_memory() if isinstance(self.images, torch.Tensor) else self.images,
            self.input_seqs.pin_memory(),
            self.target_seqs.pin_memory(),
            self.mask.pin_memory(),
            self.image_ids.pin_memory(),
            self.source,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        images = move(self.images) if isinstance(self.images, torch.Tensor) else self.images
        return Batch(
            images,
            move(self.input_seqs),
            move(self.target_seqs),
            move(self.mask),
            move(self.image_ids),
            self.source,
        )

    def __len__(self) -> int:
        return self.input_seqs.shape[0]


def pad_captions(
    captions: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """im2txt's dynamic padding: captions [<S> w1 .. wn </S>] -> input [<S> w1 .. wn],
    target [w1 .. wn </S>] and mask (1 on those positions), each (B, T), padded with 0
    to the longest caption (no bucketing)."""
    lengths = [len(c) - 1 for c in captions]
    batch_size, max_length = len(captions), max(lengths)
    input_seqs = torch.zeros(batch_size, max_length, dtype=torch.int64)
    target_seqs = torch.zeros(batch_size, max_length, dtype=torch.int64)
    mask = torch.zeros(batch_size, max_length, dtype=torch.int32)
    for i, (caption, n) in enumerate(zip(captions, lengths, strict=True)):
        input_seqs[i, :n] = caption[:-1]
        target_seqs[i, :n] = caption[1:]
        mask[i, :n] = 1
    return input_seqs, target_seqs, mask


def collate_examples(examples: Sequence[Example]) -> Batch:
    """Pads a list of examples into a Batch (no bucketing, as im2txt)."""
    input_seqs, target_seqs, mask = pad_captions([e.caption_ids for e in examples])
    images = examples[0].image
    stacked = (
        torch.stack([e.image for e in examples])  # type: ignore[misc]
        if isinstance(images, torch.Tensor)
        else [e.image for e in examples]
    )
    image_ids = torch.tensor([e.image_id for e in examples], dtype=torch.int64)
    source = examples[-1].source
    return Batch(stacked, input_seqs, target_seqs, mask, image_ids, source)  # type: ignore[arg-type]


def _distributed_position() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shuffle_buffer(
    items: Iterator[CaptionRecord], size: int, rng: random.Random
) -> Iterator[CaptionRecord]:
    buffer: list[CaptionRecord] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class EpochPosition:
    """How far an epoch has been read: records of each local reader's (DataLoader
    worker's) shuffled stream consumed, and the reader whose batch comes next."""

    consumed: list[int]
    next_reader: int = 0


class CaptionDataset(IterableDataset):
    """Iterates over the image-caption records of the shards matching `file_pattern`.

    Yields `Example`s with preprocessed images (or the encoded bytes when
    `decode_images` is False). Call `set_epoch` before each epoch in training so the
    shuffle differs between epochs, and to resume mid-epoch, with its `EpochPosition`.
    """

    def __init__(
        self,
        file_pattern: str | Sequence[str],
        image_config: ImageConfig | None = None,
        *,
        training: bool,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        seed: int = 0,
        decode_images: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.files: list[Path] = expand_file_patterns(file_pattern)
        self.image_config = image_config or ImageConfig()
        self.training = training
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.decode_images = decode_images
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position: EpochPosition | None = None

    def set_epoch(self, epoch: int, position: EpochPosition | None = None) -> None:
        """Selects the epoch's shuffle; `position` resumes it where it was left."""
        self.epoch, self.position = epoch, position

    def _reader(self) -> tuple[int, int, int, int]:
        """(this reader's index, number of readers, local reader index, local readers).
        The DataLoader's round robin starts at its worker 0: worker 0 takes the local
        reader due next, so that a resumed epoch interleaves batches as before."""
        rank, world_size = _distributed_position()
        rank = self.rank if self.rank is not None else rank
        world_size = self.world_size if self.world_size is not None else world_size
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        local = (worker + (self.position.next_reader if self.position else 0)) % workers
        return rank * workers + local, world_size * workers, local, workers

    def _records(self, reader: int, readers: int) -> Iterator[CaptionRecord]:
        files = list(self.files)
        if self.training:  # same order on every reader, so the split stays a partition
            random.Random(f"{self.seed}:{self.epoch}:shards").shuffle(files)
        if len(files) >= readers:
            for path in files[reader::readers]:
                yield from read_caption_records(path)
        else:
            index = 0
            for path in files:
                for record in read_caption_records(path):
                    if index % readers == reader:
                        yield record
                    index += 1

    def __iter__(self) -> Iterator[Example]:
        reader, readers, local, workers = self._reader()
        if self.position is not None and len(self.position.consumed) != workers:
            raise ValueError(f"position of {len(self.position.consumed)} readers, not {workers}")
        skip = self.position.consumed[local] if self.position is not None else 0
        rng = random.Random(f"{self.seed}:{self.epoch}:{reader}")
        records = self._records(reader, readers)
        distortions = rng.getrandbits(64)  # drawn before the lazy shuffle uses rng
        if self.training and self.shuffle_buffer > 1:
            records = _shuffle_buffer(records, max(1, self.shuffle_buffer // workers), rng)
        preprocess = ImagePreprocessor(self.image_config, self.training)
        for index, record in enumerate(records):
            if index < skip or len(record.caption_ids) < 2:
                continue  # consumed before a resume; or not even <S> </S>: nothing to predict
            image: torch.Tensor | bytes = record.image_data
            if self.decode_images:
                preprocess.rng.seed(distortions + index)  # by place: skipping needs no draws
                try:
                    image = preprocess(record.image_data)
                except BadImageError as e:
                    logger.warning("skipping image %s: %s", record.image_id, e)
                    continue
            caption = torch.tensor(record.caption_ids, dtype=torch.int64)
            yield Example(image, caption, record.image_id, (local, index + 1))


# How long a DataLoader worker outlives a SIGTERM (see `defer_stop_signals`).
WORKER_SIGTERM_GRACE_S = 5


def defer_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader workers leave SIGINT to the main process, and outlive SIGTERM by
    WORKER_SIGTERM_GRACE_S seconds, then end with status 0. A scheduler's SIGTERM reaches
    the main process too, which stops at its step boundary and saves; a worker killed by
    the signal at once would raise an error in the main process in the middle of that
    save (the loader takes a worker's death by a signal for a crash). A worker must
    still end, though: a worker that ignored SIGTERM for ever would hang the main
    process at exit, where multiprocessing terminates its children with SIGTERM and
    waits for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_soon)


def _end_soon(_signum: int, _frame: object) -> None:
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(WORKER_SIGTERM_GRACE_S)


def make_loader(
    dataset: CaptionDataset, batch_size: int, num_workers: int, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader of im2txt batches over `dataset`. It has its own generator: making
    its iterator draws a seed from it, and from the global RNG (dropout's) without one,
    which would make a resumed run's dropout differ from an uninterrupted run's."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_examples,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=defer_stop_signals if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )
