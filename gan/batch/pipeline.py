"""The one Ray Data pipeline of every batch job: plan rows -> decode or read (tasks) -> model (actor pool) -> write (tasks).

Stylize and generate write JPEGs; evaluation collects Inception features instead of writing. Ray Data streams
the stages, so decoding and encoding run beside the model, and its actor pool replaces a dying actor and
retries its batch. Each stage passes per-image errors on in the `error` column: a broken image becomes a line
in the report, never a failed block. Rows are typed (`Row` in the `row` column) from plan to result.
"""
from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from gan.io.images import IMAGE_SIZE, BadImageError, decode_image, encode_jpeg
from gan.io.sources import InputItem, read_input
from gan.io.storage import Storage, StorageError, StorageFullError, StorageUnavailableError
from gan.ray_runtime import check_placeable, ensure_ray

MAX_BLOCKS = 200
# Ray's object store per actor for a pipeline whose outputs' bytes come back to the driver (at least 4 batches of
# RGB images): the driver maps every store page its blocks land on, and the store's used span, which those blocks
# wander over, is what Ray Data lets it hold (up to half the store): measured in docs/scaling.md
STORE_PER_ACTOR = 64 * 2**20
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3


@dataclass(frozen=True, slots=True)
class Row:
    """One image of a batch plan: what it is called, where it comes from (for inputs) and where it goes."""
    name: str
    index: int                      # position in the plan; DCGAN samples are drawn from (seed, index)
    out: str = ""                   # output key, for jobs that write
    item: InputItem | None = None   # the input to read, for jobs that decode


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    cpus: float       # per actor
    gpus: float       # per actor
    threads: int | None  # torch threads of a CPU actor
    resources: dict | None = None  # custom Ray resources per actor


def actor_plan(actors: int | None, cpus_per_actor: float | None, use_gpu: bool | None,
               resources: dict | None = None) -> ActorPlan:
    """Actors for the running cluster: one per GPU when it has GPUs (unless use_gpu is False), else one CPU
    actor with every CPU but one, so the decode and write tasks beside it still get scheduled."""
    import ray
    ensure_ray()
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if use_gpu if use_gpu is not None else gpus > 0:
        return ActorPlan(actors or max(1, gpus), cpus_per_actor or 1.0, 1.0, None, resources or None)
    actors = actors or 1
    per = cpus_per_actor or max(1.0, (cpus - 1) / actors)
    return ActorPlan(actors, per, 0.0, max(1, int(per)), resources or None)


def check_plan(plan: ActorPlan, spare_cpus: float) -> None:
    """Refuse at once a pool that this Ray can never run: its fixed-size pool waits for every actor, and the
    decode and write tasks beside it need `spare_cpus` (with every CPU taken by actors they never run): either
    way Ray Data would wait for ever, silently (see `ray_runtime.check_placeable`)."""
    each = {"CPU": plan.cpus + spare_cpus / plan.actors, "GPU": plan.gpus, **(plan.resources or {})}
    spare = f" and {spare_cpus:g} CPU for the decode and write tasks" if spare_cpus else ""
    check_placeable(each, plan.actors, "model actor",
                    {"CPU": f"actors x cpus_per_actor (--actors, --cpus-per-actor){spare}",
                     "GPU": "actors, use_gpu (--actors, --use-gpu)", "*": "actor_resources (--actor-resources)"})


def _per_row(batch: dict, work: Callable[[Row], object]) -> tuple[list, np.ndarray]:
    """work(row) for each row that has no error yet; what it raises about its input becomes that row's error."""
    errors, out = list(batch["error"]), [None] * len(batch["row"])
    for i, row in enumerate(batch["row"]):
        if errors[i]:
            continue
        try:
            out[i] = work(row)
        except (StorageUnavailableError, StorageFullError):
            raise  # the storage, not this input: the job stops, the input is not rejected
        except (BadImageError, StorageError, ValueError) as e:
            errors[i] = str(e)
    return out, np.array(errors, dtype=object)


class DecodeStage:
    """Input bytes -> (size, size, 3) uint8 `pixels`, or an error for that row."""

    def __init__(self, storage: Storage, size: int, check: Callable[[bytes, str], None] | None = None):
        self.storage, self.size, self.check = storage, size, check  # check(data, name) raises ValueError

    def _decode(self, row: Row) -> np.ndarray:
        data = read_input(self.storage, row.item)
        if self.check is not None:
            self.check(data, row.name)
        return decode_image(data, row.name, self.size)

    def __call__(self, batch: dict) -> dict:
        decoded, errors = _per_row(batch, self._decode)
        pixels = np.zeros((len(decoded), self.size, self.size, 3), np.uint8)
        for i, image in enumerate(decoded):
            if image is not None:
                pixels[i] = image
        return {**batch, "pixels": pixels, "error": errors}


