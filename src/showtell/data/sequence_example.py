"""`tf.train.SequenceExample` on the wire: the subset of protobuf im2txt's records use.

Hand-written on purpose: the protobuf runtime can only (de)serialise these messages
given generated classes for TensorFlow's `example.proto`/`feature.proto`, which would
mean vendoring TensorFlow's schema and pinning protobuf's runtime version. The
messages involved are five small ones, so the wire format is written out here and
checked in the tests against the protobuf library fed the real `.proto` definitions:

    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }
    message Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                   Int64List int64_list = 3; } }
    message Features { map<string, Feature> feature = 1; }
    message FeatureList { repeated Feature feature = 1; }
    message FeatureLists { map<string, FeatureList> feature_list = 1; }
    message SequenceExample { Features context = 1; FeatureLists feature_lists = 2; }

A feature's value is represented as a Python list: of bytes (BytesList), of int
(Int64List) or of float (FloatList). The writer emits packed Int64Lists as
TensorFlow does; the reader accepts packed and unpacked encodings, as any protobuf
parser must, so records written by TensorFlow read back the same.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

FeatureValue = list[bytes] | list[int] | list[float]

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3


class ProtoDecodeError(ValueError):
    """The bytes are not a well-formed SequenceExample."""


@dataclass
class SequenceExample:
    """Context features (one list per key) and feature lists (a list of lists per key)."""

    context: dict[str, FeatureValue] = field(default_factory=dict)
    feature_lists: dict[str, list[FeatureValue]] = field(default_factory=dict)


# --- encoding -----------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64 is two's complement on the wire
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _encode_feature(values: FeatureValue) -> bytes:
    if values and isinstance(values[0], bytes | bytearray):
        inner = b"".join(_len_field(1, bytes(v)) for v in values)
        return _len_field(_BYTES_LIST, inner)
    if values and isinstance(values[0], float):
        packed = struct.pack(f"<{len(values)}f", *values)
        return _len_field(_FLOAT_LIST, _len_field(1, packed))
    # ints, and the empty list (an empty Int64List, as TensorFlow writes for [] ints)
    packed = b"".join(_varint(int(v)) for v in values)
    return _len_field(_INT64_LIST, _len_field(1, packed) if packed else b"")


def _encode_map_entry(key: str, value: bytes) -> bytes:
    return _len_field(1, key.encode("utf-8")) + _len_field(2, value)


def encode_sequence_example(example: SequenceExample) -> bytes:
    """Serialises `example` byte for byte as protobuf's deterministic serialisation
    does (map entries sorted by key)."""
    context = b"".join(
        _len_field(1, _encode_map_entry(k, _encode_feature(v)))
        for k, v in sorted(example.context.items())
    )
    feature_lists = b"".join(
        _len_field(
            1,
            _encode_map_entry(k, b"".join(_len_field(1, _encode_feature(f)) for f in features)),
        )
        for k, features in sorted(example.feature_lists.items())
    )
    return _len_field(1, context) + _len_field(2, feature_lists)


# --- decoding -----------------------------------------------------------------------


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The base-128 varint at `pos` and the position after it (protobuf's wire format;
    TensorFlow's checkpoint tables use the same encoding)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoDecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoDecodeError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yields (field number, wire type, value) for each field of one message."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = read_varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == _LEN:
            length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise ProtoDecodeError("length-delimited field runs past the message")
            yield number, wire_type, buf[pos : pos + length]
            pos += length
        elif wire_type == _FIXED32:
            if pos + 4 > end:
                raise ProtoDecodeError("truncated fixed32")
            yield number, wire_type, buf[pos : pos + 4]
            pos += 4
        elif wire_type == _FIXED64:
            pos += 8
        else:
            raise ProtoDecodeError(f"unsupported wire type {wire_type}")
    if pos != end:
        raise ProtoDecodeError("message runs past its end")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_int64_list(buf: memoryview) -> list[int]:
    values: list[int] = []
    for number, wire_type, value in _fields(buf):
        if number != 1:
            continue
        if wire_type == _VARINT:  # unpacked
            values.append(_signed64(value))  # type: ignore[arg-type]
        elif wire_type == _LEN:  # packed
            packed = value
            pos = 0
            while pos < len(packed):  # type: ignore[arg-type]
                v, pos = read_varint(packed, pos)  # type: ignore[arg-type]
                values.append(_signed64(v))
    return values


def _decode_float_list(buf: memoryview) -> list[float]:
    values: list[float] = []
    for number, wire_type, value in _fields(buf):
        if number != 1:
            continue
        raw = bytes(value)  # type: ignore[arg-type]
        if wire_type in (_LEN, _FIXED32):
            values.extend(struct.unpack(f"<{len(raw) // 4}f", raw))
    return values


def _decode_feature(buf: memoryview) -> FeatureValue:
    result: FeatureValue = []
    for number, wire_type, value in _fields(buf):
        if wire_type != _LEN:
            continue
        if number == _BYTES_LIST:
            result = [bytes(v) for n, t, v in _fields(value) if n == 1 and t == _LEN]  # type: ignore[arg-type]
        elif number == _INT64_LIST:
            result = _decode_int64_list(value)  # type: ignore[arg-type]
        elif number == _FLOAT_LIST:
            result = _decode_float_list(value)  # type: ignore[arg-type]
    return result


def _decode_map_entry(buf: memoryview) -> tuple[str, memoryview]:
    key, value = "", memoryview(b"")
    for number, wire_type, field_value in _fields(buf):
        if wire_type != _LEN:
            continue
        if number == 1:
            key = bytes(field_value).decode("utf-8")  # type: ignore[arg-type]
        elif number == 2:
            value = field_value  # type: ignore[assignment]
    return key, value


def decode_sequence_example(data: bytes) -> SequenceExample:
    """Parses a serialised SequenceExample; raises ProtoDecodeError if malformed."""
    example = SequenceExample()
    for number, wire_type, value in _fields(memoryview(data)):
        if wire_type != _LEN:
            continue
        for entry_number, entry_type, entry in _fields(value):  # type: ignore[arg-type]
            if entry_number != 1 or entry_type != _LEN:
                continue
            key, payload = _decode_map_entry(entry)  # type: ignore[arg-type]
            if number == 1:
                example.context[key] = _decode_feature(payload)
            elif number == 2:
                example.feature_lists[key] = [
                    _decode_feature(f)  # type: ignore[arg-type]
                    for n, t, f in _fields(payload)
                    if n == 1 and t == _LEN
                ]
    return example
