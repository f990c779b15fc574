"""The Kaggle submission: `images.zip` of 7,000-10,000 JPEGs, each 256x256 RGB.

A job run with a zip (`run_zipped`) makes it as it runs: each output, checked in the write task, goes into the zip
as its row comes back to the driver (with its bytes from S3; from a local folder the driver reads the file and
compares its CRC-32), so the zip does not GET its job's outputs back (only those an earlier run of the job wrote).
Otherwise (`assemble`: `jobs.assemble`, the pipeline) images are streamed from storage into the zip in name order,
read and checked a bounded window ahead (from S3 in 16 threads: each GET waits on the network; from a local folder
in 2 threads; for a large folder, in one process per core: the check, and boto3's work per GET, are CPU
work, mostly under the GIL), and the same images give the same zip, byte for byte (a job's own zip holds its
entries in the order they were made). Stored, not deflated (JPEG does not compress further); each entry carries a
fixed date, not the clock's; memory stays flat at any count; the zip appears at its target only when whole and its
count in range (a local rename, or an S3 upload, multipart when large).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import multiprocessing
import os
import zipfile
import zlib
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator

from PIL import Image

from gan.batch.manifest import manifest_outputs, write_report
from gan.io.images import IMAGE_SIZE, BadImageError, open_header, open_image
from gan.io.storage import Storage, StorageError, split_uri

if TYPE_CHECKING:  # not imported at run time: the engine brings Ray Data, which a zip alone does not need
    from gan.batch.engine import BatchJob, JobResult

MIN_IMAGES, MAX_IMAGES = 7_000, 10_000
ENTRY_DATE = (1980, 1, 1, 0, 0, 0)  # the zip format's first date: entries do not record when they were written
IMAGE_SUFFIXES = (".jpg", ".jpeg")
# A folder of at least this many images, in storage whose `reads_in_processes`, is checked in processes: each
# starts a Python that imports the entrypoint's modules (~2-4 s), paid back from ~20,000 images (a serial check is
# ~0.4 ms per image, a GET from S3 ~1-3 ms of boto3's CPU).
PROCESSES_FROM = 20_000
PROCESS_CHUNK = 128  # keys per task: one round trip per chunk, ~4 MB of photos


class SubmissionError(ValueError):
    """A submission that Kaggle would refuse; the message says which image or count is wrong."""


def zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry dated ENTRY_DATE, not by the clock (the same images give the same zip bytes), rw-r--r--."""
    entry = zipfile.ZipInfo(name, date_time=ENTRY_DATE)
    entry.external_attr = 0o644 << 16
    return entry


