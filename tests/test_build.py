from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import jpeg_bytes, make_coco_layout, write_coco
from showtell.cli import main
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.data.shards import shard_plan
from showtell.data.tokenize import tokenize_caption
from showtell.data.vocab import Vocabulary


def test_shard_plan_is_im2txts_nested_linspace() -> None:
    # 10 pairs, 4 shards, 2 threads: threads get [0, 5) and [5, 10), each cut in two.
    assert shard_plan(10, 4, 2) == [(0, 0, 2), (1, 2, 5), (2, 5, 7), (3, 7, 10)]
    # Fewer shards than threads: one thread per shard.
    assert shard_plan(7, 2, 8) == [(0, 0, 3), (1, 3, 7)]
    # More shards than pairs: some shards are empty, none is lost.
    plan = shard_plan(3, 8, 8)
    assert sum(end - start for _, start, end in plan) == 3 and len(plan) == 8


def _flags(paths: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "build-mscoco-data",
        *(f"--{k}={v}" for k, v in paths.items()),
        f"--output_dir={out}",
        *extra,
    ]


def _records(pattern: str) -> list:
    return [r for path in expand_file_patterns(pattern) for r in read_caption_records(path)]


@pytest.fixture
def layout_with_bad_input(tmp_path: Path) -> dict[str, Path]:
    """The COCO layout plus, in train: a non-image, a truncated JPEG, a missing file,
    a PNG (fine), and a caption that tokenizes to nothing."""
    paths = make_coco_layout(tmp_path / "coco", num_train=6, num_val=20)
    train_dir = paths["train_image_dir"]
    (train_dir / "not_an_image.jpg").write_bytes(b"this is text, not a JPEG")
    big = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(big, format="JPEG")
    (train_dir / "truncated.jpg").write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(png, format="PNG")
    (train_dir / "fine.png").write_bytes(png.getvalue())
    data = json.loads(paths["train_captions_file"].read_text())
    for image_id, name in (
        (901, "not_an_image.jpg"),
        (902, "truncated.jpg"),
        (903, "missing.jpg"),
        (904, "fine.png"),
    ):
        data["images"].append({"id": image_id, "file_name": name})
        data["annotations"] += [
            {"id": image_id * 10 + k, "image_id": image_id, "caption": f"A bad thing {k}."}
            for k in range(2)
        ]
    data["annotations"].append({"id": 1, "image_id": 904, "caption": "  "})
    paths["train_captions_file"].write_text(json.dumps(data))
    return paths


def test_build_mscoco(layout_with_bad_input: dict[str, Path], tmp_path: Path, capsys) -> None:
    paths = layout_with_bad_input
    out = tmp_path / "out"
    flags = [
        "--train_shards=4",
        "--val_shards=1",
        "--test_shards=2",
        "--num_threads=2",
        "--min_word_count=1",
    ]
    assert main(_flags(paths, out, *flags)) == 0
    captured = capsys.readouterr()

    # im2txt's split: train = 6 + 4 bad/PNG train images + int(0.85 * 20) = 17 val images.
    info = json.loads((out / "dataset.json").read_text())
    splits = info["splits"]
    assert (splits["train"]["images"], splits["val"]["images"], splits["test"]["images"]) == (
        6 + 1 + 17,
        1,
        2,
    )
    assert splits["train"]["pairs"] == 2 * (6 + 1 + 17) and splits["test"]["pairs"] == 4
    assert splits["train"]["skipped_pairs"] == 6
    assert splits["train"]["shards"] == [f"train-{i:05d}-of-00004" for i in range(4)]
    assert sorted(p.name for p in out.glob("test-*")) == [
        "test-00000-of-00002",
        "test-00001-of-00002",
    ]
    assert not list(out.glob("*.tmp"))

    # Every bad input is named once on stderr and counted; the run went on.
    reasons = {Path(s["file"]).name: s["reason"] for s in info["skipped_files"]}
    assert reasons == {
        "not_an_image.jpg": "not an image",
        "truncated.jpg": "truncated image",
        "missing.jpg": "file not found",
    }
    for name in reasons:
        assert captured.err.count(name) == 1, name
    assert len(info["skipped_captions"]) == 1 and captured.err.count("tokenizes to nothing") == 1
    assert "Finished processing all 4 image-caption pairs in data set 'test'." in captured.out
    assert "Finished processing all 54 image-caption pairs in data set 'train'." in captured.out

    # Records: im2txt's order. Pairs in image order, shuffled with random.seed(12345),
    # cut into contiguous shards; the bad ones left out.
    train = json.loads(paths["train_captions_file"].read_text())
    val = json.loads(paths["val_captions_file"].read_text())

    def pairs(data: dict, image_dir: Path) -> list[tuple[int, str, str]]:
        by_image: dict[int, list[str]] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a["caption"])
        return [
            (im["id"], str(image_dir / im["file_name"]), c)
            for im in data["images"]
            for c in by_image[im["id"]]
            if tokenize_caption(c)
        ]

    expected = pairs(train, paths["train_image_dir"])
    val_images = val["images"]
    val["images"] = val_images[:17]
    expected += pairs(val, paths["val_image_dir"])
    random.seed(12345)
    random.shuffle(expected)
    # As im2txt: the vocabulary counts every training caption, before images are read.
    counts = Counter(t for _, _, c in expected for t in ["<S>", *tokenize_caption(c), "</S>"])
    bad = {901, 902, 903}
    expected = [p for p in expected if p[0] not in bad]
    records = _records(str(out / "train-*"))
    assert [(r.image_id, " ".join(r.caption)) for r in records] == [
        (i, " ".join(["<S>", *tokenize_caption(c), "</S>"])) for i, _, c in expected
    ]
    for record, (_, filename, _) in zip(records, expected, strict=True):
        assert record.image_data == Path(filename).read_bytes()  # bytes unchanged

    # The vocabulary counts training captions only, and ids follow it.
    vocab = Vocabulary.load(out / "word_counts.txt")
    assert dict(zip(vocab.words, vocab.counts, strict=True)) == dict(counts)
    assert info["vocabulary"]["size"] == len(vocab)
    for r in _records(str(out / "test-*")):
        assert list(r.caption_ids) == vocab.encode(r.caption)


