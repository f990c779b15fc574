"""What a job reads: every image under a folder, an S3 prefix, or inside Kaggle TFRecord files.

A scan lists inputs without decoding them, so the work can be split before any pixel is read. An input in
a TFRecord file is a byte range (one record), so a worker fetches only its records, from disk or S3.
Anything that cannot be an input (a corrupt TFRecord file) becomes a `Rejected` line, never a silent drop.
"""
from __future__ import annotations

from dataclasses import dataclass
from gan.storage import Storage, StorageError
from gan.tfrecord import TFRecordError, example_image, iter_record_spans

TFRECORD_SUFFIXES = (".tfrec", ".tfrecord", ".tfrecords")


@dataclass(frozen=True)
class InputItem:
    name: str          # identifies the image: its relative path, or "file.tfrec/image_name"
    key: str           # storage key of the file that holds it
    offset: int = 0    # byte range of a TFRecord record; length -1 means the whole file
    length: int = -1


@dataclass(frozen=True)
class Rejected:
    name: str
    reason: str


def is_tfrecord(key: str) -> bool:
    return key.lower().endswith(TFRECORD_SUFFIXES)


def scan_inputs(storage: Storage, prefix: str = "") -> tuple[list[InputItem], list[Rejected]]:
    """All inputs under `prefix`, sorted by name; raises StorageError when there is nothing at all."""
    keys = storage.list(prefix)
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
                    items.append(InputItem(f"{rel}/{image_name}", key, offset, len(payload)))
                    count += 1
            except TFRecordError as e:
                rejected.append(Rejected(f"{rel}#record{count}+", f"{e}; this and later records of the file skipped"))
        else:  # every other file is an input: a non-image ends as a rejected line, never a silent skip
            items.append(InputItem(rel, key))
    items.sort(key=lambda i: i.name)
    return items, rejected


def read_input(storage: Storage, item: InputItem) -> bytes:
    """The image bytes of one input (JPEG bytes for a TFRecord record)."""
    if item.length < 0:
        return storage.read(item.key)
    payload = storage.read_range(item.key, item.offset, item.length)
    return example_image(payload, f"{item.key} at byte {item.offset}")[1]
