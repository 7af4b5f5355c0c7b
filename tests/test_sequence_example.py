"""Our hand-written SequenceExample wire format against the protobuf library, which
is given TensorFlow's `feature.proto`/`example.proto` definitions (rebuilt below as
descriptors, so no TensorFlow is needed): bytes either side writes, the other reads."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from showtell.data.records import (
    CaptionRecord,
    decode_caption_record,
    encode_caption_record,
    read_caption_records,
)
from showtell.data.sequence_example import (
    ProtoDecodeError,
    SequenceExample,
    decode_sequence_example,
    encode_sequence_example,
)
from showtell.data.tfrecord import TFRecordWriter

F = descriptor_pb2.FieldDescriptorProto


def _tensorflow_example_classes() -> dict[str, type]:
    """tensorflow/core/example/{feature,example}.proto, as descriptors."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_example_for_tests.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str) -> descriptor_pb2.DescriptorProto:
        m = fdp.message_type.add()
        m.name = name
        return m

    def field(m, name, number, type_, label=F.LABEL_OPTIONAL, type_name=None, packed=None):
        f = m.field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            f.type_name = type_name
        if packed is not None:
            f.options.packed = packed
        return f

    def map_field(m, name, value_type_name):
        entry = m.nested_type.add(name=name[0].upper() + name[1:] + "Entry")
        entry.options.map_entry = True
        field(entry, "key", 1, F.TYPE_STRING)
        field(entry, "value", 2, F.TYPE_MESSAGE, type_name=value_type_name)
        field(m, name, 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, f".tensorflow.{m.name}.{entry.name}")

    field(message("BytesList"), "value", 1, F.TYPE_BYTES, F.LABEL_REPEATED)
    field(message("FloatList"), "value", 1, F.TYPE_FLOAT, F.LABEL_REPEATED, packed=True)
    field(message("Int64List"), "value", 1, F.TYPE_INT64, F.LABEL_REPEATED, packed=True)
    feature = message("Feature")
    feature.oneof_decl.add(name="kind")
    for name, number, type_name in (
        ("bytes_list", 1, ".tensorflow.BytesList"),
        ("float_list", 2, ".tensorflow.FloatList"),
        ("int64_list", 3, ".tensorflow.Int64List"),
    ):
        f = field(feature, name, number, F.TYPE_MESSAGE, type_name=type_name)
        f.oneof_index = 0
    map_field(message("Features"), "feature", ".tensorflow.Feature")
    field(
        message("FeatureList"),
        "feature",
        1,
        F.TYPE_MESSAGE,
        F.LABEL_REPEATED,
        ".tensorflow.Feature",
    )
    map_field(message("FeatureLists"), "feature_list", ".tensorflow.FeatureList")
    seq = message("SequenceExample")
    field(seq, "context", 1, F.TYPE_MESSAGE, type_name=".tensorflow.Features")
    field(seq, "feature_lists", 2, F.TYPE_MESSAGE, type_name=".tensorflow.FeatureLists")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
        for name in ("SequenceExample", "Feature")
    }


PB = _tensorflow_example_classes()

RECORD = CaptionRecord(
    image_id=224477,
    image_data=b"\xff\xd8\xff\xe0 pretend jpeg \x00\x01\x02" * 50,
    caption=("<S>", "a", "man", "riding", "a", "wave", "ünïcode", ".", "</S>"),
    caption_ids=(1, 0, 11, 300, 0, 4000, 11519, 2, 3),
)


def _protobuf_record(record: CaptionRecord) -> bytes:
    """The record as im2txt's writer built it, serialized by the protobuf library."""
    example = PB["SequenceExample"]()
    example.context.feature["image/image_id"].int64_list.value.append(record.image_id)
    example.context.feature["image/data"].bytes_list.value.append(record.image_data)
    captions = example.feature_lists.feature_list["image/caption"]
    ids = example.feature_lists.feature_list["image/caption_ids"]
    for token, token_id in zip(record.caption, record.caption_ids, strict=True):
        captions.feature.add().bytes_list.value.append(token.encode())
        ids.feature.add().int64_list.value.append(token_id)
    return example.SerializeToString()


def test_protobuf_written_record_reads_back() -> None:
    assert decode_caption_record(_protobuf_record(RECORD)) == RECORD


def test_reads_shards_of_protobuf_written_records(tmp_path) -> None:
    """A shard as TensorFlow writes it: protobuf's bytes in TFRecord framing."""
    records = [
        CaptionRecord(i, bytes([i]) * 10, ("<S>", str(i), "</S>"), (1, i, 2)) for i in range(5)
    ]
    with TFRecordWriter(tmp_path / "train-00000-of-00001") as writer:
        for record in records:
            writer.write(_protobuf_record(record))
    assert list(read_caption_records(tmp_path / "train-00000-of-00001")) == records


def test_our_record_parses_with_protobuf() -> None:
    data = encode_caption_record(RECORD)
    example = PB["SequenceExample"].FromString(data)
    assert list(example.context.feature["image/image_id"].int64_list.value) == [224477]
    assert example.context.feature["image/data"].bytes_list.value[0] == RECORD.image_data
    captions = example.feature_lists.feature_list["image/caption"].feature
    ids = example.feature_lists.feature_list["image/caption_ids"].feature
    assert [f.bytes_list.value[0].decode() for f in captions] == list(RECORD.caption)
    assert [f.int64_list.value[0] for f in ids] == list(RECORD.caption_ids)
    # The same message as protobuf builds it, and the same encoding (packing, lengths):
    # only the order of map entries, which protobuf leaves unspecified, may differ.
    reference = _protobuf_record(RECORD)
    assert example == PB["SequenceExample"].FromString(reference)
    assert len(data) == len(reference)


def test_unpacked_negative_and_float_features() -> None:
    """Readers must accept unpacked repeated ints (legal protobuf) and floats."""
    example = PB["SequenceExample"]()
    example.context.feature["ints"].int64_list.value.extend([-1, 0, 2**62])
    example.context.feature["floats"].float_list.value.extend([0.5, -2.0])
    example.feature_lists.feature_list["empty"].SetInParent()
    parsed = decode_sequence_example(example.SerializeToString())
    assert parsed.context == {"ints": [-1, 0, 2**62], "floats": [0.5, -2.0]}
    assert parsed.feature_lists == {"empty": []}

    unpacked = bytes([0x1A, 0x04, 0x08, 0x05, 0x08, 0x07])  # Feature{int64_list: 5, 7}
    feature = PB["Feature"].FromString(unpacked)
    assert list(feature.int64_list.value) == [5, 7]
    ours = decode_sequence_example(encode_sequence_example(SequenceExample(context={"x": [5, 7]})))
    assert ours.context == {"x": [5, 7]}


def test_malformed_bytes_are_reported() -> None:
    data = encode_caption_record(RECORD)
    with pytest.raises(ProtoDecodeError):
        decode_caption_record(data[:-7])
    missing = encode_sequence_example(SequenceExample(context={"image/image_id": [1]}))
    with pytest.raises(ProtoDecodeError, match="image/data"):
        decode_caption_record(missing)
