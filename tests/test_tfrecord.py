from __future__ import annotations

import struct
from pathlib import Path

import pytest

from showtell.data.tfrecord import RecordError, TFRecordWriter, masked_crc32c, read_records


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C (Castagnoli), bit by bit: independent of the library the code uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_check_value_and_mask() -> None:
    assert crc32c_bitwise(b"123456789") == 0xE3069283  # the standard check value
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == masked(crc32c_bitwise(data))


def test_round_trip_and_framing(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    payloads = [b"", b"first", bytes(range(256)) * 40]
    with TFRecordWriter(path) as writer:
        for p in payloads:
            writer.write(p)
    assert list(read_records(path)) == payloads

    raw = path.read_bytes()
    (length,) = struct.unpack_from("<Q", raw, 0)
    assert length == 0
    assert struct.unpack_from("<I", raw, 8)[0] == masked(crc32c_bitwise(raw[:8]))
    assert struct.unpack_from("<I", raw, 12)[0] == masked(crc32c_bitwise(b""))
    second = 16
    assert struct.unpack_from("<Q", raw, second)[0] == 5
    assert raw[second + 12 : second + 17] == b"first"
    assert struct.unpack_from("<I", raw, second + 17)[0] == masked(crc32c_bitwise(b"first"))


def _write(path: Path, payloads: list[bytes]) -> None:
    with TFRecordWriter(path) as writer:
        for p in payloads:
            writer.write(p)


def test_crc_failure_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "train-00000-of-00001"
    _write(path, [b"aaaa", b"bbbbbbbb", b"cc"])
    raw = bytearray(path.read_bytes())
    second = 16 + 4  # first record: 12-byte header + 4 data + 4 crc
    raw[second + 12 + 3] ^= 0xFF  # flip a byte of the second record's data
    path.write_bytes(bytes(raw))
    records = read_records(path)
    assert next(records) == b"aaaa"
    with pytest.raises(RecordError, match=rf"{path}: CRC mismatch in the data .* offset {second}"):
        next(records)
    # Without verification the (corrupt) data comes back as it is.
    assert len(list(read_records(path, verify=False))) == 3


def test_corrupt_length_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "shard"
    _write(path, [b"hello", b"world"])
    raw = path.read_bytes()
    bad_length = bytearray(raw)
    bad_length[0] ^= 0x01
    (tmp_path / "bad").write_bytes(bytes(bad_length))
    with pytest.raises(RecordError, match=r"CRC mismatch in the length .* offset 0"):
        list(read_records(tmp_path / "bad"))
    (tmp_path / "cut").write_bytes(raw[:-3])
    with pytest.raises(RecordError, match=r"cut: truncated record at byte offset 21"):
        list(read_records(tmp_path / "cut"))