def check_submission_image(data: bytes, name: str) -> None:
    """An image Kaggle takes: a JPEG, 256x256, RGB as stored, and whole (its stream decoded at 1/8 scale: damage
    still shows, at half the cost of a full decode); opened once for both."""
    try:
        open_image(data, name, draft=(IMAGE_SIZE // 8, IMAGE_SIZE // 8), header=functools.partial(_header, name))
    except BadImageError as e:
        raise SubmissionError(str(e)) from None


def check_made_image(data: bytes, name: str) -> None:
    """`check_submission_image` for bytes a job has just encoded, not read back: whole by construction, so only
    their header is checked (JPEG, 256x256, RGB), not their stream (~0.03 ms here, against ~0.4-0.7)."""
    try:
        _header(name, open_header(data, name))
    except BadImageError as e:
        raise SubmissionError(str(e)) from None


def _header(name: str, img: Image.Image) -> None:
    if img.format != "JPEG":
        raise SubmissionError(f"{name}: is {img.format}, the submission needs JPEG")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise SubmissionError(f"{name}: is {img.width}x{img.height}, the submission needs {IMAGE_SIZE}x{IMAGE_SIZE}")
    if img.mode != "RGB":
        raise SubmissionError(f"{name}: has mode {img.mode}, the submission needs RGB")


def image_keys(storage: Storage, outputs_checked: bool = False) -> list[str]:
    """The images a batch job wrote: exactly its manifest's outputs (nothing else in the folder, no leftovers of
    an earlier run), all present (one listing, unless `outputs_checked`); for a folder no job wrote, every top-level
    JPEG."""
    owned = manifest_outputs(storage, check_present=not outputs_checked)
    if owned is not None:
        return owned
    return [k for k in storage.list() if "/" not in k and k.lower().endswith(IMAGE_SUFFIXES)]


def check_count(count: int, where: str, min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES) -> None:
    if not min_images <= count <= max_images:
        raise SubmissionError(f"{where}: {count} images, a submission needs {min_images} to {max_images} "
                              "(use --min-images/--max-images to change the range for other uses)")


def assemble(storage: Storage, output_uri: str, min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES,
             outputs_checked: bool = False) -> dict:
    """Stream every image in `storage` into a zip at `output_uri`; returns {images, bytes, zip, identity}.
    `outputs_checked`: the caller has just run the folder's job to its end (it wrote or found each output), so the
    listing that would tell an unfinished job by its missing outputs is skipped (one missing since still fails, at
    its read)."""
    keys = image_keys(storage, outputs_checked)
    check_count(len(keys), storage.uri, min_images, max_images)
    with JobZip(output_uri, min_images, max_images) as z:
        z.add_read_back(storage, keys)
    return z.made()


class JobZip:
    """A zip being written: `assemble`'s (every image read back), or a job's, made as the job runs
    (`BatchJob.execute(collect=...)`): the write tasks check each output they
    have just encoded (`check`: its header), the driver adds each as its row comes back (`add` with the bytes the
    task sent, or `add_written`: read from a local folder), then those an earlier run wrote, read back and checked
    whole (`add_read_back`); `finish` checks the count. A `with` block: the zip appears at `uri` only when the block
    ends without error."""
    check = staticmethod(check_made_image)

    def __init__(self, uri: str, min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES):
        self.uri, self.min_images, self.max_images = uri, min_images, max_images
        self.target, self.name = split_uri(uri)
        self.images = self.bytes = 0

    def __enter__(self) -> "JobZip":
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(self.target.open_write(self.name))
            self._zip = stack.enter_context(zipfile.ZipFile(f, "w", zipfile.ZIP_STORED))
            self._open = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        return self._open.__exit__(*exc)

    def add(self, key: str, data: bytes) -> None:
        self._zip.writestr(zip_entry(key), data)
        self.images += 1
        self.bytes += len(data)

    def add_written(self, storage: Storage, key: str, crc: int) -> None:
        """An output this job has just written and checked, read back here (a local folder: a file read, cheaper
        than its bytes sent through Ray): added when it is still the bytes that were checked, else the zip fails."""
        data = storage.read(key)
        if zlib.crc32(data) != crc:
            raise SubmissionError(f"{storage.child(key)}: changed after the job wrote it; rerun the job to zip the "
                                  "folder as it is now")
        self.add(key, data)

    def add_read_back(self, storage: Storage, keys: list[str]) -> None:
        """Read, check and add these outputs (in processes for many, as `assemble` does)."""
        processes = checking_processes() if storage.reads_in_processes and len(keys) >= PROCESSES_FROM else 0
        for key, data in checked_images(storage, keys, storage.read_ahead, processes):
            self.add(key, data)

    def finish(self, where: str) -> None:
        """In the block: a count out of range fails it, so that zip never appears."""
        check_count(self.images, where, self.min_images, self.max_images)

    def made(self) -> dict:
        """After the block: what `assemble` returns for the zip it made."""
        return {"images": self.images, "bytes": self.bytes, "zip": self.uri,
                "identity": file_identity(self.target, self.name)}


def run_zipped(job: BatchJob, uri: str, min_images: int = MIN_IMAGES,
               max_images: int = MAX_IMAGES) -> tuple[JobResult, dict, bool]:
    """Run `job` and make the zip of its outputs at `uri` as it runs (`JobZip`): (the job's result, the zip's
    record, whether the zip was made now). The zip is recorded in the job's report; a rerun that finds the job
    finished makes no zip when the one its report records is untouched since (`zip_of_job`)."""
    done = job.resume()
    if done is not None:
        return (done, *zip_of_job(job.opts.output, done, uri, min_images, max_images))
    earlier = job.earlier_outputs()
    with JobZip(uri, min_images, max_images) as z:
        job.execute(collect=z)
        result = job.report()
        z.add_read_back(job.opts.output, earlier)
        z.finish(job.opts.output.uri)
    return result, record_zip(job.opts.output, result, z.made()), True


def zip_of_job(output: Storage, result: JobResult, uri: str, min_images: int = MIN_IMAGES,
               max_images: int = MAX_IMAGES) -> tuple[dict, bool]:
    """The zip of a job's outputs, after `result` came from its run: (what `assemble` returned, whether it was
    made now). Made without listing the folder (the job has just written or found each output) and recorded in the
    job's report; a rerun that found the job finished leaves the zip its report records, when it is untouched since
    at `uri` and its count in the range."""
    made = result.report.get("zip")
    if result.skipped_run and _is_untouched(made, uri, min_images, max_images):
        return made, False
    return record_zip(output, result, assemble(output, uri, min_images, max_images, outputs_checked=True)), True


def record_zip(output: Storage, result: JobResult, made: dict) -> dict:
    """`made` recorded in the job's report (for a rerun to find): returned as it is."""
    result.report["zip"] = made
    write_report(output, result.report)
    return made


def _is_untouched(made: dict | None, uri: str, min_images: int, max_images: int) -> bool:
    """Whether `made` (a report's record of its zip) is the zip at `uri` now, with a count the range allows."""
    return (made is not None and made.get("zip") == uri and min_images <= made.get("images", -1) <= max_images
            and made.get("identity") is not None and made["identity"] == file_identity(*split_uri(uri)))


def file_identity(storage: Storage, key: str) -> str | None:
    """What the file at `key` is now, without reading it: its size and S3 ETag, or a local file's size, mtime and
    inode (any rewrite changes it); None when it cannot be seen."""
    try:
        info = storage.info(key)
    except StorageError:
        return None
    return f"{info.size}:{info.tag or info.stat}"


def checking_processes() -> int:
    """One checking process per core this process may use, at most 8 (past that the zip's writer is the limit)."""
    return min(len(os.sched_getaffinity(0)), 8)


def checked_images(storage: Storage, keys: list[str], ahead: int = 0,
                   processes: int = 0) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of each key, in order, each read and checked as a submission image; with `ahead`, up to that many
    keys are read (in threads) before their turn; with `processes`, keys are read and checked in that many processes
    instead, in chunks (each with the storage's `process_read_ahead` reads in flight). The first error (a bad image,
    storage down) is raised at its key, in order."""
    if processes:
        yield from _checked_in_processes(storage, keys, processes)
        return
    if ahead <= 1:
        yield from ((key, read_checked(storage, key)) for key in keys)
        return

    with ThreadPoolExecutor(ahead) as pool:
        yield from in_order(pool, functools.partial(read_checked, storage), keys, ahead)


def read_checked(storage: Storage, key: str) -> bytes:
    data = storage.read(key)
    check_submission_image(data, storage.child(key))
    return data


def _checked_in_processes(storage: Storage, keys: list[str], processes: int) -> Iterator[tuple[str, bytes]]:
    chunks = [keys[i:i + PROCESS_CHUNK] for i in range(0, len(keys), PROCESS_CHUNK)]
    # spawn, not fork: the driver has threads (Ray's, boto's), and a forked child may inherit one's held lock.
    # The storage goes to each process once, not with each chunk: one S3 client and its connections per process
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_hold_storage, initargs=(storage,)) as pool:
        for chunk, (datas, error) in in_order(pool, _read_checked_chunk, chunks, 2 * processes):
            yield from zip(chunk, datas)
            if error is not None:
                raise error


def in_order(pool: Executor, fn: Callable, items: list, ahead: int) -> Iterator[tuple]:
    """(item, fn(item)) of each item, in order, with up to `ahead` calls in flight in `pool`; a call's error is
    raised at its item."""
    todo = iter(items)
    window = collections.deque((item, pool.submit(fn, item)) for item in itertools.islice(todo, ahead))
    try:
        while window:
            item, pending = window.popleft()
            result = pending.result()
            window.extend((i, pool.submit(fn, i)) for i in itertools.islice(todo, 1))
            yield item, result
    finally:  # stopped early (an error, the caller gone): what is still queued is dropped, not read
        for _, pending in window:
            pending.cancel()


_process_storage: Storage | None = None  # in a checking process: the storage it reads from


def _hold_storage(storage: Storage) -> None:
    global _process_storage
    _process_storage = storage


def _read_checked_chunk(keys: list[str]) -> tuple[list[bytes], Exception | None]:
    """In a checking process: the bytes of each key, in order, up to the first bad one, and its error."""
    storage = _process_storage
    datas = []
    try:
        for _, data in checked_images(storage, keys, storage.process_read_ahead):
            datas.append(data)
    except (SubmissionError, StorageError) as e:
        return datas, e
    return datas, None


def iter_zip_images(data_or_path, source: str):
    """(name, bytes) of each image in a zip, with clear errors for a file that is not a zip."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path)
    except zipfile.BadZipFile:
        raise SubmissionError(f"{source}: not a zip file") from None
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            yield info.filename, zf.read(info)


def check_zip(data_or_path, source: str, min_images: int = MIN_IMAGES, max_images: int = MAX_IMAGES) -> int:
    """Validate a submission zip the way Kaggle would; returns the image count."""
    count = 0
    for name, data in iter_zip_images(data_or_path, source):
        check_submission_image(data, f"{source}:{name}")
        count += 1
    check_count(count, source, min_images, max_images)
    return count
