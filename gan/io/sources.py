"""What a job reads: every image under a folder, an S3 prefix, inside Kaggle TFRecord files, or in a zip.

A scan lists inputs without decoding them, so the work can be split before any pixel is read. An input in
a TFRecord file or a zip is a byte range (one record or member), so a worker fetches only its own ranges,
from disk or S3.
Anything that cannot be an input (a corrupt TFRecord file) becomes a `Rejected` line, never a silent drop.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass

from gan.io.images import MAX_BYTES
from gan.io.storage import RangeFile, Storage, StorageError, open_storage, split_uri
from gan.io.tfrecord import TFRecordError, example_image, iter_record_spans

TFRECORD_SUFFIXES = (".tfrec", ".tfrecord", ".tfrecords")
ZIP_SUFFIX = ".zip"


@dataclass(frozen=True)
class InputItem:
    name: str          # identifies the image: its relative path, or "file.tfrec/image_name"
    key: str           # storage key of the file that holds it
    offset: int = 0    # byte range of a TFRecord record or a zip member; length -1 means the whole file
    length: int = -1
    container: str = ""  # "", "tfrecord", or "zip-<compression method>"


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


def is_tfrecord(key: str) -> bool:
    return key.lower().endswith(TFRECORD_SUFFIXES)


def is_zip(key: str) -> bool:
    return key.lower().endswith(ZIP_SUFFIX)


def scan_uri(uri: str) -> tuple[list[InputItem], list[Rejected], Storage]:
    """Inputs of a folder or prefix, or of one .zip / TFRecord file; with the storage to read them from."""
    if is_zip(uri) or is_tfrecord(uri):
        storage, name = split_uri(uri)
        if not storage.exists(name):
            raise StorageError(f"{uri}: no such file")
        items, rejected = scan_inputs(storage, keys=[name])
        return items, rejected, storage
    storage = open_storage(uri)
    items, rejected = scan_inputs(storage)
    return items, rejected, storage


def _zip_items(storage: Storage, key: str, rel: str) -> list[InputItem]:
    try:
        with zipfile.ZipFile(RangeFile(storage, key)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise StorageError(f"{storage.child(key)}: not a zip file ({e})") from None
    return [InputItem(f"{rel}/{i.filename}", key, i.header_offset, i.compress_size, f"zip-{i.compress_type}")
            for i in infos]


def scan_inputs(storage: Storage, prefix: str = "", keys: list[str] | None = None
                ) -> tuple[list[InputItem], list[Rejected]]:
    """All inputs under `prefix` (or in `keys`), sorted by name; raises StorageError when there is nothing."""
    keys = storage.list(prefix) if keys is None else keys
    if not keys:
        raise StorageError(f"{storage.child(prefix)}: no files found (empty folder or missing prefix)")
    items: list[InputItem] = []
    rejected: list[Rejected] = []
    for key in keys:
        rel = key[len(prefix):].lstrip("/") if prefix else key
        if is_tfrecord(key):
            data = storage.read(key)
            count = 0
            try:
                for offset, payload in iter_record_spans(data, key):
                    image_name, _ = example_image(payload, f"{key}: record {count}")
                    items.append(InputItem(f"{rel}/{image_name}", key, offset, len(payload), "tfrecord"))
                    count += 1
            except TFRecordError as e:
                rejected.append(Rejected(f"{rel}#record{count}+", f"{e}; this and later records of the file skipped"))
        elif is_zip(key):
            items.extend(_zip_items(storage, key, rel))
        else:  # every other file is an input: a non-image ends as a rejected line, never a silent skip
            items.append(InputItem(rel, key))
    items.sort(key=lambda i: i.name)
    return items, rejected


def read_input(storage: Storage, item: InputItem) -> bytes:
    """The image bytes of one input (JPEG bytes for a TFRecord record)."""
    if item.length < 0:
        return storage.read(item.key)
    if item.container.startswith("zip-"):
        return _read_zip_member(storage, item)
    payload = storage.read_range(item.key, item.offset, item.length)
    return example_image(payload, f"{item.key} at byte {item.offset}")[1]


def _read_zip_member(storage: Storage, item: InputItem) -> bytes:
    """One member's bytes via two range reads (local header, then data); inflate is capped against zip bombs."""
    header = storage.read_range(item.key, item.offset, 30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"{item.name}: bad zip member header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    data = storage.read_range(item.key, item.offset + 30 + name_len + extra_len, item.length)
    method = int(item.container.split("-", 1)[1])
    if method == zipfile.ZIP_STORED:
        return data
    if method == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-15)
        out = inflater.decompress(data, MAX_BYTES + 1)
        if len(out) > MAX_BYTES:
            raise ValueError(f"{item.name}: inflates to over {MAX_BYTES} bytes")
        return out
    raise ValueError(f"{item.name}: unsupported zip compression method {method}")
