"""Reading TensorFlow checkpoints: where one is, and its variables as numpy arrays.

Two formats exist, both written by `tf.train.Saver`:
- V2 (TensorFlow >= 0.12, im2txt's train dirs): a prefix `model.ckpt-N` with
  `model.ckpt-N.index` (a LevelDB-style table: variable name -> BundleEntryProto, its
  dtype, shape, data shard, offset, size and CRC32C) and `model.ckpt-N.data-00000-of-00001`
  (the raw little-endian tensor bytes).
- V1 (older, and TF-slim's 2016 `inception_v3.ckpt`): one file of TensorSlice tables.

With TensorFlow installed (`pip install 'showtell[tf]'`) its own reader reads both.
Without it, V2 is read here: the table format and the two protos are small and stable
(TensorFlow's `table/format.cc`, `tensor_bundle.proto`), every block's and tensor's
CRC32C is checked, and tests compare this reader with TensorFlow's on files TensorFlow
wrote. V1 needs TensorFlow.

A train dir is resolved as TensorFlow does: its `checkpoint` file names the newest
checkpoint (`model_checkpoint_path: "..."`); since train dirs are often copied from
another machine, a named path that does not exist is looked up beside that file.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from showtell.data.sequence_example import read_varint
from showtell.data.tfrecord import masked_crc32c
from showtell.errors import ShowtellError

TF_EXTRA = "pip install 'showtell[tf]'"
_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic number
# TensorFlow DataType enum values -> numpy dtypes (the ones a model checkpoint holds).
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
_DT_STRING = 7


@dataclass(frozen=True)
class TFCheckpoint:
    """One TensorFlow checkpoint on disk: `prefix` is what TensorFlow calls its path
    (the V1 file itself, or the V2 prefix without `.index`)."""

    prefix: Path
    version: int  # 1 or 2

    @property
    def step(self) -> int | None:
        """The global step in its name (`model.ckpt-N`), if it has one."""
        match = re.search(r"-(\d+)$", self.prefix.name)
        return int(match.group(1)) if match else None

    def __str__(self) -> str:
        return str(self.prefix)


def _named_in_checkpoint_file(directory: Path) -> Path | None:
    """The path that a train dir's `checkpoint` file (a text proto) names, if any."""
    index = directory / "checkpoint"
    try:
        text = index.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    if match is None:
        return None
    named = Path(match.group(1).encode().decode("unicode_escape"))
    if not named.is_absolute():
        named = directory / named
    if not _exists(named):  # written on another machine: look beside the index file
        named = directory / named.name
    return named


def _exists(prefix: Path) -> bool:
    return Path(f"{prefix}.index").is_file() or prefix.is_file()


def find_tf_checkpoint(path: str | Path) -> TFCheckpoint | None:
    """The TensorFlow checkpoint at `path` (a V2 prefix, a V1 file, a `.index` or
    `.data-*` file of one, or a train dir with a `checkpoint` file), or None when
    `path` holds none. A train dir whose `checkpoint` file names a missing
    checkpoint is an error (it was copied without its checkpoint files)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "checkpoint").is_file():
            return None
        named = _named_in_checkpoint_file(path)
        if named is None:
            return None  # e.g. a showtell train dir: its `checkpoint` is a bare folder name
        if not _exists(named):
            raise ShowtellError(
                f"{path / 'checkpoint'}: names {named.name}, which is not in {path} "
                f"(no {named.name}.index nor {named.name} file)"
            )
        path = named
    else:
        match = re.match(r"^(.*)\.(index|data-\d{5}-of-\d{5}|meta)$", path.name)
        if match and not path.with_name(match.group(1)).is_dir():
            path = path.with_name(match.group(1))
    if Path(f"{path}.index").is_file():
        return TFCheckpoint(path, 2)
    if path.is_file() and _is_table(path):
        return TFCheckpoint(path, 1)
    return None


def _is_table(path: Path) -> bool:
    """A V1 checkpoint is a LevelDB-style table: it ends with the table magic number."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() < 48:
                return False
            f.seek(-8, 2)
            return struct.unpack("<Q", f.read(8))[0] == _MAGIC
    except OSError:
        return False


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def read_variables(checkpoint: TFCheckpoint) -> dict[str, np.ndarray]:
    """Every variable of the checkpoint as a numpy array, by TensorFlow's name. Uses
    TensorFlow's reader where installed, else this module's V2 reader."""
    if tensorflow_available():
        return _read_with_tensorflow(checkpoint)
    if checkpoint.version == 1:
        raise ShowtellError(
            f"{checkpoint.prefix}: a TensorFlow V1 checkpoint: reading it needs TensorFlow "
            f"({TF_EXTRA})"
        )
    return BundleReader(checkpoint.prefix).read_all()


def variable_shapes(checkpoint: TFCheckpoint) -> dict[str, tuple[int, ...]]:
    """Every variable's shape, without reading values (V2: the .index file alone)."""
    if checkpoint.version == 2:
        return {name: e.shape for name, e in BundleReader(checkpoint.prefix).entries.items()}
    return {name: v.shape for name, v in read_variables(checkpoint).items()}


def _read_with_tensorflow(checkpoint: TFCheckpoint) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(checkpoint.prefix))
        names = reader.get_variable_to_shape_map()
        return {name: np.asarray(reader.get_tensor(name)) for name in names}
    except Exception as e:  # TensorFlow raises its own error types for bad files
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShowtellError(
            f"{checkpoint.prefix}: TensorFlow cannot read this checkpoint ({message})"
        ) from e


# --- TensorFlow's V2 tensor bundle, without TensorFlow ------------------------------------


