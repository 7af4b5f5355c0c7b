"""The phase-1 fast path: encoder features computed once, cached on disk, reused.

In phase 1 the encoder is frozen, so its output for an image never changes; im2txt
recomputed it at every step anyway, which is nearly all of phase 1's cost. Here
each training image (not each of its ~5 caption records) is encoded once, with the
evaluation preprocessing (central crop, no distortions: the price of caching), and
the features are stored as float16 in a memory-mapped `.npy` beside the caption ids
of every training pair. The cache folder's name is a hash of the encoder's weights,
the preprocessing and the shard files (path, size, mtime), so any change builds a
new cache and an unchanged setup reuses the old one across runs and train_dirs.
A cache is written under `.tmp-KEY-PID@HOST` and renamed into place; such folders
left by killed builds are removed by the next build, and a failed build removes its
own. Building consumes nothing of the global RNG, so a run that builds the cache and
one that reuses it train identically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from showtell.checkpoint import remove_stale_temporaries, temporary_name
from showtell.config import ImageConfig
from showtell.data.dataset import Batch, pad_captions
from showtell.data.images import BadImageError
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import read_caption_records
from showtell.device import precision_context
from showtell.encoders import Encoder
from showtell.errors import ShowtellError

logger = logging.getLogger(__name__)

FEATURES_FILE = "features.npy"
PAIRS_FILE = "pairs.npz"
META_FILE = "meta.json"


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "showtell" / "features"


def cache_key(
    encoder: Encoder, image: ImageConfig, files: list[Path], dtype: torch.dtype = torch.float32
) -> str:
    h = hashlib.sha256()
    h.update(b"showtell feature cache, format 2")
    if dtype != torch.float32:  # computed in bfloat16 (float32 caches keep their keys)
        h.update(str(dtype).encode())
    h.update(encoder.name.encode())
    if encoder.stages:  # multi-scale features (single-scale caches keep their keys)
        h.update(json.dumps(encoder.stages).encode())
        if encoder.stage_pooling != "mean":  # (mean-pooled caches keep their keys)
            h.update(encoder.stage_pooling.encode())
        if encoder.attention_grid:  # (caches without maps keep their keys)
            h.update(f"{encoder.multiscale}, grid {encoder.attention_grid}".encode())
    for name, tensor in encoder.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(dataclasses.asdict(image), sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        h.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


@dataclass
class FeatureCache:
    """Features of every training image and the (image row, caption ids) of every pair."""

    directory: Path
    features: np.ndarray  # (num_images, D) float16, memory-mapped
    image_ids: np.ndarray  # (num_images,) int64: the image of each feature row
    pair_rows: np.ndarray  # (P,) int64: the feature row of each pair
    caption_offsets: np.ndarray  # (P + 1,) int64 into caption_ids
    caption_ids: np.ndarray  # (sum of lengths,) int64

    @property
    def num_pairs(self) -> int:
        return len(self.pair_rows)

    @classmethod
    def open(cls, directory: Path) -> FeatureCache:
        pairs = np.load(directory / PAIRS_FILE)
        return cls(
            directory,
            np.load(directory / FEATURES_FILE, mmap_mode="r"),
            pairs["image_ids"],
            pairs["pair_rows"],
            pairs["caption_offsets"],
            pairs["caption_ids"],
        )

    def feature_stats(self, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation of the cached features."""
        total = np.zeros(self.features.shape[1])
        squares = np.zeros(self.features.shape[1])
        for start in range(0, len(self.features), chunk):
            x = self.features[start : start + chunk].astype(np.float64)
            total += x.sum(0)
            squares += (x * x).sum(0)
        n = len(self.features)
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean * mean, 0.0))
        return torch.from_numpy(mean).float(), torch.from_numpy(std).float()

    def batch(self, pairs: np.ndarray) -> Batch:
        """A training batch of the given pair indices, padded as im2txt's batches."""
        rows = self.pair_rows[pairs]
        features = torch.from_numpy(self.features[rows].astype(np.float32))  # (B, D)
        input_seqs, target_seqs, mask = pad_captions(
            [
                torch.from_numpy(
                    self.caption_ids[self.caption_offsets[p] : self.caption_offsets[p + 1]]
                )
                for p in pairs
            ]
        )
        image_ids = torch.from_numpy(self.image_ids[rows])
        return Batch(features, input_seqs, target_seqs, mask, image_ids)