def test_errors_before_any_work(coco_layout: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    missing = dict(coco_layout, val_image_dir=tmp_path / "nope")
    assert main(_flags(missing, out)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: image directory is not a directory"
    ]
    assert not out.exists() or not list(out.iterdir())

    (tmp_path / "a_file").write_text("")
    assert main(_flags(coco_layout, tmp_path / "a_file")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'a_file'}: ") and len(err.splitlines()) == 1

    coco_layout["train_captions_file"].write_text('{"images": [')
    assert main(_flags(coco_layout, out)) == 2
    err = capsys.readouterr().err
    assert "captions_train2014.json: not valid JSON" in err and len(err.strip().splitlines()) == 1

    coco_layout["train_captions_file"].write_text('{"images": []}')
    assert main(_flags(coco_layout, out)) == 2
    assert "not a COCO caption file" in capsys.readouterr().err

    assert main(_flags(coco_layout, out, "--train_shards=12", "--num_threads=8")) == 2
    assert "must be a multiple of --num_threads" in capsys.readouterr().err


def test_dashed_flags_and_karpathy_source(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    (images / "val2014").mkdir(parents=True)
    entries = []
    for k, split in enumerate(["train", "restval", "val", "test", "test", "train"]):
        name = f"img{k}.jpg"
        (images / "val2014" / name).write_bytes(jpeg_bytes((k * 40, 0, 0)))
        entries.append(
            {
                "split": split,
                "filepath": "val2014",
                "filename": name,
                "cocoid": 100 + k,
                "sentences": [{"raw": f"A picture number {k}.", "tokens": []}],
            }
        )
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    out = tmp_path / "out"
    code = main(
        [
            "build_mscoco_data",
            f"--karpathy-split-file={tmp_path / 'dataset_coco.json'}",
            f"--image-dir={images}",
            f"--output-dir={out}",
            "--train-shards=1",
            "--val-shards=1",
            "--test-shards=1",
            "--min-word-count=1",
        ]
    )
    assert code == 0
    splits = json.loads((out / "dataset.json").read_text())["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"train": 3, "val": 1, "test": 2}
    assert sorted(r.image_id for r in _records(str(out / "test-*"))) == [103, 104]

    # Flickr8k style: no filepath, imgid instead of cocoid.
    for e in entries:
        del e["filepath"], e["cocoid"]
        e["imgid"] = int(e["filename"][3:-4])
        (images / e["filename"]).write_bytes((images / "val2014" / e["filename"]).read_bytes())
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    out8k = tmp_path / "out8k"
    assert (
        main(
            [
                "build-mscoco-data",
                f"--karpathy_split_file={tmp_path / 'dataset_flickr8k.json'}",
                f"--image_dir={images}",
                f"--output_dir={out8k}",
                "--train_shards=1",
                "--val_shards=1",
                "--test_shards=1",
            ]
        )
        == 0
    )
    assert sorted(r.image_id for r in _records(str(out8k / "test-*"))) == [3, 4]


def test_single_coco_file_source(tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for k in range(20):
        (image_dir / f"{k}.jpg").write_bytes(jpeg_bytes((k, k, k)))
    captions_file = write_coco(
        tmp_path / "captions.json",
        [(k, f"{k}.jpg") for k in range(20)],
        {k: [f"Image {k}."] for k in range(20)},
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "build-mscoco-data",
                f"--captions_file={captions_file}",
                f"--image_dir={image_dir}",
                f"--output_dir={out}",
                "--val_fraction=0.1",
                "--test_fraction=0.25",
                "--train_shards=2",
                "--val_shards=1",
                "--test_shards=1",
            ]
        )
        == 0
    )
    splits = json.loads((out / "dataset.json").read_text())["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"train": 13, "val": 2, "test": 5}
    assert sorted(r.image_id for r in _records(str(out / "test-*"))) == [15, 16, 17, 18, 19]
