"""Batch jobs that write images (stylize, generate): the job's three steps, the generator actor, the report.

A `BatchJob` runs in steps: `resume` (the output folder's manifest decides: the same job continues with what is
missing, a finished one does nothing, another job is refused; `gan.batch.manifest`), `execute` (the missing
outputs through the shared pipeline, `gan.batch.pipeline`), `report`. Exactly once: an output is written atomically
under a name fixed by the manifest. What a job feeds the generator (photos or seeds) is the job's; what the
generator makes of them is its model kind's `infer` (`gan.models.inference`): nothing here knows a kind.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import re
import resource
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from gan.batch.device_jpeg import decode_to_device, encode_on_device
from gan.batch.manifest import (MANIFEST, REPORT, JobMismatchError, check_same_job, clear_outputs, job_manifest,
                                parse_manifest, write_report)
from gan.batch.pipeline import DecodeStage, ReadStage, Row, WriteStage, actor_plan, run_pipeline
from gan.checkpoint import CheckpointError, from_bytes
from gan.io.images import IMAGE_SIZE
from gan.io.sources import Rejected
from gan.io.storage import Storage, StorageError, StorageFullError, StorageUnavailableError, read_uri
from gan.models.inference import Photos, Seeds, to_numpy
from gan.models.registry import get_model, known

OUTPUT_SUFFIX = ".jpg"
# what a job hands the actor's generator for a batch: (batch columns, rows without an error, seed, device)
InputsOf = Callable[[dict, np.ndarray, int, object], Photos | Seeds]


@dataclass
class BatchOptions:
    checkpoint: str
    output: Storage
    batch_size: int = 16
    actors: int | None = None            # default: one per GPU, else one CPU actor
    cpus_per_actor: float | None = None  # default: all CPUs but one, for the read/write tasks
    actor_resources: dict | None = None  # custom Ray resources per actor (pin actors to a node type)
    use_gpu: bool | None = None          # default: when the cluster has GPUs
    channels_last: bool = True
    compile: bool = False                # torch.compile the generator (once per actor, at its start)
    device_jpeg: bool = False            # photo jobs: tasks only read bytes; the actor decodes and encodes the
                                         # JPEGs on its device (nvJPEG on CUDA; see gan.batch.device_jpeg)
    progress: bool = True
    actor_cls: type | None = None        # default GeneratorActor; tests pass a subclass that fails on purpose
    overwrite: bool = False              # replace another job's outputs in `output` instead of refusing
    verify_inputs: bool = False          # digest every local input again, not only those whose file changed


class OutputCollector(Protocol):
    """What a job hands each output it writes, beside the storage: a zip made as the job runs."""

    @staticmethod
    def check(data: bytes, name: str) -> None:
        """Runs in the write tasks, before the output is written: a ValueError makes the output its row's error."""

    def add(self, key: str, data: bytes) -> None:
        """Runs in the driver, once per output written, in the order they come back, with the bytes its write task
        sent on (storage whose reads cost more than that: S3)."""

    def add_written(self, storage: Storage, key: str, crc: int) -> None:
        """As `add`, for storage the driver reads itself (a local folder): the key and the CRC-32 of what its
        write task checked and wrote."""


@dataclass
class JobResult:
    report: dict
    skipped_run: bool = False   # True when a finished job was rerun and did nothing


