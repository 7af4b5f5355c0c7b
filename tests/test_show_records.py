from __future__ import annotations

import json
from pathlib import Path

from conftest import jpeg_bytes
from showtell.cli import main
from showtell.data.records import CaptionRecord, encode_caption_record
from showtell.data.tfrecord import TFRecordWriter


def test_show_records_text_json_and_errors(tmp_path: Path, capsys) -> None:
    image = jpeg_bytes(size=20)
    with TFRecordWriter(tmp_path / "val-00000-of-00001") as writer:
        for k in range(3):
            writer.write(
                encode_caption_record(
                    CaptionRecord(40 + k, image, ("<S>", "a", "cat", "</S>"), (0, 4, 9, 1))
                )
            )
    assert main(["show-records", str(tmp_path / "val-*"), "--limit=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("image 4") == 2
    assert f"image 40: {len(image):,} bytes, 20x20 JPEG" in out
    assert "caption:     <S> a cat </S>" in out and "caption_ids: 0 4 9 1" in out

    assert main(["show-records", str(tmp_path / "val-*"), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image_id"] for line in lines] == [40, 41, 42]
    assert lines[0]["width"] == 20 and lines[0]["caption_ids"] == [0, 4, 9, 1]

    assert main(["show-records", str(tmp_path / "nothing-*")]) == 2
    assert "nothing-*: no files match this pattern" in capsys.readouterr().err

    raw = bytearray((tmp_path / "val-00000-of-00001").read_bytes())
    raw[-1] ^= 0xFF
    (tmp_path / "val-00000-of-00001").write_bytes(bytes(raw))
    assert main(["show-records", str(tmp_path / "val-*")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "CRC mismatch" in err and len(err.splitlines()) == 1
