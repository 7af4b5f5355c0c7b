"""Hostile and unlucky input to the data commands (issue 16, failures 7 and 8): each case
as it was measured failing, shown fixed.

build-mscoco-data: swapped image directories, captions that are not strings, captions
for images that do not exist, duplicate image ids, file names that climb out of the
image directory, a build that writes nothing, a decompression bomb. run-inference: a
FIFO, a device and a directory among the files, names with newlines in them.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import jpeg_bytes, make_coco_layout
from showtell.cli import main
from showtell.config import ImageConfig
from showtell.data.images import MAX_IMAGE_PIXELS, BadImageError, printable
from showtell.data.preprocess import ImagePreprocessor, decode_rgb
from showtell.data.records import expand_file_patterns, read_caption_records
from showtell.inference import expand_input_files


def png_bomb(width: int = 13_000, height: int = 13_000) -> bytes:
    """A black 1-bit PNG of width x height pixels (169 Mpx: under Pillow's own limit),
    written by hand: about 20 KB of file that would decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _build(paths: dict[str, Path], out: Path, *extra: str) -> int:
    return main(
        [
            "build-mscoco-data",
            *(f"--{k}={v}" for k, v in paths.items()),
            f"--output_dir={out}",
            "--train_shards=1",
            "--val_shards=1",
            "--test_shards=1",
            "--num_workers=1",
            "--min_word_count=1",
            *extra,
        ]
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    return make_coco_layout(tmp_path / "coco", num_train=4, num_val=10)


def test_swapped_image_directories_fail_before_any_work(
    layout: dict[str, Path], tmp_path: Path, capsys
) -> None:
    swapped = dict(
        layout, train_image_dir=layout["val_image_dir"], val_image_dir=layout["train_image_dir"]
    )
    out = tmp_path / "out"
    assert _build(swapped, out) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {layout['train_captions_file']}: 4 of 4 images are not in ")
    assert "COCO_train2014_" in line  # names the first missing file
    assert not out.exists() or not list(out.iterdir())  # no shard, no vocabulary


@pytest.mark.parametrize("caption", [None, 42, ["a", "list"], {"text": "a dog"}])
def test_captions_that_are_not_strings_are_rejected(
    layout: dict[str, Path], tmp_path: Path, capsys, caption
) -> None:
    def spoil(data: dict) -> None:
        data["annotations"][3]["caption"] = caption
        data["annotations"][5]["caption"] = caption

    _edit(layout["val_captions_file"], spoil)
    out = tmp_path / "out"
    assert _build(layout, out) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {layout['val_captions_file']}: annotations[3] ("), line
    assert f"caption is {json.dumps(caption)}, not a string (1 more entries" in line
    assert not out.exists() or not list(out.iterdir())


def test_karpathy_sentences_that_are_not_strings_are_rejected(tmp_path: Path, capsys) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes())
    split_file = tmp_path / "dataset_coco.json"
    image = {"split": "train", "filename": "a.jpg", "cocoid": 7}
    split_file.write_text(json.dumps({"images": [dict(image, sentences=[{"raw": None}])]}))
    flags = [f"--karpathy_split_file={split_file}", f"--image_dir={tmp_path / 'images'}"]
    assert main(["build-mscoco-data", *flags, f"--output_dir={tmp_path / 'out'}"]) == 2
    assert _one_error_line(capsys) == (
        f"error: {split_file}: images[0] (cocoid 7): a sentence's raw is null, not a string"
    )


def test_captions_for_images_that_do_not_exist_are_reported(
    layout: dict[str, Path], tmp_path: Path, capsys
) -> None:
    _edit(
        layout["train_captions_file"],
        lambda d: d["annotations"].append({"id": 9, "image_id": 424242, "caption": "A cat."}),
    )
    assert _build(layout, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    assert line == (
        f"error: {layout['train_captions_file']}: annotations[8]: a caption for image_id "
        "424242, which is not in 'images'"
    )


def test_duplicate_image_ids_are_rejected(layout: dict[str, Path], tmp_path: Path, capsys) -> None:
    def duplicate(data: dict) -> None:
        data["images"][2]["id"] = data["images"][0]["id"]

    _edit(layout["train_captions_file"], duplicate)
    assert _build(layout, tmp_path / "out") == 2
    line = _one_error_line(capsys)
    image_id = json.loads(layout["train_captions_file"].read_text())["images"][0]["id"]
    assert line == (
        f"error: {layout['train_captions_file']}: images[2]: image id {image_id} is used by "
        "images[0] too"
    )

    # The same id in the train and the val caption files: records would share it.
    fresh = make_coco_layout(tmp_path / "fresh", num_train=4, num_val=10)
    train_id = json.loads(fresh["train_captions_file"].read_text())["images"][0]["id"]

    def reuse(data: dict) -> None:  # val's first image and its two captions
        data["images"][0]["id"] = train_id
        for annotation in data["annotations"][:2]:
            annotation["image_id"] = train_id

    _edit(fresh["val_captions_file"], reuse)
    assert _build(fresh, tmp_path / "out2") == 2
    assert _one_error_line(capsys) == (
        f"error: {fresh['val_captions_file']}: 1 image ids are in "
        f"{fresh['train_captions_file']} too (the first: {train_id}); image ids must be "
        "unique across train and val"
    )


@pytest.mark.parametrize(
    ("file_name", "reason"),
    [
        ("../outside.jpg", "leaves the image directory (..)"),
        ("sub/../../outside.jpg", "leaves the image directory (..)"),
        ("OUTSIDE", "is an absolute path"),
        ("", "is empty"),
        (42, "is 42, not a string"),
    ],
)
def test_file_names_that_leave_the_image_directory_are_rejected(
    layout: dict[str, Path], tmp_path: Path, capsys, file_name, reason
) -> None:
    outside = layout["train_image_dir"].parent / "outside.jpg"
    outside.write_bytes(jpeg_bytes())  # there to be read, were the name followed
    name = str(outside) if file_name == "OUTSIDE" else file_name
    _edit(layout["train_captions_file"], lambda d: d["images"][1].update(file_name=name))
    out = tmp_path / "out"
    assert _build(layout, out) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {layout['train_captions_file']}: images[1] (id ")
    assert line.endswith(f"file_name {reason}"), line
    assert not out.exists() or not list(out.iterdir())


def test_symlinks_inside_the_image_directory_are_followed(
    layout: dict[str, Path], tmp_path: Path
) -> None:
    # The documented choice: the image directory is the user's own (often a tree of
    # links into a shared store); only the caption file's names are distrusted.
    image = layout["train_image_dir"] / sorted(os.listdir(layout["train_image_dir"]))[0]
    store = tmp_path / "store.jpg"
    image.rename(store)
    image.symlink_to(store)
    out = tmp_path / "out"
    assert _build(layout, out) == 0
    records = [
        r for p in expand_file_patterns(str(out / "train-*")) for r in read_caption_records(p)
    ]
    assert store.read_bytes() in {r.image_data for r in records}


def test_a_build_that_writes_no_pairs_is_an_error(
    layout: dict[str, Path], tmp_path: Path, capsys
) -> None:
    # Every image file exists (so the up-front check passes) but none is an image.
    for image_dir in (layout["train_image_dir"], layout["val_image_dir"]):
        for image in image_dir.iterdir():
            image.write_text("<html>404</html>")
    out = tmp_path / "out"
    assert _build(layout, out) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {layout['train_captions_file']}, {layout['val_captions_file']}: no training "
        "pair was written: all 24 were skipped for their image files (named above); the "
        "shards were removed"
    ]
    assert captured.err.count("Skipping file with invalid image data") == 14
    assert not list(out.glob("*-of-*")) and not (out / "dataset.json").exists()

    # An empty caption file: nothing to build, said before any work.
    empty = {"images": [], "annotations": []}
    layout["train_captions_file"].write_text(json.dumps(empty))
    layout["val_captions_file"].write_text(json.dumps(empty))
    assert _build(layout, tmp_path / "out2") == 2
    assert "no image with a caption for the training split (0 images in all)" in (
        _one_error_line(capsys)
    )


@pytest.mark.slow
def test_a_pixel_bomb_is_refused_everywhere_images_are_decoded(
    layout: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    bomb = png_bomb()
    assert len(bomb) < 30_000
    with warnings.catch_warnings():  # Pillow itself reads the header, and warns
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(bomb)) as image:
            assert image.size == (13_000, 13_000)

    # build: the bomb (and a non-image whose name holds a newline) are skipped, each
    # named on one line, and the rest is written.
    train_dir = layout["train_image_dir"]
    (train_dir / "bomb.png").write_bytes(bomb)
    (train_dir / "bad\nname.jpg").write_text("not an image")

    def add(data: dict) -> None:
        for image_id, name in ((901, "bomb.png"), (902, "bad\nname.jpg")):
            data["images"].append({"id": image_id, "file_name": name})
            data["annotations"].append({"id": image_id, "image_id": image_id, "caption": "A b."})

    _edit(layout["train_captions_file"], add)
    out = tmp_path / "out"
    assert _build(layout, out) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "Skipping file" in line]
    assert sorted(skipped) == [
        f"Skipping file with invalid image data: {train_dir}/bad\\nname.jpg (not an image)",
        f"Skipping file with invalid image data: {train_dir}/bomb.png (13000x13000 is over "
        f"the pixel limit of {MAX_IMAGE_PIXELS:,})",
    ]
    info = json.loads((out / "dataset.json").read_text())
    assert info["max_pixels"] == MAX_IMAGE_PIXELS and len(info["skipped_files"]) == 2

    # Training's (and evaluation's) decoding refuses it before decoding a pixel.
    preprocess = ImagePreprocessor(ImageConfig(), training=True, seed=0)
    with pytest.raises(BadImageError, match="13000x13000 is over the pixel limit of 52,000,000"):
        preprocess(bomb)

    # The limit is one setting: SHOWTELL_MAX_PIXELS moves it for every decoder, and
    # build's --max_pixels reaches its worker processes.
    small = jpeg_bytes(size=24)  # 576 pixels
    monkeypatch.setenv("SHOWTELL_MAX_PIXELS", "500")
    with pytest.raises(BadImageError, match="24x24 is over the pixel limit of 500"):
        decode_rgb(small)
    monkeypatch.delenv("SHOWTELL_MAX_PIXELS")
    assert tuple(decode_rgb(small).shape) == (3, 24, 24)
    assert _build(layout, tmp_path / "out2", "--max_pixels=500") == 2
    assert "no training pair was written" in _one_error_line(capsys)
    assert _build(layout, tmp_path / "out3", "--max_pixels=200000000") == 2
    assert "--max_pixels must be between 1 and 178,956,970" in _one_error_line(capsys)


@pytest.mark.slow
def test_run_inference_reads_only_regular_files_and_escapes_names(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    def jpeg(name: str) -> str:
        (tmp_path / name).write_bytes(jpeg_bytes(size=40))
        return str(tmp_path / name)

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # no writer ever comes: reading it would wait forever
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "two\nlines.jpg").write_text("not an image")
    files = [
        jpeg("first.jpg"),
        str(fifo),
        "/dev/null",
        str(tmp_path / "bomb.png"),
        str(tmp_path / "dir.jpg"),
        str(tmp_path / "two\nlines.jpg"),
        jpeg("new\nline\x1b[31m.jpg"),
        jpeg("last.jpg"),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "showtell",
            "run-inference",
            f"--checkpoint_path={tiny_checkpoint}",
            "--input_files=" + ",".join(files),
            "--num_workers=1",
            "--batch_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,  # the FIFO hung the old code forever: a hang fails here
        env=env,
    )
    assert result.returncode == 1, result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("Captions for")]
    assert headers == [
        "Captions for image first.jpg:",
        "Captions for image new\\nline\\x1b[31m.jpg:",
        "Captions for image last.jpg:",
    ]
    assert len(result.stdout.splitlines()) == 3 * 4  # each header and its beam of 3
    assert result.stderr.splitlines() == [
        f"error: {fifo}: not a regular file (a FIFO)",
        "error: /dev/null: not a regular file (a character device)",
        f"error: {tmp_path}/bomb.png: 13000x13000 is over the pixel limit of 52,000,000",
        f"error: {tmp_path}/dir.jpg: is a directory",
        f"error: {tmp_path}/two\\nlines.jpg: not an image",
    ]


def test_names_in_messages_are_one_line(tmp_path: Path, capsys) -> None:
    assert printable("a\nb\tc\x1b[0m\u2028\udcff é.jpg") == "a\\nb\\tc\\x1b[0m\\u2028\\udcff é.jpg"
    assert printable("plain name.jpg") == "plain name.jpg"
    with pytest.raises(Exception, match=r"^x\\n\*\.jpg: no files match this pattern$"):
        expand_input_files("x\n*.jpg")
    bad_dir = tmp_path / "no\nsuch"
    assert (
        main(
            [
                "build-mscoco-data",
                f"--captions_file={tmp_path / 'c.json'}",
                f"--image_dir={bad_dir}",
                f"--output_dir={tmp_path / 'out'}",
            ]
        )
        == 2
    )
    assert _one_error_line(capsys) == (
        f"error: {tmp_path}/no\\nsuch: image directory is not a directory"
    )