class GeneratorActor:
    """Loads the generator once and runs its kind's `infer` on what the job hands it for each batch.

    Warmed up in the constructor (CUDA context, kernels, and with `compile` the compiled graph at the batch's
    shape), so that cost is paid while Ray Data reads the first inputs, not on the first batch. A compiled
    generator always sees `batch_size` inputs (a short batch is padded), so it compiles once.
    """

    def __init__(self, checkpoint: str, inputs_of: InputsOf, threads: int | None = None, seed: int = 0,
                 channels_last: bool = True, compile: bool = False, batch_size: int = 1):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ckpt = from_bytes(read_uri(checkpoint), checkpoint)
        self.infer, self.inputs_of, self.seed = get_model(ckpt.kind).infer, inputs_of, seed
        self.net = ckpt.build(self.device)
        import ray
        self.node = ray.get_runtime_context().get_node_id()  # the report counts images per node
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.pad_to = 0
        if compile:
            self.net, self.pad_to = torch.compile(self.net, dynamic=False), batch_size
        if self.pad_to or self.device.type == "cuda":
            self.infer(self.net, self.infer.takes.example(self.device), self.pad_to)

    def _device_jpegs(self, batch: dict) -> dict:
        """Bytes in (`data`, from ReadStage), JPEG bytes out (`jpeg`): decode, infer and encode on the device."""
        errors = list(batch["error"])
        todo = [i for i, e in enumerate(errors) if not e]
        encoded = np.empty(len(errors), dtype=object)
        encoded[:] = b""
        if todo:
            images, failed = decode_to_device([batch["data"][i] for i in todo], [batch["row"][i].name for i in todo],
                                              IMAGE_SIZE, self.device)
            made = self.infer(self.net, Photos(images), self.pad_to)  # (B, 3, H, W) uint8, on the device
            for i, error, jpeg in zip(todo, failed, encode_on_device(made)):
                errors[i], encoded[i] = error, (b"" if error else jpeg)
        return {"row": batch["row"], "jpeg": encoded, "error": np.array(errors, dtype=object),
                "node": np.full(len(errors), self.node, dtype=object)}

    def __call__(self, batch: dict) -> dict:
        if "data" in batch:
            return self._device_jpegs(batch)
        ok = np.array([not e for e in batch["error"]], bool)
        out = np.zeros((len(ok), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        if ok.any():
            out[ok] = to_numpy(self.infer(self.net, self.inputs_of(batch, ok, self.seed, self.device), self.pad_to))
        return {"row": batch["row"], "pixels": out, "error": batch["error"],
                "node": np.full(len(out), self.node, dtype=object)}


class JobInterrupted(KeyboardInterrupt):
    """The job was stopped (Ctrl-C, SIGTERM, `ray job stop`); the message says how far it got."""


def stop_local_ray() -> None:
    """Stop the Ray this process started (its workers die with it, so nothing writes after this returns); a joined
    cluster's workers of this job end when the driver goes."""
    from gan.ray_runtime import shutdown_embedded
    shutdown_embedded()


def storage_fault(error: BaseException) -> StorageUnavailableError | StorageFullError | None:
    """The storage outage or full disk behind an error that Ray raised for a task, if that is what it was."""
    seen, first = set(), error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (StorageUnavailableError, StorageFullError)):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    # Ray Data re-raises a failed task as UserCodeException, whose cause does not survive the trip between
    # processes; the remote traceback in its text still names the fault
    found = _FAULT_LINE.findall(str(first))
    if found:
        name, message = found[-1]
        return (StorageUnavailableError if name == "StorageUnavailableError" else StorageFullError)(message.strip())
    return None


_FAULT_LINE = re.compile(r"\b(StorageUnavailableError|StorageFullError): ([^\n]+)")


def finished_report(storage: Storage, fp: str, plan: list[Row], existing: set[str]) -> dict | None:
    """The earlier report when this exact job already finished and all its outputs exist, else None."""
    if not storage.exists(REPORT):
        return None
    try:
        report = json.loads(storage.read(REPORT))
    except (ValueError, StorageError):
        return None
    if report.get("fingerprint") != fp:
        return None
    rejected = {r["name"] for r in report.get("rejected", [])}
    return report if all(row.out in existing or row.name in rejected for row in plan) else None


@dataclass
class BatchJob:
    """One batch job over an output folder: `resume`, `execute`, `report` (or `run` for all three).

    A job kind (`StylizeJob`, `GenerateJob`) says what it feeds the generator (`takes`, `inputs_of`) and how its
    inputs are read (`decode`); `settings` are what, beside the checkpoint, the image policy and the inputs, decides
    the outputs (seed, count); `extra` is recorded only."""
    name: str
    takes: type                          # Photos or Seeds: the generators this job can run
    inputs_of: InputsOf
    plan: list[Row]
    opts: BatchOptions
    extra: dict
    early_rejects: list[Rejected] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seed: int = 0
    input_storage: Storage | None = None
    todo: list[Row] = field(default_factory=list, init=False)
    fingerprint: str = field(default="", init=False)

    def decode(self) -> DecodeStage | ReadStage | None:
        """The stage that reads each input beside the model (None: the job has no input files)."""
        if self.input_storage is None:
            return None
        return ReadStage(self.input_storage) if self.opts.device_jpeg else DecodeStage(self.input_storage, IMAGE_SIZE)

    def _checkpoint(self) -> tuple[bytes, str]:
        """The checkpoint's bytes and kind, refusing one whose generator does not take what this job gives."""
        data = read_uri(self.opts.checkpoint)
        kind = from_bytes(data, self.opts.checkpoint).kind
        takes = get_model(kind).infer.takes
        if takes is not self.takes:
            fits = ", ".join(k for k, s in known().items() if s.infer.takes is self.takes)
            raise CheckpointError(f"{self.opts.checkpoint}: this is a {kind} generator, which takes {takes.noun}; "
                                  f"{self.name} needs a generator that takes {self.takes.noun} ({fits})")
        return data, kind

    def resume(self) -> JobResult | None:
        """Check the job against its output folder and find what is left to do (`todo`); the earlier result when
        this job already finished. Another job's folder is refused unless `overwrite` clears it."""
        opts, out = self.opts, self.opts.output
        if opts.device_jpeg and importlib.util.find_spec("torchvision") is None:
            raise ValueError("--device-jpeg needs torchvision (a dependency of this project: pip install -e .)")
        self.started = time.time()
        out.remove_stale_temps(before=self.started)  # what a killed run of this job left half-written
        data, kind = self._checkpoint()
        manifest = job_manifest(self.name, kind, data, self.plan, self.settings, self.extra)
        self.fingerprint = manifest.fingerprint
        planned = [row.out for row in self.plan]
        existing = set(out.list())
        # a folder whose manifest is byte for byte this job's is this job: no need to parse it (at 100,000 inputs
        # the parsed manifest is ~80 MB of the driver's memory), nor to hold its bytes (21 MB) beside this job's
        present = MANIFEST in existing  # the listing says so: no request of its own
        same = present and manifest.is_in(out)
        if same:
            old = manifest
        else:  # another job's, or this one's written before (a stat changed, another layout): parsed to compare
            old = parse_manifest(out.read(MANIFEST) if present else None, stats=False)
        if opts.overwrite:
            if clear_outputs(out, old, planned, existing):
                existing, same = set(out.list()), False
        else:
            check_same_job(out, old, manifest, planned, existing)
            done = finished_report(out, self.fingerprint, self.plan, existing)
            if done is not None:
                return JobResult(done, skipped_run=True)
        del old
        if not same:
            manifest.write_to(out)
        del manifest
        self.todo = [row for row in self.plan if row.out not in existing]
        return None

    def execute(self, collect: OutputCollector | None = None) -> None:
        """The missing outputs through the pipeline: what each batch wrote or rejected, and on which node; with
        `collect`, each output's bytes go to it as they come back. Storage that stays away past its retry window,
        or a full disk, stops the job with one line saying how far it got."""
        opts = self.opts
        self.rejected, self.written, self.per_node = list(self.early_rejects), 0, {}
        start = time.monotonic()
        if self.todo:
            results = run_pipeline(
                self.todo, opts.actor_cls or GeneratorActor,
                {"checkpoint": opts.checkpoint, "inputs_of": self.inputs_of, "seed": self.seed,
                 "channels_last": opts.channels_last, "compile": opts.compile, "batch_size": opts.batch_size},
                actor_plan(opts.actors, opts.cpus_per_actor, opts.use_gpu, opts.actor_resources), opts.batch_size,
                decode=self.decode(), write=WriteStage(opts.output, collect.check if collect is not None else None,
                                                       send_bytes=not opts.output.reads_are_local),
                label=self.name, progress=opts.progress)
            try:
                with closing(results):  # however the loop ends, Ray Data's executor and actors end first
                    for batch in results:
                        self._count(batch)
                        if collect is not None:
                            self._collect(collect, batch)
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (jobs.cli makes it one): stop now, leave no half-writes
                stop = (JobInterrupted, "")
            except Exception as e:  # noqa: BLE001 - Ray wraps what a task raised; the storage fault is inside
                fault = storage_fault(e)
                if fault is None:
                    raise
                stop = (type(fault), str(fault))
                del fault
            else:
                stop = None
            if stop is not None:
                # raised here, not in the except block: the interrupt's or Ray's traceback can hold Ray Data's
                # iterator (Ctrl-C landing inside Ray Data, before it hands the iterator back) and the actors. Dropped
                # and collected now, its executor shuts down while Ray is up (at exit, after Ray has gone, it fails
                # with a traceback), and the actors end, so that a rerun in this process does not wait for their CPUs
                gc.collect()
                done = len(self.plan) - len(self.todo) + self.written
                if stop[0] is JobInterrupted:
                    stop_local_ray()
                    opts.output.remove_stale_temps(before=time.time() + 1)
                    raise JobInterrupted(f"{self.name} stopped: {done} of {len(self.plan)} outputs are done (rerun "
                                         "the same command to continue)")
                raise stop[0](f"{self.name} stopped: {stop[1]}; at least {done} of {len(self.plan)} outputs are "
                              "done (rerun the same command to continue)")
        self.seconds = time.monotonic() - start

    def earlier_outputs(self) -> list[str]:
        """After `resume`: the outputs of this job that an earlier run wrote (not to be made again), in name order."""
        todo = {row.out for row in self.todo}
        return sorted(row.out for row in self.plan if row.out not in todo)

    def _collect(self, collect: OutputCollector, batch: dict) -> None:
        sent = batch.get("jpeg")
        for i, (row, error) in enumerate(zip(batch["row"], batch["error"])):
            if error:
                continue
            if sent is not None:
                collect.add(row.out, bytes(sent[i]))
            else:
                collect.add_written(self.opts.output, row.out, int(batch["crc"][i]))

    def _count(self, batch: dict) -> None:
        nodes = batch.get("node", [None] * len(batch["row"]))
        for row, error, node in zip(batch["row"], batch["error"], nodes):
            if error:
                self.rejected.append(Rejected(row.name, str(error)))
            else:
                self.written += 1
                if node:
                    self.per_node[node] = self.per_node.get(node, 0) + 1

    def report(self) -> JobResult:
        """`_report.json`: counts (inputs = outputs + rejected), speed, where the images were made, the rejects."""
        skipped = len(self.plan) - len(self.todo)
        rejected = sorted(self.rejected, key=lambda r: r.name)
        seconds = self.seconds
        report = {
            "job": self.name, "fingerprint": self.fingerprint, **self.extra,
            "counts": {"inputs": len(self.plan) + len(self.early_rejects), "outputs": self.written + skipped,
                       "written": self.written, "skipped_existing": skipped, "rejected": len(rejected)},
            "seconds": round(seconds, 3), "images_per_s": round(self.written / seconds, 3) if seconds > 0 else None,
            "images_per_node": dict(sorted(self.per_node.items())),
            "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rejected": [{"name": r.name, "reason": r.reason} for r in rejected],
        }
        write_report(self.opts.output, report)
        return JobResult(report)

    def run(self) -> JobResult:
        done = self.resume()
        if done is not None:
            return done
        self.execute()
        return self.report()


def summary_line(result: JobResult) -> str:
    r = result.report
    c = r["counts"]
    if result.skipped_run:
        return f"{r['job']}: already complete, nothing to do ({c['outputs']} images, {c['rejected']} rejected)"
    return (f"{r['job']}: {c['outputs']} images ({c['written']} new, {c['skipped_existing']} already done), "
            f"{r['seconds']:.1f} s, {r['images_per_s'] or 0:.1f} images/s, {c['rejected']} rejected")


__all__ = ["MANIFEST", "REPORT", "OUTPUT_SUFFIX", "BatchOptions", "BatchJob", "JobResult", "JobMismatchError",
           "GeneratorActor", "OutputCollector", "summary_line"]
