"""What a job reads: every image under a folder, an S3 prefix, inside Kaggle TFRecord files, or in a zip.

A scan lists inputs without decoding them, so the work can be split before any pixel is read. An input in
a TFRecord file or a zip is a byte range (one record or member), so a worker fetches only its own ranges,
from disk or S3.
Anything that cannot be an input (a corrupt TFRecord file) becomes a `Rejected` line, never a silent drop.
"""
from __future__ import annotations

import hashlib
import re
import struct
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol

from gan.io.images import MAX_BYTES, BadImageError
from gan.io.storage import RangeFile, Storage, StorageError, open_storage, split_uri
from gan.io.tfrecord import TFRecordError, example_image, iter_record_frames

TFRECORD_SUFFIXES = (".tfrec", ".tfrecord", ".tfrecords")
ZIP_SUFFIX = ".zip"
DIGEST_CHUNK = 256   # files per digest task
DIGEST_THREADS = 8


@dataclass(frozen=True, slots=True)
class InputItem:
    name: str          # identifies the image: its relative path, or "file.tfrec/image_name"
    key: str           # storage key of the file that holds it
    offset: int = 0    # byte range of a TFRecord record or a zip member; length -1 means the whole file
    length: int = -1
    container: str = ""  # "", "tfrecord", or "zip-<compression method>"
    size: int = -1     # bytes of the image itself (file, uncompressed member, record), known before reading
    tag: str = ""      # its content's identity: a digest, an S3 ETag, a zip member's CRC-32
    stat: str = ""     # a local file's size, mtime and inode when its tag was taken (see scan_inputs)


@dataclass(frozen=True, slots=True)
class Rejected:
    name: str
    reason: str


def is_tfrecord(key: str) -> bool:
    return key.lower().endswith(TFRECORD_SUFFIXES)


def is_zip(key: str) -> bool:
    return key.lower().endswith(ZIP_SUFFIX)


class KnownTags(Protocol):
    """{input key: (stat, tag)} from an earlier scan, asked for key by key in the listing's (sorted) order: a dict,
    or gan.batch.manifest.KnownInputs (a cursor over a manifest's entries)."""

    def get(self, key: str) -> tuple[str, str] | None: ...


def scan_uri(uri: str, known: KnownTags | None = None
             ) -> tuple[list[InputItem], list[Rejected], Storage]:
    """Inputs of a folder or prefix, or of one .zip / TFRecord file; with the storage to read them from.
    `known`: see scan_inputs."""
    if is_zip(uri) or is_tfrecord(uri):
        storage, name = split_uri(uri)
        if not storage.exists(name):
            raise StorageError(f"{uri}: no such file")
        items, rejected = scan_inputs(storage, keys=[name], known=known)
        return items, rejected, storage
    storage = open_storage(uri)
    items, rejected = scan_inputs(storage, known=known)
    return items, rejected, storage


def _zip_items(storage: Storage, key: str, rel: str) -> list[InputItem]:
    try:
        with zipfile.ZipFile(RangeFile(storage, key)) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise StorageError(f"{storage.child(key)}: not a zip file ({e})") from None
    return [InputItem(f"{rel}/{i.filename}", key, i.header_offset, i.compress_size, f"zip-{i.compress_type}",
                      i.file_size, f"crc32:{i.CRC:08x}") for i in infos]


def records_in_name(key: str) -> int | None:
    """Kaggle's TFRecord files say how many records they hold: photo00-352.tfrec holds 352."""
    m = re.search(r"-(\d+)\.tfrec(?:ords?)?$", key, re.IGNORECASE)
    return int(m.group(1)) if m else None


