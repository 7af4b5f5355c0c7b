"""TFRecord framing, byte-compatible with TensorFlow, without TensorFlow.

Each record on disk is::

    uint64 length          (little-endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

CRC32C comes from google-crc32c (hardware-accelerated); the masking is TensorFlow's
(`tensorflow/core/lib/hash/crc32c.h`): rotate right by 15 bits and add a constant.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import google_crc32c

from showtell.errors import ShowtellError

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_HEADER_BYTES = 12  # length (8) + its CRC (4)
_FOOTER_BYTES = 4  # the data's CRC


class RecordError(ShowtellError):
    """A TFRecord file is truncated or fails its CRC check."""


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C of `data`."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record's bytes as they appear in a TFRecord file."""
    length = _U64.pack(len(data))
    return b"".join(
        (length, _U32.pack(masked_crc32c(length)), data, _U32.pack(masked_crc32c(data)))
    )


class TFRecordWriter:
    """Writes framed records to one file (no compression, as im2txt)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close()/__exit__

    def write(self, data: bytes) -> None:
        self._file.write(frame_record(data))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_records(path: str | Path, verify: bool = True) -> Iterator[bytes]:
    """Yields the data of each record in a TFRecord file.

    Raises RecordError naming the file and the byte offset of the bad record when the
    file is truncated or (with `verify`) a CRC does not match.
    """
    offset = 0
    with open(path, "rb") as f:
        while True:
            header = f.read(_HEADER_BYTES)
            if not header:
                return
            if len(header) < _HEADER_BYTES:
                raise RecordError(f"{path}: truncated record header at byte offset {offset}")
            length_bytes = header[:8]
            (length,) = _U64.unpack(length_bytes)
            (length_crc,) = _U32.unpack_from(header, 8)
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise RecordError(
                    f"{path}: CRC mismatch in the length of the record at byte offset {offset}"
                )
            data = f.read(length)
            footer = f.read(_FOOTER_BYTES)
            if len(data) < length or len(footer) < _FOOTER_BYTES:
                raise RecordError(f"{path}: truncated record at byte offset {offset}")
            if verify and masked_crc32c(data) != _U32.unpack(footer)[0]:
                raise RecordError(
                    f"{path}: CRC mismatch in the data of the record at byte offset {offset}"
                )
            yield data
            offset += _HEADER_BYTES + length + _FOOTER_BYTES
