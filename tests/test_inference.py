"""run-inference: the seed's output format, and every kind of bad input failing alone."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from reference_beam import ReferenceCaptioner, assert_printed_same
from showtell.cli import main
from showtell.data.preprocess import decode_rgb


def _save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


COLOURS = [(220, 30, 30), (30, 200, 30), (30, 200, 200)]  # three different captions


def _scene(
    mode: str = "RGB", size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = COLOURS[0]
) -> Image.Image:
    image = Image.new("RGB", size, (120, 120, 120))
    image.paste(colour, (5, 5, 20, 20))
    return image.convert(mode)


def test_output_is_the_seeds_format(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """im2txt's printed lines, equal to the reference captioner's (tests/reference_beam.py:
    the checkpoint read by hand, Pillow preprocessing, a per-image beam search), for
    images captioned in batches of 2 (images leave a batch while others go on)."""
    files = [_save(_scene(colour=c), tmp_path / f"img{i}.jpg") for i, c in enumerate(COLOURS)]
    code = main(
        [
            "run-inference",
            f"--checkpoint_path={tiny_checkpoint}",
            f"--input_files={tmp_path / 'img*.jpg'}",
            "--num_workers=0",
            "--batch_size=2",
            "--max_caption_length=30",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()

    reference = ReferenceCaptioner(tiny_checkpoint, max_caption_length=30)
    expected = [line for p in files for line in reference.printed(p.name, p.read_bytes())]
    assert_printed_same(lines, expected)
    assert len(lines) == 3 * 4  # beam of 3 per image
    assert re.fullmatch(r"  0\) [a-z ,.:]+ \(p=\d\.\d{6}\)", lines[1])
    assert "<S>" not in lines[1] and "</S>" not in lines[1]
    assert len({lines[1], lines[5], lines[9]}) == 3  # an image mix-up would show

    # Printed p's of long captions are 0.000000: the log-probabilities, from --json.
    args = [f"--checkpoint_path={tiny_checkpoint}", f"--input_files={tmp_path / 'img*.jpg'}"]
    args += ["--json", "--num_workers=0", "--batch_size=2", "--max_caption_length=30"]
    assert main(["caption", *args]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in files]
    for record, path in zip(records, files, strict=True):
        want = reference.captions(path.read_bytes())
        assert [c["caption"] for c in record["captions"]] == [s for s, _ in want]
        for got, (_, logprob) in zip(record["captions"], want, strict=True):
            assert got["log_prob"] == pytest.approx(logprob, abs=1e-4)
    record = records[0]
    assert record["captions"][0]["p"] == pytest.approx(math.exp(record["captions"][0]["log_prob"]))


def test_every_kind_of_file_works_or_fails_alone(
    tiny_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    good = {
        "rgb.jpg": _save(_scene(), tmp_path / "rgb.jpg"),
        "rgb.png": _save(_scene(), tmp_path / "rgb.png"),
        "grey.jpg": _save(_scene("L"), tmp_path / "grey.jpg"),
        "cmyk.jpg": _save(_scene("CMYK"), tmp_path / "cmyk.jpg"),
        "rgba.png": _save(_scene("RGBA"), tmp_path / "rgba.png"),
        "tiny.png": _save(Image.new("RGB", (1, 1), (9, 9, 9)), tmp_path / "tiny.png"),
        "deep.png": _save(Image.new("I;16", (20, 10), 50000), tmp_path / "deep.png"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    good["exif.jpg"] = _save(_scene(size=(40, 20)), tmp_path / "exif.jpg", exif=exif)
    bad = {
        "missing.jpg": "file not found",
        "text.jpg": "not an image",
        "truncated.jpg": "truncated image",
        "huge.png": "over the pixel limit",
        "folder.jpg": "is a directory",
    }
    (tmp_path / "text.jpg").write_text("not an image at all")
    noise = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(noise, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(noise.getvalue()[: len(noise.getvalue()) // 2])
    _save(Image.new("1", (20000, 10000)), tmp_path / "huge.png")  # 200 Mpx, a small file
    (tmp_path / "folder.jpg").mkdir()

    names = [
        "rgb.jpg",
        "missing.jpg",
        "rgb.png",
        "text.jpg",
        "grey.jpg",
        "truncated.jpg",
        "cmyk.jpg",
        "huge.png",
        "rgba.png",
        "folder.jpg",
        "tiny.png",
        "deep.png",
        "exif.jpg",
    ]
    code = main(
        [
            "run-inference",
            f"--checkpoint_path={tiny_checkpoint}",
            "--input_files=" + ",".join(str(tmp_path / n) for n in names),
            "--num_workers=2",
            "--batch_size=4",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    captioned = re.findall(r"^Captions for image (\S+):$", captured.out, flags=re.M)
    assert captioned == [n for n in names if n in good]  # in the order given
    # Each image's captions are the reference's (Pillow decodes it, EXIF orientation
    # applied), but for the 16-bit PNG, whose top byte is showtell's own rule.
    blocks = re.split(r"\n(?=Captions for image )", captured.out.strip())
    reference = ReferenceCaptioner(tiny_checkpoint)
    for name, block in zip(captioned, blocks, strict=True):
        if name != "deep.png":
            printed = reference.printed(name, good[name].read_bytes())
            assert_printed_same(block.splitlines(), printed)
    errors = captured.err.strip().splitlines()
    assert len(errors) == len(bad)
    for name, reason in bad.items():
        line = next(e for e in errors if name in e)
        assert line.startswith(f"error: {tmp_path / name}: ") and reason in line, line

    # EXIF orientation is applied: the 40x20 image comes out 20 wide, 40 high.
    assert tuple(decode_rgb(good["exif.jpg"].read_bytes(), apply_exif_orientation=True).shape) == (
        3,
        40,
        20,
    )


def test_input_and_vocabulary_errors(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "run-inference",
                f"--checkpoint_path={tiny_checkpoint}",
                f"--input_files={tmp_path / 'none-*.jpg'}",
            ]
        )
        == 2
    )
    assert "none-*.jpg: no files match this pattern" in capsys.readouterr().err

    (tmp_path / "other.txt").write_text("a 5\nb 4")
    assert (
        main(
            [
                "run-inference",
                f"--checkpoint_path={tiny_checkpoint}",
                f"--vocab_file={tmp_path / 'other.txt'}",
                f"--input_files={tmp_path}/x.jpg",
            ]
        )
        == 2
    )
    assert "differs from the vocabulary saved with the checkpoint" in capsys.readouterr().err

    assert main(["run-inference", f"--checkpoint_path={tmp_path}", "--input_files=a.jpg"]) == 2
    assert "no complete checkpoint found" in capsys.readouterr().err
