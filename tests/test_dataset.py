from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import jpeg_bytes
from showtell.config import ImageConfig
from showtell.data.dataset import CaptionDataset, Example, collate_examples, make_loader
from showtell.data.preprocess import ImagePreprocessor, decode_rgb
from showtell.data.records import CaptionRecord, encode_caption_record
from showtell.data.tfrecord import TFRecordWriter

SMALL = ImageConfig(resize_height=12, resize_width=12, height=10, width=10)


def write_shards(directory: Path, num_shards: int, per_shard: int) -> list[int]:
    """Shards of records with unique image ids; returns all ids."""
    directory.mkdir(parents=True, exist_ok=True)
    image = jpeg_bytes(size=16)
    ids = []
    for s in range(num_shards):
        with TFRecordWriter(directory / f"train-{s:05d}-of-{num_shards:05d}") as writer:
            for k in range(per_shard):
                image_id = s * 1000 + k
                length = 3 + (k % 4)
                record = CaptionRecord(
                    image_id, image, ("w",) * length, tuple(range(1, length + 1))
                )
                writer.write(encode_caption_record(record))
                ids.append(image_id)
    return ids


@pytest.mark.parametrize("num_shards", [8, 3])  # at least as many shards as readers, and fewer
def test_ranks_times_workers_read_every_record_once(tmp_path: Path, num_shards: int) -> None:
    all_ids = write_shards(tmp_path, num_shards, per_shard=7)
    seen: list[int] = []
    for rank in range(2):
        dataset = CaptionDataset(
            str(tmp_path / "train-*"),
            SMALL,
            training=True,
            shuffle_buffer=5,
            rank=rank,
            world_size=2,
        )
        for batch in make_loader(dataset, batch_size=4, num_workers=2):
            assert batch.images.shape[1:] == (3, 10, 10)
            seen.extend(batch.image_ids.tolist())
    assert sorted(seen) == sorted(all_ids)


def test_training_order_changes_by_epoch_and_eval_order_is_fixed(tmp_path: Path) -> None:
    write_shards(tmp_path, 4, per_shard=10)
    train = CaptionDataset(str(tmp_path / "train-*"), SMALL, training=True, shuffle_buffer=16)
    first = [e.image_id for e in train]
    train.set_epoch(1)
    second = [e.image_id for e in train]
    assert sorted(first) == sorted(second) and first != second
    evaluation = CaptionDataset(str(tmp_path / "train-*"), SMALL, training=False)
    order = [e.image_id for e in evaluation]
    assert order == sorted(order) == [e.image_id for e in evaluation]


def test_batches_follow_im2txts_input_target_mask_rule() -> None:
    examples = [
        Example(torch.zeros(3, 2, 2), torch.tensor([1, 7, 8, 2]), 10),  # <S> a b </S>
        Example(torch.ones(3, 2, 2), torch.tensor([1, 9, 5, 6, 4, 2]), 11),
        Example(torch.ones(3, 2, 2), torch.tensor([1, 2]), 12),  # empty caption
    ]
    batch = collate_examples(examples)
    assert batch.input_seqs.tolist() == [[1, 7, 8, 0, 0], [1, 9, 5, 6, 4], [1, 0, 0, 0, 0]]
    assert batch.target_seqs.tolist() == [[7, 8, 2, 0, 0], [9, 5, 6, 4, 2], [2, 0, 0, 0, 0]]
    assert batch.mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert batch.images.shape == (3, 3, 2, 2)
    assert batch.image_ids.tolist() == [10, 11, 12]


def test_preprocessing_scales_to_minus_one_one_and_crops_centrally() -> None:
    red = jpeg_bytes((255, 0, 0), size=40)
    x = ImagePreprocessor(ImageConfig(), training=False)(red)
    assert x.shape == (3, 299, 299)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02)

    # Central crop: a 346x346 image whose 23-pixel border is black, centre white.
    image = Image.new("L", (346, 346), 0)
    image.paste(255, (23, 23, 323, 323))
    png = io.BytesIO()
    image.save(png, format="PNG")
    centre = ImagePreprocessor(ImageConfig(), training=False)(png.getvalue())
    assert centre.min() == 1.0  # the crop is exactly the white part (grey -> 3 channels)

    train = ImagePreprocessor(ImageConfig(), training=True, seed=3)
    crops = [train(png.getvalue()) for _ in range(4)]
    assert all(c.shape == (3, 299, 299) and c.min() >= -1 and c.max() <= 1 for c in crops)
    assert any(c.min() < 0.5 for c in crops)  # random crops reach the black border


def test_decoding_formats_torchvision_refuses() -> None:
    cmyk = io.BytesIO()
    Image.new("CMYK", (9, 7), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    png16 = io.BytesIO()
    Image.new("I;16", (5, 4), 40000).save(png16, format="PNG")
    for data, size in ((cmyk.getvalue(), (7, 9)), (png16.getvalue(), (4, 5))):
        image = decode_rgb(data)
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, *size)
    assert decode_rgb(cmyk.getvalue())[:, 3, 4].tolist()[0] > 200  # red stays red
    assert decode_rgb(png16.getvalue()).unique().tolist() == [40000 >> 8]  # scaled, not clipped


def test_a_process_that_leaves_loader_workers_running_still_exits(tmp_path: Path) -> None:
    """At exit, multiprocessing sends its children SIGTERM and waits for them: workers
    that ignored SIGTERM (to survive a scheduler's signal while the main process saves)
    would keep it waiting for ever. Here a script stops reading a loader halfway and
    exits with its iterator, and the workers, still alive."""
    write_shards(tmp_path, 2, per_shard=40)
    script = f"""
import sys
from showtell.config import ImageConfig
from showtell.data.dataset import CaptionDataset, make_loader
config = ImageConfig(resize_height=12, resize_width=12, height=10, width=10)
dataset = CaptionDataset({str(tmp_path / "train-*")!r}, config, training=True, shuffle_buffer=4)
leaked = iter(make_loader(dataset, batch_size=2, num_workers=2))
next(leaked)
print("read one batch", flush=True)
"""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "read one batch" in done.stdout, done.stderr[-2000:]
    assert time.monotonic() - start < 60