def _tfrecord_items(data: bytes, key: str, rel: str) -> tuple[list[InputItem], list[Rejected]]:
    """One input per record. A record with a bad checksum or Example is one reject; a broken frame rejects the
    rest of the file, one line per record when the file's name says how many it holds."""
    items: list[InputItem] = []
    rejected: list[Rejected] = []
    seen = 0
    try:
        for index, offset, payload in iter_record_frames(data, key):
            seen = index + 1
            try:
                if isinstance(payload, TFRecordError):
                    raise payload
                image_name, image = example_image(payload, f"{key}: record {index}")
            except TFRecordError as e:
                rejected.append(Rejected(f"{rel}#record{index}", str(e)))
                continue
            tag = "b2:" + hashlib.blake2b(payload, digest_size=16).hexdigest()
            items.append(InputItem(f"{rel}/{image_name}", key, offset, len(payload), "tfrecord", len(image), tag))
    except TFRecordError as e:
        first, total = getattr(e, "index", seen), records_in_name(key)
        if total is not None and total > first:
            rejected += [Rejected(f"{rel}#record{i}", f"{e}; record {i} cannot be located")
                         for i in range(first, total)]
        else:
            rejected.append(Rejected(f"{rel}#record{first}+", f"{e}; this and later records of the file skipped"))
    return items, rejected


def _unique_names(items: list[InputItem]) -> list[InputItem]:
    """Sorted by name; a name that repeats (two zip members or records named a.jpg) gets #2, #3, ... in the
    order of where the inputs sit, so every input keeps its own output and report line."""
    items = sorted(items, key=lambda i: (i.name, i.key, i.offset))
    seen: Counter[str] = Counter()
    out = []
    for item in items:
        seen[item.name] += 1
        out.append(item if seen[item.name] == 1 else replace(item, name=f"{item.name}#{seen[item.name]}"))
    return out


def scan_inputs(storage: Storage, prefix: str = "", keys: list[str] | None = None,
                known: KnownTags | None = None) -> tuple[list[InputItem], list[Rejected]]:
    """All inputs under `prefix` (or in `keys`), sorted by name; raises StorageError when there is nothing.

    Sizes and content tags come from the listing (S3 ETags), the zip's directory or the record framing; local
    files are digested, in parallel, except those in `known` ({key: (stat, tag)}, from an earlier scan) whose
    size, mtime and inode are still the same: a rerun reads no input whose file has not changed, and any file
    rewritten, replaced or copied anew is digested again. Nothing over the size limit is read here."""
    infos = storage.list_info(prefix) if keys is None else [storage.info(k) for k in keys]
    if not infos:
        raise StorageError(f"{storage.child(prefix)}: no files found (empty folder or missing prefix)")
    known = {} if known is None else known
    items: list[InputItem] = []
    rejected: list[Rejected] = []
    for info in infos:
        key = info.key
        rel = key[len(prefix):].lstrip("/") if prefix else key
        if is_tfrecord(key):
            found, bad = _tfrecord_items(storage.read(key), key, rel)
            items += found
            rejected += bad
        elif is_zip(key):
            items.extend(_zip_items(storage, key, rel))
        else:  # every other file is an input: a non-image ends as a rejected line, never a silent skip
            seen = known.get(key)
            tag = (info.tag or (f"size:{info.size}" if info.size > MAX_BYTES else "")
                   or (seen[1] if seen and info.stat and seen[0] == info.stat else ""))
            items.append(InputItem(rel, key, size=info.size, tag=tag, stat=info.stat))
    todo = [i for i, item in enumerate(items) if not item.tag]
    if todo:  # file reads: threads overlap them (hashlib lets go of the GIL on large buffers)
        # in chunks: one task (a Future, a lock) per file was ~1 GB of the driver at 1,000,000 files
        chunks = [todo[at:at + DIGEST_CHUNK] for at in range(0, len(todo), DIGEST_CHUNK)]
        with ThreadPoolExecutor(DIGEST_THREADS) as pool:
            for chunk, tags in zip(chunks, pool.map(lambda c: [storage.content_tag(items[i].key) for i in c], chunks)):
                for i, tag in zip(chunk, tags):
                    items[i] = replace(items[i], tag=tag)
    return _unique_names(items), rejected


def read_input(storage: Storage, item: InputItem) -> bytes:
    """The image bytes of one input (JPEG bytes for a TFRecord record), refusing one over the size limit
    before any of its bytes are read."""
    if item.size > MAX_BYTES:
        raise BadImageError(item.name, f"file is {item.size} bytes, over the {MAX_BYTES}-byte limit")
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