class _FirstOccurrences(IterableDataset):
    """Preprocessed images of the records chosen to represent each image, split by
    shard across DataLoader workers: yields (feature row, image)."""

    def __init__(self, files: list[Path], chosen: dict[tuple[int, int], int], image: ImageConfig):
        self.files, self.chosen, self.image = files, chosen, image

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        preprocess = ImagePreprocessor(self.image, training=False)
        for f in range(worker, len(self.files), workers):
            for r, record in enumerate(read_caption_records(self.files[f])):
                row = self.chosen.get((f, r))
                if row is not None:
                    try:
                        yield row, preprocess(record.image_data)
                    except BadImageError as e:
                        logger.warning("image %s: %s", record.image_id, e)
                        yield row, torch.zeros(3, self.image.height, self.image.width)


def build_feature_cache(
    files: list[Path],
    encoder: Encoder,
    image: ImageConfig,
    cache_root: Path,
    device: torch.device,
    num_workers: int = 2,
    batch_size: int = 64,
    dtype: torch.dtype = torch.bfloat16,
) -> FeatureCache:
    """Returns the cache for this encoder, preprocessing and data; builds it if missing.
    `dtype`: the encoder's arithmetic on CUDA (training's precision); elsewhere float32."""
    dtype = dtype if device.type == "cuda" else torch.float32
    directory = cache_root / cache_key(encoder, image, files, dtype)
    remove_stale_temporaries(cache_root)
    if (directory / META_FILE).is_file():
        logger.info("Feature cache: reusing %s", directory)
        return FeatureCache.open(directory)

    # Pass 1: every training pair's caption ids; one record chosen per image.
    rows: dict[int, int] = {}
    chosen: dict[tuple[int, int], int] = {}
    pair_rows: list[int] = []
    offsets, ids = [0], []
    for f, path in enumerate(tqdm(files, desc="reading captions", unit="shard", file=sys.stderr)):
        for r, record in enumerate(read_caption_records(path)):
            if record.image_id not in rows:
                rows[record.image_id] = len(rows)
                chosen[(f, r)] = rows[record.image_id]
            pair_rows.append(rows[record.image_id])
            ids.extend(record.caption_ids)
            offsets.append(len(ids))

    # Pass 2: encode each chosen image once.
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / temporary_name(directory.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _encode(
            tmp, files, chosen, len(rows), encoder, image, device, num_workers, batch_size, dtype
        )
        np.savez(
            tmp / PAIRS_FILE,
            image_ids=np.asarray(list(rows), dtype=np.int64),  # dicts keep insertion order
            pair_rows=np.asarray(pair_rows, dtype=np.int64),
            caption_offsets=np.asarray(offsets, dtype=np.int64),
            caption_ids=np.asarray(ids, dtype=np.int64),
        )
        meta = {
            "encoder": encoder.name,
            "image": dataclasses.asdict(image),
            "files": [str(p) for p in files],
            "images": len(rows),
            "pairs": len(pair_rows),
            "feature_dim": encoder.output_dim,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if directory.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, directory)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            message = f"{cache_root}: cannot write the feature cache: {e.strerror or e}"
            raise ShowtellError(message) from e
        raise
    logger.info(
        "Feature cache: %s images, %s pairs -> %s",
        f"{len(rows):,}",
        f"{len(pair_rows):,}",
        directory,
    )
    return FeatureCache.open(directory)


def _encode(
    tmp: Path,
    files: list[Path],
    chosen: dict[tuple[int, int], int],
    num_images: int,
    encoder: Encoder,
    image: ImageConfig,
    device: torch.device,
    num_workers: int,
    batch_size: int,
    dtype: torch.dtype,
) -> None:
    """Encodes each chosen image into `tmp`'s features file."""
    needed = num_images * encoder.output_dim * 2
    if shutil.disk_usage(tmp).free < needed + (1 << 20):  # a memory map on a full disk: SIGBUS
        raise ShowtellError(f"{tmp.parent}: {needed:,} bytes of features do not fit on the disk")
    features = np.lib.format.open_memmap(
        tmp / FEATURES_FILE, mode="w+", dtype=np.float16, shape=(num_images, encoder.output_dim)
    )
    loader = DataLoader(
        _FirstOccurrences(files, chosen, image),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG (dropout's) alone
    )
    encoder = encoder.to(device).eval()
    with (
        torch.inference_mode(),
        precision_context(device, dtype),
        tqdm(total=num_images, desc="caching features", unit="img", file=sys.stderr) as bar,
    ):
        for batch_rows, images in loader:
            out = encoder(images.to(device, non_blocking=True)).float()
            features[batch_rows.numpy()] = out.cpu().numpy().astype(np.float16)
            bar.update(len(batch_rows))
    features.flush()
    del features
