"""One interface over local folders and S3 prefixes, with atomic writes.

Local writes go to a temporary file in the same folder and are renamed into place; S3 objects are
whole once PUT (multipart uploads complete atomically). S3 is configured here once, for boto3 (our own reads and
writes) and for pyarrow (Ray Train's checkpoints, `arrow_filesystem`): the endpoint comes from `AWS_ENDPOINT_URL`
so MinIO, R2 or a test server work like AWS, credentials and region from the usual AWS variables.

Faults: an S3 request that fails for a reason that may pass (the endpoint unreachable, throttling, a 5xx) is
retried with back-off for up to the retry window (`set_retry_window`, `--storage-retry`; 60 s by default), then
fails as `StorageUnavailableError`, naming the endpoint; a local disk that is full fails at once as
`StorageFullError`, naming the device and path. Neither leaves a partial file under its final name.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Iterator, Protocol
from urllib.parse import urlparse

MAX_OBJECT_BYTES = 5 * 1024 ** 3  # refuse single objects over 5 GiB (S3's PUT limit; zips go multipart)
S3_ATTEMPTS = 3                   # tries of one S3 request inside botocore and pyarrow (their standard modes) ...
RETRY_WINDOW_S = float(os.environ.get("GAN_STORAGE_RETRY_S", 60))  # ... then ours, with back-off, this long
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "InternalError", "ServiceUnavailable", "503", "500", "502", "504"}


def set_retry_window(seconds: float) -> None:
    """How long S3 requests made from here on (and by the Ray workers they are handed to) keep retrying a fault that
    may pass before they fail."""
    global RETRY_WINDOW_S
    if seconds < 0:
        raise ValueError(f"the storage retry window must be >= 0 seconds, got {seconds}")
    RETRY_WINDOW_S = float(seconds)


def s3_endpoint() -> str | None:
    """The S3 endpoint every client uses: $AWS_ENDPOINT_URL (MinIO, R2, a test server), else AWS's own."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


class StorageError(OSError):
    """A storage location that cannot be used; the message names it."""


class StorageUnavailableError(StorageError):
    """The storage did not answer within the retry window (an outage): a later rerun may succeed."""


class StorageFullError(StorageError):
    """No space left where an output is written: the rerun succeeds once space is freed."""


def within_window(what: str, call, passing, window_s: float, endpoint: str | None):
    """`call()`, again with back-off while `passing(error)` names the error as one that may pass (else it raises,
    or returns None for the error to propagate) until `window_s` is spent; then StorageUnavailableError naming the
    endpoint."""
    deadline, pause = time.monotonic() + window_s, 0.5
    while True:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - `passing` decides
            error = passing(e)
            if error is None:
                raise
        if time.monotonic() + pause > deadline:
            raise StorageUnavailableError(f"S3 at {endpoint or 'AWS'} did not answer for {window_s:g} s "
                                          f"({what}: {error})") from None
        time.sleep(pause)
        pause = min(pause * 2, 8.0)


# how pyarrow's S3 filesystem (Ray Train's checkpoints) words a request that may pass: unreachable, reset, throttled
_ARROW_PASSING = re.compile(r"NETWORK_CONNECTION|curlCode|SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|"
                            r"REQUEST_TIMEOUT|THROTTLING|Connection reset|timed out")


def arrow_endpoint(fs) -> str | None:
    """The S3 endpoint a pyarrow filesystem was built for (read from how it pickles: pyarrow has no accessor);
    None for AWS's own or a local filesystem."""
    try:
        kwargs = fs.__reduce__()[1][0]
        return f"{kwargs['scheme']}://{kwargs['endpoint_override']}" if kwargs.get("endpoint_override") else None
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def arrow_call(what: str, call, where: str, fs):
    """A call on the pyarrow filesystem `fs` (Ray Train's checkpoint upload or download): an S3 request that may
    pass is retried within the retry window, then StorageUnavailableError naming the endpoint; a full disk is
    StorageFullError at once, naming the device of `where`."""
    def passing(e: Exception) -> str | None:
        if isinstance(e, StorageError) or not isinstance(e, OSError):
            return None
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(f"no space left on {device_of(where)} ({what} in {where})") from None
        return arrow_outage(str(e))
    return within_window(what, call, passing, RETRY_WINDOW_S, arrow_endpoint(fs))


def arrow_outage(text: str) -> str | None:
    """The line of a pyarrow error's text that says S3 did not answer (unreachable, reset, throttled), if one does."""
    return next((ln.strip()[:300] for ln in text.splitlines() if _ARROW_PASSING.search(ln)), None)


