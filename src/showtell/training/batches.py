"""Where training batches come from: the phase-1 feature cache (`CachedBatches`) or
images decoded from the record shards (`RecordBatches`).

Both are endless iterators over epochs that keep their position current (`state`,
after each batch taken) and can be put back there (`restore`): a resumed run takes the
very batches an uninterrupted one would have taken next.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from showtell.config import ModelConfig, TrainConfig
from showtell.data.build import DATASET_JSON
from showtell.data.dataset import Batch, CaptionDataset, EpochPosition, make_loader
from showtell.data.records import read_records
from showtell.device import Process
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell


class Rows(Protocol):
    """What `CachedBatches` draws from: the feature cache (one row a pair) or its
    images (`scst.ImageRows`, one row an image)."""

    @property
    def num_pairs(self) -> int: ...

    def batch(self, rows: np.ndarray) -> Batch: ...


class Batches(Protocol):
    """A training stream: endless batches, a position that can be saved and restored."""

    steps_per_epoch: float

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def __iter__(self) -> Iterator[Batch]: ...


def count_pairs(files: list[Path]) -> int:
    """Training pairs in the shards: from dataset.json when it describes exactly these
    shards, else by reading every record once."""
    info_path = files[0].parent / DATASET_JSON
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        names = sorted(p.name for p in files)
        for split in info.get("splits", {}).values():
            if sorted(split["shards"]) == names:
                return int(split["pairs"])
    return sum(1 for path in files for _ in read_records(path, verify=False))


class CachedBatches:
    """Phase 1 from the feature cache: each epoch a fresh permutation of all pairs
    (seeded by epoch), cut into batches, every rank taking its own slice of each
    step's effective batch. (epoch, batches taken) is the whole position."""

    def __init__(self, cache: Rows, batch_size: int, process: Process, seed: int):
        self.cache, self.batch_size, self.process, self.seed = cache, batch_size, process, seed
        self.steps_per_epoch = cache.num_pairs // (batch_size * process.world_size)
        if self.steps_per_epoch == 0:
            raise ShowtellError(
                f"{cache.num_pairs} training pairs are fewer than one effective batch of "
                f"{batch_size * process.world_size}"
            )
        self.epoch, self.position = 0, 0

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state.get("position", 0))

    def __iter__(self) -> Iterator[Batch]:
        b, world = self.batch_size, self.process.world_size
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.cache.num_pairs, generator=g).numpy()
            while self.position < self.steps_per_epoch:
                first = (self.position * world + self.process.rank) * b
                self.position += 1
                yield self.cache.batch(np.sort(order[first : first + b]))
            self.epoch, self.position = self.epoch + 1, 0


class RecordBatches:
    """Phase 2 (or `--no-feature-cache`): images decoded and distorted from the shards.
    The position is the epoch and its `EpochPosition` (records each DataLoader worker
    has consumed from its shuffled stream, the worker due next), read off the batches."""

    def __init__(
        self, files: list[Path], model_config: ModelConfig, config: TrainConfig, process: Process
    ):
        self.dataset = CaptionDataset(
            [str(f) for f in files],
            model_config.image,
            training=True,
            seed=config.seed,
            rank=process.rank,
            world_size=process.world_size,
        )
        self.batch_size, self.config, self.process = config.batch_size, config, process
        self.steps_per_epoch = count_pairs(files) / (config.batch_size * process.world_size)
        self.readers = max(1, config.num_workers)
        self.epoch, self.position = 0, EpochPosition([0] * self.readers)

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": list(self.position.consumed),
            "next_reader": self.position.next_reader,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        consumed = state.get("consumed")
        if consumed is not None and len(consumed) == self.readers:
            self.position = EpochPosition([int(c) for c in consumed], int(state["next_reader"]))
        else:  # older checkpoints: batches taken in the epoch, dealt round robin
            taken, n = int(state.get("position", 0)), self.readers
            consumed = [len(range(r, taken, n)) * self.batch_size for r in range(n)]
            self.position = EpochPosition(consumed, taken % n)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            position = self.position
            self.dataset.set_epoch(
                self.epoch, EpochPosition(list(position.consumed), position.next_reader)
            )
            loader = make_loader(
                self.dataset,
                self.batch_size,
                self.config.num_workers,
                pin_memory=self.process.device.type == "cuda",
            )
            for batch in loader:
                assert batch.source is not None
                reader, consumed = batch.source
                position.consumed[reader] = consumed
                position.next_reader = (reader + 1) % self.readers
                yield batch
            self.epoch, self.position = self.epoch + 1, EpochPosition([0] * self.readers)


def image_batches(
    files: list[Path], model_config: ModelConfig, limit: int, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """Up to `limit` training images with evaluation preprocessing, in batches: the same
    images on every DDP rank (not the rank's share), so that every rank calibrates its
    encoder alike and so finds the same feature cache."""
    dataset = CaptionDataset(
        [str(f) for f in files], model_config.image, training=False, rank=0, world_size=1
    )
    seen = 0
    for batch in make_loader(dataset, batch_size=batch_size, num_workers=0):
        yield batch.images
        seen += len(batch)
        if seen >= limit:
            return


def sample_feature_stats(
    model: ShowAndTell, files: list[Path], model_config: ModelConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature statistics from up to 2,048 training images (when there is no cache)."""
    model.encoder.eval()
    with torch.inference_mode():
        features = torch.cat(
            [
                model.encoder(images.to(device)).double().cpu()
                for images in image_batches(files, model_config, limit=2048)
            ]
        )
    return features.mean(0).float(), features.std(0, unbiased=False).float()