class ReadStage:
    """Input bytes in a `data` column, decoded nowhere yet: for a model actor that decodes on its own device
    (`gan.batch.device_jpeg`). A file that cannot be read, or is over the size limit, is an error for its row."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def __call__(self, batch: dict) -> dict:
        read, errors = _per_row(batch, lambda row: read_input(self.storage, row.item))
        data = np.empty(len(read), dtype=object)  # filled one by one: numpy would make a list of bytes fixed-width
        for i, b in enumerate(read):
            data[i] = b if b is not None else b""
        return {**batch, "data": data, "error": errors}


class WriteStage:
    """Write each good row atomically under its `out` key: its `jpeg` bytes when the actor encoded them, else its
    `pixels` JPEG-encoded here; pixels are dropped, the other columns (`row`, `error`, the actor's `node`) go on to
    the driver. With `pass_on` (a check of an output's bytes, raising ValueError; for a zip the driver makes as the
    job runs), each output is checked here first (one that fails is its row's error and is not written). With
    `send_bytes` its bytes go on (`jpeg`), for storage that the driver would read back at more cost than Ray's
    object store brings them (S3: a GET each); else only their CRC-32 (`crc`), and the driver reads the output
    itself: bytes sent through the object store are pages of it that the driver maps, its RSS growing with the run."""

    def __init__(self, storage: Storage, pass_on: Callable[[bytes, str], None] | None = None,
                 send_bytes: bool = True):
        self.storage, self.pass_on, self.send_bytes = storage, pass_on, send_bytes

    def __call__(self, batch: dict) -> dict:
        encoded = batch.get("jpeg")
        if self.send_bytes:
            sent = np.empty(len(batch["row"]), dtype=object)
            sent[:] = b""
        else:
            sent = np.zeros(len(batch["row"]), dtype=np.int64)
        errors = list(batch["error"])
        for i, (row, error) in enumerate(zip(batch["row"], errors)):
            if error:
                continue
            data = encoded[i] if encoded is not None else encode_jpeg(batch["pixels"][i])
            if self.pass_on is not None:
                try:
                    self.pass_on(data, row.out)
                except ValueError as e:
                    errors[i] = str(e)
                    continue
                sent[i] = data if self.send_bytes else zlib.crc32(data)
            # a fault of the storage itself (an outage past its retry window, a full disk) stops the job: the
            # driver says how far it got, and the rerun writes the rest (what was written is whole)
            self.storage.write(row.out, data)
        kept = {k: v for k, v in batch.items() if k not in ("pixels", "jpeg")}
        if self.pass_on is None:
            return kept
        return {**kept, "error": np.array(errors, dtype=object), ("jpeg" if self.send_bytes else "crc"): sent}


class Progress:
    """A one-line progress bar on stderr, redrawn at most twice a second."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.done, self.start, self.last = 0, time.monotonic(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.5 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            bar = "#" * int(self.done / self.total * 30)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            print(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} {rate:.1f} img/s eta {eta:.0f}s",
                  end="\n" if self.done >= self.total else "", file=sys.stderr, flush=True)


class DecodeThenModel:
    """One actor that decodes its batch, then runs the model on it: for CPU actors whose model already takes
    every core, where separate decode tasks would only preempt its threads (see `run_pipeline`)."""

    def __init__(self, model: type, model_kwargs: dict, decode: DecodeStage):
        self.model, self.decode = model(**model_kwargs), decode

    def __call__(self, batch: dict) -> dict:
        return self.model(self.decode(batch))


def store_budget(plan: ActorPlan, batch_size: int, write: WriteStage | None) -> int | None:
    """The object store a pipeline may hold, in bytes, when its write stage sends the outputs' bytes on to the
    driver (S3 with a zip): `STORE_PER_ACTOR` per actor, or 4 batches of images where that is more. Else None
    (Ray Data's own limit)."""
    if write is None or write.pass_on is None or not write.send_bytes:
        return None
    return plan.actors * max(STORE_PER_ACTOR, 4 * batch_size * IMAGE_BYTES)


def run_pipeline(rows: list[Row], actor: type, actor_kwargs: dict, plan: ActorPlan, batch_size: int,
                 decode: DecodeStage | ReadStage | None = None, write: WriteStage | None = None, label: str = "",
                 progress: bool = True, decode_in_actor: bool = False) -> Iterator[dict]:
    """Stream `rows` through [decode ->] actor(**actor_kwargs, threads=...) [-> write]; yield result batches
    (numpy columns `row`, `error`, and whatever the actor or the last stage returns).

    `decode_in_actor`: decode inside the model actor instead of in tasks beside it. Measured on 2 CPU cores
    (bench/evaluate_throughput.py): decode tasks running beside a CPU model that uses every core preempt its
    threads, which then wait for each other; decoding in the actor, then computing, is the plain loop's order."""
    import ray
    ensure_ray()
    check_plan(plan, 0.5 if write is not None or (decode is not None and not decode_in_actor) else 0.0)
    records = [{"row": r, "error": ""} for r in rows]
    ds = ray.data.from_items(records, override_num_blocks=max(1, min(len(rows) // batch_size, MAX_BLOCKS)))
    model_kwargs = {**actor_kwargs, "threads": plan.threads}
    if decode is not None and decode_in_actor:
        actor, model_kwargs = DecodeThenModel, {"model": actor, "model_kwargs": model_kwargs, "decode": decode}
    elif decode is not None:
        ds = ds.map_batches(decode, batch_size=batch_size, num_cpus=0.5)
    ds = ds.map_batches(actor, batch_size=batch_size, num_cpus=plan.cpus, num_gpus=plan.gpus,
                        **({"resources": plan.resources} if plan.resources else {}),
                        compute=ray.data.ActorPoolStrategy(size=plan.actors),
                        fn_constructor_kwargs=model_kwargs)
    if write is not None:
        ds = ds.map_batches(write, batch_size=batch_size, num_cpus=0.5)
    budget = store_budget(plan, batch_size, write)
    if budget is not None:
        limits = ds.context.execution_options.resource_limits  # this dataset's copy of the context, not the global
        ds.context.execution_options.resource_limits = limits.copy(
            object_store_memory=min(limits.object_store_memory, budget))
    bar = Progress(len(rows), label, progress)
    batches = ds.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for batch in batches:
            yield batch
            bar.update(len(batch["row"]))
    finally:  # stopped early (Ctrl-C, SIGTERM, a fault): shut Ray Data's executor down before anything else
        close = getattr(batches, "close", None)
        if close is not None:
            close()