def device_of(path: str) -> str:
    """The mount point holding `path` (what `df` would name), for the disk-full message."""
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    tag: str = ""   # the content's identity when the listing gives it (S3 ETag); "" means ask content_tag()
    stat: str = ""  # a local file's "size:mtime_ns:inode": changes whenever its bytes can have (not an identity)


class Storage(Protocol):
    uri: str
    read_ahead: int  # reads worth having in flight at once when reading many keys (each waits on the network)
    reads_in_processes: bool  # reading and checking many keys is CPU work (one process per core pays), not waiting
    process_read_ahead: int  # reads in flight within each such process
    reads_are_local: bool  # a read is a file read: cheaper for a driver than an object's bytes sent through Ray

    def list(self, prefix: str = "") -> list[str]: ...
    def list_info(self, prefix: str = "") -> list[ObjectInfo]: ...
    def info(self, key: str) -> ObjectInfo: ...
    def content_tag(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def remove_stale_temps(self, before: float) -> int: ...
    def read(self, key: str) -> bytes: ...
    def read_range(self, key: str, offset: int, length: int) -> bytes: ...
    def size(self, key: str) -> int: ...
    def write(self, key: str, data: bytes) -> None: ...
    def exists(self, key: str) -> bool: ...
    def child(self, key: str) -> str: ...


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _stat_tag(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


@dataclass
class LocalStorage:
    root: str
    read_ahead = 2  # a local read does not wait, but the zip's check decodes in the reading thread without the GIL
    reads_in_processes = True  # the check is Pillow under the GIL: 2 threads lost to serial, processes won 1.6x
    process_read_ahead = 1
    reads_are_local = True

    @property
    def uri(self) -> str:
        return self.root

    def _file(self, key: str) -> str:
        """The path of `key` under the root, as a string (a Path per read was ~9 s per 100,000 zipped images)."""
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"{self.root}: key {key!r} leaves the storage root")
        return os.path.join(self.root, key) if key else self.root

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def _walk(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every file under `prefix`, hidden temp files excluded; one scandir per folder, so a
        listing costs a stat per file at most (what the directory entry already knows is not asked again)."""
        base = self._path(prefix)
        if base.is_file():
            yield base.relative_to(self.root).as_posix(), base.stat()
            return
        stack = [base]
        while stack:
            folder = stack.pop()
            try:
                entries = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:  # one entry at a time: a folder of 100,000 files listed at once held ~70 MB
                for entry in entries:
                    if entry.is_dir():
                        stack.append(Path(entry.path))
                    elif entry.is_file() and not entry.name.startswith(".tmp-"):
                        yield os.path.relpath(entry.path, self.root).replace(os.sep, "/"), entry.stat()

    def list(self, prefix: str = "") -> list[str]:
        """Keys (relative, '/'-separated) of all files under `prefix`, sorted; hidden temp files excluded."""
        return sorted(key for key, _ in self._walk(prefix))

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        return sorted((ObjectInfo(key, st.st_size, stat=_stat_tag(st)) for key, st in self._walk(prefix)),
                      key=lambda info: info.key)

    def info(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._file(key))
        except FileNotFoundError:
            raise StorageError(f"{self.child(key)}: no such file") from None
        return ObjectInfo(key, st.st_size, stat=_stat_tag(st))

    def content_tag(self, key: str) -> str:
        """A digest of the file's bytes (BLAKE2b, read in 1 MiB pieces)."""
        h = hashlib.blake2b(digest_size=16)
        with open(self._file(key), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "b2:" + h.hexdigest()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def remove_stale_temps(self, before: float) -> int:
        """Delete temp files (`.tmp-*`, left by a killed writer) last modified before `before` (epoch seconds)."""
        root, removed = Path(self.root), 0
        if not root.is_dir():
            return 0
        for path in root.rglob(".tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
        return removed

    def read(self, key: str) -> bytes:
        try:
            with open(self._file(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.child(key)}: no such file") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with open(self._file(key), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def size(self, key: str) -> int:
        try:
            return os.stat(self._file(key)).st_size
        except FileNotFoundError:
            raise StorageError(f"{self.child(key)}: no such file") from None

    def write(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """A file to write; it appears under `key` only when the block ends without error."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # not mkstemp, whose file is 0600: created as open() creates files (0666 less the umask), exclusively
            tmp = str(path.parent / f".tmp-{uuid.uuid4().hex}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            raise self._full(e, path) from None
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError) and not isinstance(e, StorageError):
                raise self._full(e, path) from None
            raise

    @staticmethod
    def _full(e: OSError, path: Path) -> OSError:
        """A full disk (or quota) as a StorageFullError naming the device and the file; other errors as they are."""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFullError(f"no space left on {device_of(str(path.parent))} (writing {path})")
        return e

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._file(key))

    def child(self, key: str) -> str:
        return self._file(key)


def forget_cut_short_imports(packages: tuple[str, ...]) -> None:
    """Drop from sys.modules the submodules of these packages whose package is no longer there.

    Ray cancels a task by raising in it wherever it is. When that lands in a worker's first import of boto3, Python
    removes the modules whose code was cut short but keeps the submodules that had finished; the next import makes
    a new package and binds none of those to it, so every S3 client in that worker process then fails with "module
    'boto3' has no attribute 'utils'". Forgotten, they are imported again whole."""
    def orphan(name: str) -> bool:
        parts = name.split(".")
        return parts[0] in packages and any(".".join(parts[:i]) not in sys.modules for i in range(1, len(parts)))
    for name in [name for name in list(sys.modules) if orphan(name)]:
        del sys.modules[name]


_boto3_whole = False  # set once this process has imported boto3 to the end


def import_boto3_whole() -> None:
    """Before this process's first use of boto3: forget what an import of it cut short left, then import it."""
    global _boto3_whole
    if not _boto3_whole:
        forget_cut_short_imports(("boto3", "botocore", "s3transfer"))
        for name in ("boto3", "boto3.exceptions", "botocore.config", "botocore.exceptions"):
            importlib.import_module(name)
        _boto3_whole = True


@dataclass
class S3Storage:
    bucket: str
    prefix: str = ""
    retry_window_s: float = field(default_factory=lambda: RETRY_WINDOW_S)  # the creator's, carried to workers
    endpoint: str | None = field(default_factory=s3_endpoint)  # likewise: workers talk to the driver's endpoint
    read_ahead = 16  # a GET waits tens of ms for its first byte: 16 in flight hide that
    # boto3 spends ~1-3 ms of CPU per GET (signing, HTTP, parsing), most of it under the GIL: one process reads back
    # ~700 images/s at most on a fast core, whatever the threads; processes, each with its own GETs in flight, add up
    reads_in_processes = True
    process_read_ahead = 8
    reads_are_local = False
    list_page = 1000  # keys per listing request: S3's most

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def __getstate__(self) -> dict:  # the boto3 client is rebuilt in each process
        return {"bucket": self.bucket, "prefix": self.prefix, "retry_window_s": self.retry_window_s,
                "endpoint": self.endpoint}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @cached_property
    def client(self):
        import_boto3_whole()
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint,
                            config=Config(retries={"mode": "standard", "max_attempts": S3_ATTEMPTS},
                                          connect_timeout=5, read_timeout=30, max_pool_connections=32))

    def _key(self, key: str) -> str:
        # S3 keys are literal ('..' has no meaning there); output keys are sanitised by gan.io.naming.
        return join_key(self.prefix, key) if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        """One S3 request; what may pass (unreachable, throttled, 5xx) is retried with back-off within the window."""
        import_boto3_whole()
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        def passing(e: Exception) -> str | None:
            if isinstance(e, ClientError):
                code = e.response.get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise StorageError(f"{what}: no such object") from None
                if code == "NoSuchBucket":
                    raise StorageError(f"{what}: bucket {self.bucket!r} does not exist") from None
                if code not in TRANSIENT_CODES:
                    raise StorageError(f"{what}: S3 error {code} ({e})") from None
                return f"S3 error {code}"
            if isinstance(e, (BotoCoreError, S3UploadFailedError)):  # unreachable, reset, timed out; upload parts
                return str(e)
            return None
        return within_window(what, lambda: fn(*args, **kwargs), passing, self.retry_window_s, self.endpoint)

    def list(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.list_info(prefix)]

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Keys under `prefix` with sizes and ETags from the listing itself (no request per object)."""
        full = self._key(prefix)
        full = full + "/" if full else ""
        base = join_key(self.prefix)
        infos: list[ObjectInfo] = []
        # a page at a time, each its own request with its own retries: boto3's parsed pages cost ~1 KB a key, too
        # much to hold all at once (~90 MiB at 100,000), and a blip late in a long listing retries one page, not all
        more: dict = {}
        while True:
            page = self._call(self.child(prefix), self.client.list_objects_v2, Bucket=self.bucket, Prefix=full,
                              MaxKeys=self.list_page, **more)
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base) + 1:] if base else obj["Key"]
                if rel and not rel.endswith("/"):
                    infos.append(ObjectInfo(rel, int(obj["Size"]), "etag:" + obj.get("ETag", "").strip('"')))
            if not page.get("IsTruncated"):
                return sorted(infos, key=lambda i: i.key)
            more = {"ContinuationToken": page["NextContinuationToken"]}

    def info(self, key: str) -> ObjectInfo:
        head = self._call(self.child(key), self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return ObjectInfo(key, int(head["ContentLength"]), "etag:" + head.get("ETag", "").strip('"'))

    def content_tag(self, key: str) -> str:
        return self.info(key).tag

    def delete(self, key: str) -> None:
        self._call(self.child(key), self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def remove_stale_temps(self, before: float) -> int:
        return 0  # S3 objects appear whole (PUT, completed multipart uploads): nothing half-written to remove

    def read(self, key: str) -> bytes:
        return self._call(self.child(key), lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                          ["Body"].read())  # the body's bytes inside the retry too: a reset mid-read is retried

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(self.child(key), lambda: self.client.get_object(
            Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{offset + length - 1}")["Body"].read())

    def size(self, key: str) -> int:
        head = self._call(self.child(key), self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def write(self, key: str, data: bytes) -> None:
        if len(data) > MAX_OBJECT_BYTES:
            raise StorageError(f"{self.child(key)}: {len(data)} bytes is over the {MAX_OBJECT_BYTES}-byte limit")
        self._call(self.child(key), self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """A file uploaded as it is written (`S3Upload`: one PUT when small, else a multipart upload a part at a
        time, nothing spooled to local disk); the object appears only when the block ends without error."""
        upload = S3Upload(self, key)
        try:
            yield upload
            upload.complete()
        except BaseException:
            upload.abort()
            raise

    def exists(self, key: str) -> bool:
        try:
            self._call(self.child(key), self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except StorageError as e:
            if "no such object" in str(e):
                return False
            raise

    def child(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


class S3Upload(io.RawIOBase):
    """What `S3Storage.open_write` yields: a seekable file that is uploaded while it is written. Up to `part_bytes`
    + `keep_bytes` it is only kept, and PUT when complete; past that it becomes a multipart upload, a part of
    `part_bytes` at a time (each its own request with its own retries, one in flight beside the writer), always
    keeping the last `keep_bytes` unsent, so that a writer can seek back into them (zipfile rewrites each entry's
    header once its data is written: the zip is byte for byte what a local file would hold). The upload is aborted
    on error; one of the same key left by a killed writer is aborted when the next starts."""

    part_bytes = 8 * 1024 ** 2  # S3's parts are 5 MiB to 5 GiB, at most 10,000: up to ~78 GiB a file
    keep_bytes = 8 * 1024 ** 2  # how far back a writer may seek: a zip entry (a submission image is < 1 MiB)

    def __init__(self, storage: S3Storage, key: str):
        self.storage, self.rel, self.key, self.name = storage, key, storage._key(key), storage.child(key)
        self.buffer, self.base, self.pos = bytearray(), 0, 0  # the unsent bytes, from offset `base` of the file
        self.upload_id: str | None = None
        self.parts: list = []  # (part number, its upload's future)
        self.pool = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        end = self.base + len(self.buffer)
        target = {0: offset, 1: self.pos + offset, 2: end + offset}[whence]
        if not self.base <= target <= end:
            raise io.UnsupportedOperation(f"{self.name}: can seek only within the last {self.keep_bytes} bytes "
                                          f"written (to {target}, of {self.base}-{end})")
        self.pos = target
        return target

    def write(self, data) -> int:
        data = bytes(data)
        start = self.pos - self.base
        self.buffer[start:start + len(data)] = data
        self.pos += len(data)
        while len(self.buffer) >= self.part_bytes + self.keep_bytes:
            self._send(self.part_bytes)
        return len(data)

    def _send(self, n: int) -> None:
        """The first `n` unsent bytes as the next part (after the part before it is up: one in flight)."""
        from concurrent.futures import ThreadPoolExecutor
        client, s = self.storage.client, self.storage
        if self.upload_id is None:
            self._abort_left_over()
            self.upload_id = s._call(self.name, client.create_multipart_upload, Bucket=s.bucket,
                                     Key=self.key)["UploadId"]
            self.pool = ThreadPoolExecutor(1)
        with memoryview(self.buffer) as unsent:
            part, number = bytes(unsent[:n]), len(self.parts) + 1  # one copy (a slice of the bytearray is another)
        del self.buffer[:n]
        self.base += n
        if self.parts:
            self.parts[-1][1].result()
        self.parts.append((number, self.pool.submit(
            lambda: s._call(f"{self.name} (part {number})", client.upload_part, Bucket=s.bucket, Key=self.key,
                            UploadId=self.upload_id, PartNumber=number, Body=part)["ETag"])))

    def complete(self) -> None:
        s = self.storage
        if self.upload_id is None:
            s.write(self.rel, bytes(self.buffer))
            return
        self._send(len(self.buffer))  # the last part may be smaller than 5 MiB
        parts = [{"PartNumber": n, "ETag": f.result()} for n, f in self.parts]
        s._call(self.name, s.client.complete_multipart_upload, Bucket=s.bucket, Key=self.key,
                UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        self.pool.shutdown()

    def abort(self) -> None:
        """Best effort: the parts sent are dropped (an upload never completed is never an object)."""
        if self.upload_id is None:
            return
        self.pool.shutdown(cancel_futures=True)
        with contextlib.suppress(Exception):
            self.storage.client.abort_multipart_upload(Bucket=self.storage.bucket, Key=self.key,
                                                       UploadId=self.upload_id)

    def _abort_left_over(self) -> None:
        """Uploads of this key that a killed writer left incomplete (S3 keeps, and bills, their parts)."""
        s = self.storage
        with contextlib.suppress(Exception):
            for upload in s.client.list_multipart_uploads(Bucket=s.bucket, Prefix=self.key).get("Uploads", []):
                if upload["Key"] == self.key:
                    s.client.abort_multipart_upload(Bucket=s.bucket, Key=self.key, UploadId=upload["UploadId"])


def open_storage(uri: str) -> LocalStorage | S3Storage:
    """`s3://bucket/prefix` or a local path (also `file://`)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if len(parsed.netloc) < 3:
            raise StorageError(f"{uri}: S3 bucket name must have at least 3 characters")
        return S3Storage(parsed.netloc, parsed.path.strip("/"))
    return LocalStorage(resolve_uri(uri))


def resolve_uri(uri: str) -> str:
    """A URI that means the same in every process: `s3://` unchanged, a local path (or `file://`) made absolute.

    Called once, in the driver, on every location a user gives (flags and config files) before anything is sent
    to a Ray worker or actor: those run in other directories (Ray Train workers in the session's artifacts
    folder), where a relative path would name another place. Under `ray job submit --working-dir .` the
    driver's directory is the uploaded project, so relative paths mean "inside the submitted project".
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return uri
    if parsed.scheme == "file":
        uri = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a local path or s3://bucket/prefix")
    return os.path.abspath(os.path.expanduser(uri))


def arrow_filesystem(uri: str):
    """(path, pyarrow filesystem or None) for a folder URI, as Ray Train's storage takes it: a local folder made
    absolute (no filesystem), or `bucket/prefix` on a pyarrow S3 filesystem configured as the boto3 client is."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        return resolve_uri(uri), None
    import pyarrow.fs
    kwargs = {}
    endpoint = s3_endpoint()
    if endpoint:
        ep = urlparse(endpoint)
        kwargs = {"endpoint_override": ep.netloc, "scheme": ep.scheme or "https"}
    fs = pyarrow.fs.S3FileSystem(access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                                 retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
                                 **kwargs)
    return f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"), fs


def split_uri(uri: str) -> tuple[LocalStorage | S3Storage, str]:
    """A file URI -> (storage of its folder, its name)."""
    uri = uri.rstrip("/")
    head, _, name = uri.rpartition("/")
    if not name:
        raise StorageError(f"{uri}: expected a file path")
    if not head:
        head = "."
    if head == "s3:/":
        raise StorageError(f"{uri}: expected s3://bucket/key")
    return open_storage(head), name


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over one stored object, fetching only the byte ranges asked for
    (lets zipfile read a zip's directory on S3 without downloading the whole zip)."""

    def __init__(self, storage: Storage, key: str):
        self.storage, self.key, self.pos = storage, key, 0
        self.length = storage.size(key)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        if n <= 0:
            return b""
        data = self.storage.read_range(self.key, self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def read_uri(uri: str) -> bytes:
    storage, name = split_uri(uri)
    return storage.read(name)


def write_uri(uri: str, data: bytes) -> None:
    storage, name = split_uri(uri)
    storage.write(name, data)
