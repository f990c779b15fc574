"""TFRecord files of `tf.train.Example` protos, read and written without TensorFlow.

Record framing: uint64 length, uint32 masked CRC32C of the length, data, uint32 masked CRC32C of the data.
The Kaggle files hold Examples with features `image_name` (bytes), `image` (JPEG bytes), `target` (bytes).
Only the protobuf wire format needed for Example is implemented (varints and length-delimited fields).
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import crc32c

class TFRecordError(ValueError):
    """A malformed TFRecord file; the message names the file, the record and what is wrong."""


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format -------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def encode_example(features: dict[str, bytes | list[bytes] | int | list[int] | float | list[float]]) -> bytes:
    """A tf.train.Example with bytes, int64 or float features."""
    entries = b""
    for key, value in features.items():
        values = value if isinstance(value, list) else [value]
        if all(isinstance(v, (bytes, bytearray)) for v in values):
            feature = _field(1, b"".join(_field(1, bytes(v)) for v in values))                       # BytesList
        elif all(isinstance(v, int) for v in values):
            feature = _field(3, _field(1, b"".join(_varint(v & 0xFFFFFFFFFFFFFFFF) for v in values)))  # Int64List
        else:
            feature = _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))                 # FloatList
        entries += _field(1, _field(1, key.encode()) + _field(2, feature))
    return _field(1, entries)


def decode_example(data: bytes) -> dict[str, list]:
    """tf.train.Example bytes -> {feature name: list of values}."""
    out: dict[str, list] = {}
    for num, _, features in _fields(data):
        if num != 1:
            continue
        for num2, _, entry in _fields(features):
            if num2 != 1:
                continue
            key, feature = "", b""
            for n, _, v in _fields(entry):
                if n == 1:
                    key = v.decode("utf-8", "replace")
                elif n == 2:
                    feature = v
            values: list = []
            for kind, _, lst in _fields(feature):
                for n, wire, v in _fields(lst):
                    if n != 1:
                        continue
                    if kind == 1:
                        values.append(bytes(v))
                    elif kind == 3:
                        if wire == 2:  # packed
                            pos = 0
                            while pos < len(v):
                                x, pos = _read_varint(v, pos)
                                values.append(x - (1 << 64) if x >= 1 << 63 else x)
                        else:
                            values.append(v - (1 << 64) if v >= 1 << 63 else v)
                    elif kind == 2:
                        values.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
            out[key] = values
    return out


# --- record framing -------------------------------------------------------------------------------

def write_record(f: BinaryIO, data: bytes) -> None:
    length = struct.pack("<Q", len(data))
    f.write(length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data)))


def iter_records(data: bytes, source: str) -> Iterator[bytes]:
    """Each record's payload, verifying both checksums."""
    for _, payload in iter_record_spans(data, source):
        yield payload


def iter_record_spans(data: bytes, source: str) -> Iterator[tuple[int, bytes]]:
    """(offset of the payload, payload) for each record, verifying both checksums; the first damage raises."""
    for _, offset, payload in iter_record_frames(data, source):
        if isinstance(payload, TFRecordError):
            raise payload
        yield offset, payload


def iter_record_frames(data: bytes, source: str) -> Iterator[tuple[int, int, bytes | TFRecordError]]:
    """(index, payload offset, payload) for each record; a record whose data checksum fails comes as
    (index, offset, TFRecordError) and the next records still follow, since its framing locates them.
    A broken frame (bad length checksum, truncation) raises TFRecordError with `.index`: nothing after it can
    be located."""
    pos, index = 0, 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise _frame_error(f"{source}: record {index}: truncated header at byte {pos}", index)
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if masked_crc(header) != length_crc:
            raise _frame_error(f"{source}: record {index}: bad length checksum at byte {pos} (corrupt file)", index)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            raise _frame_error(f"{source}: record {index}: truncated (needs {length} bytes at byte {start})", index)
        payload = data[start:end]
        (data_crc,) = struct.unpack("<I", data[end:end + 4])
        if masked_crc(payload) != data_crc:
            yield index, start, TFRecordError(f"{source}: record {index}: bad data checksum (corrupt record)")
        else:
            yield index, start, payload
        pos, index = end + 4, index + 1


def _frame_error(message: str, index: int) -> TFRecordError:
    error = TFRecordError(message)
    error.index = index
    return error


def example_image(payload: bytes, where: str) -> tuple[str, bytes]:
    """(image_name, JPEG bytes) of one Kaggle-style Example; `where` names the file and record in errors."""
    try:
        example = decode_example(payload)
    except ValueError as e:
        raise TFRecordError(f"{where}: not a tf.train.Example ({e})") from None
    for feature in ("image_name", "image"):
        if not example.get(feature):
            raise TFRecordError(f"{where}: missing feature {feature!r} (has {sorted(example)})")
    name = example["image_name"][0]
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)), example["image"][0]


def read_image_examples(data: bytes, source: str) -> Iterator[tuple[str, bytes]]:
    """(image_name, JPEG bytes) for each Kaggle-style Example in a TFRecord file's bytes."""
    for index, payload in enumerate(iter_records(data, source)):
        yield example_image(payload, f"{source}: record {index}")


def write_image_examples(f: BinaryIO, items: list[tuple[str, bytes]], target: str) -> None:
    for name, jpeg in items:
        write_record(f, encode_example({"image_name": name.encode(), "image": jpeg, "target": target.encode()}))