def _proto_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, value) pairs: ints for varint and fixed
    fields, bytes for length-delimited ones."""
    fields: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
            fields.append((number, value))
        elif wire == 1:
            fields.append((number, struct.unpack_from("<Q", data, pos)[0]))
            pos += 8
        elif wire == 2:
            length, pos = read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            fields.append((number, data[pos : pos + length]))
            pos += length
        elif wire == 5:
            fields.append((number, struct.unpack_from("<I", data, pos)[0]))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return fields


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block (keys prefix-compressed)."""
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    entries: list[tuple[bytes, bytes]] = []
    key = b""
    pos = 0
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_length, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + value_length]))
        pos += value_length
    return entries


def read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-style table (uncompressed blocks, as
    TensorFlow writes checkpoint tables), each block's CRC32C checked."""
    if len(data) < 48 or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise ValueError("not a table (no magic number at its end)")
    footer = data[-48:]
    _, pos = read_varint(footer, 0)  # the metaindex handle: unused
    _, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, pos = read_varint(footer, pos)

    def block(offset: int, size: int) -> bytes:
        if offset + size + 5 > len(data):
            raise ValueError("block past the end of the file")
        contents = data[offset : offset + size]
        kind = data[offset + size]
        if kind != 0:
            raise ValueError(f"compressed block (type {kind})")
        (masked,) = struct.unpack_from("<I", data, offset + size + 1)
        if masked_crc32c(contents + bytes([kind])) != masked:
            raise ValueError(f"block at offset {offset}: CRC32C mismatch")
        return contents

    entries: list[tuple[bytes, bytes]] = []
    for _, handle in _block_entries(block(index_offset, index_size)):
        offset, p = read_varint(handle, 0)
        size, _ = read_varint(handle, p)
        entries.extend(_block_entries(block(offset, size)))
    return entries


@dataclass(frozen=True)
class BundleEntry:
    """One variable of a V2 bundle (TensorFlow's BundleEntryProto)."""

    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None


def _parse_entry(value: bytes) -> BundleEntry:
    dtype = shard = offset = size = 0
    shape: list[int] = []
    crc: int | None = None
    for number, field in _proto_fields(value):
        if number == 1:
            dtype = int(field)  # type: ignore[arg-type]
        elif number == 2:
            for shape_number, dim in _proto_fields(field):  # type: ignore[arg-type]
                if shape_number == 2:  # TensorShapeProto.dim
                    sizes = [v for n, v in _proto_fields(dim) if n == 1]  # type: ignore[arg-type]
                    shape.append(int(sizes[0]) if sizes else 0)
        elif number == 3:
            shard = int(field)  # type: ignore[arg-type]
        elif number == 4:
            offset = int(field)  # type: ignore[arg-type]
        elif number == 5:
            size = int(field)  # type: ignore[arg-type]
        elif number == 6:
            crc = int(field)  # type: ignore[arg-type]
        elif number == 7:
            raise ValueError("partitioned (sliced) variables are not supported")
    return BundleEntry(dtype, tuple(shape), shard, offset, size, crc)


class BundleReader:
    """TensorFlow's V2 checkpoint (tensor bundle) read without TensorFlow."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        index = Path(f"{prefix}.index")
        try:
            table = read_table(index.read_bytes())
        except OSError as e:
            raise ShowtellError(f"{index}: cannot read: {e.strerror}") from e
        except (ValueError, struct.error, IndexError) as e:
            raise ShowtellError(f"{index}: not a TensorFlow checkpoint index ({e})") from e
        self.num_shards = 1
        self.entries: dict[str, BundleEntry] = {}
        try:
            for key, value in table:
                if key == b"":  # the BundleHeaderProto
                    header = dict(_proto_fields(value))
                    self.num_shards = int(header.get(1, 1))  # type: ignore[arg-type]
                    if header.get(2, 0) != 0:
                        raise ValueError("big-endian bundle")
                else:
                    self.entries[key.decode("utf-8")] = _parse_entry(value)
        except (ValueError, UnicodeDecodeError, struct.error, IndexError) as e:
            raise ShowtellError(f"{index}: not a TensorFlow checkpoint index ({e})") from e

    def data_file(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def read_all(self) -> dict[str, np.ndarray]:
        """Every variable's value; the data files are read once each."""
        shards: dict[int, bytes] = {}
        values: dict[str, np.ndarray] = {}
        for name, entry in self.entries.items():
            if entry.shard not in shards:
                path = self.data_file(entry.shard)
                try:
                    shards[entry.shard] = path.read_bytes()
                except OSError as e:
                    raise ShowtellError(
                        f"{path}: cannot read this checkpoint's data file: {e.strerror}"
                    ) from e
            values[name] = self._value(name, entry, shards[entry.shard])
        return values

    def _value(self, name: str, entry: BundleEntry, data: bytes) -> np.ndarray:
        where = f"{self.data_file(entry.shard)}: variable {name}"
        if entry.dtype not in _DTYPES:
            kind = "string" if entry.dtype == _DT_STRING else f"dtype {entry.dtype}"
            raise ShowtellError(f"{where}: a {kind} tensor, which this reader does not read")
        raw = data[entry.offset : entry.offset + entry.size]
        if len(raw) != entry.size:
            raise ShowtellError(f"{where}: the data file is truncated")
        if entry.crc32c is not None and masked_crc32c(raw) != entry.crc32c:
            raise ShowtellError(f"{where}: CRC32C mismatch (corrupt data file)")
        dtype = np.dtype(_DTYPES[entry.dtype]).newbyteorder("<")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * dtype.itemsize != entry.size:
            raise ShowtellError(f"{where}: {entry.size} bytes do not hold shape {entry.shape}")
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(entry.shape)
