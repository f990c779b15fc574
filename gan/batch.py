"""Batch inference across Ray actors: read -> decode (tasks) -> generator (actor pool) -> encode + write (tasks).

Ray Data streams the three stages, so decoding and JPEG encoding run beside the model, and its actor
pool replaces a dying actor and retries its batch. Each stage catches per-image errors and passes them
on as an `error` column: a broken image becomes a line in the report, never a failed block.
Exactly once: an output is written atomically under a name fixed by the manifest, and a rerun
schedules only the names that do not exist yet.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from gan.checkpoint import from_bytes
from gan.images import BadImageError, decode_image, encode_jpeg
from gan.inference import SUBMISSION_SIZE, sample_pixels, stylize_pixels
from gan.sources import InputItem, Rejected, read_input
from gan.ray_runtime import ensure_ray
from gan.storage import Storage, StorageError, read_uri

REPORT = "_report.json"
MANIFEST = "_manifest.json"
OUTPUT_SUFFIX = ".jpg"
CRASH_ONCE_ENV = "GAN_FAULT_CRASH_ONCE"  # test hook: path of a marker; the first actor batch exits the process


@dataclass
class BatchOptions:
    checkpoint: str
    output: Storage
    batch_size: int = 16
    actors: int | None = None            # default: one per GPU, else one CPU actor
    cpus_per_actor: float | None = None  # default: all CPUs but one, for the read/write tasks
    use_gpu: bool | None = None          # default: when the cluster has GPUs
    channels_last: bool = True
    progress: bool = True


@dataclass
class JobResult:
    report: dict
    skipped_run: bool = False   # True when a finished job was rerun and did nothing


def plan_row(name: str, out: str, index: int, item: InputItem | None = None) -> dict:
    """One row of a batch plan: where to read (for inputs), where to write, the image's index, no error yet."""
    return {"name": name, "out": out, "index": index, "key": item.key if item else "",
            "offset": item.offset if item else 0, "length": item.length if item else -1,
            "container": item.container if item else "", "error": ""}


# --- stages (run in Ray tasks and actors) ---------------------------------------------------------

class DecodeStage:
    """Input bytes -> (256, 256, 3) uint8 pixels, or an error for that row."""

    def __init__(self, storage: Storage, size: int, check=None):
        self.storage, self.size, self.check = storage, size, check  # check(data, name) raises ValueError

    def __call__(self, batch: dict) -> dict:
        n = len(batch["name"])
        pixels = np.zeros((n, self.size, self.size, 3), np.uint8)
        errors = list(batch["error"])
        for i in range(n):
            if errors[i]:
                continue
            item = InputItem(batch["name"][i], batch["key"][i], int(batch["offset"][i]), int(batch["length"][i]),
                             str(batch["container"][i]))
            try:
                data = read_input(self.storage, item)
                if self.check is not None:
                    self.check(data, item.name)
                pixels[i] = decode_image(data, item.name, self.size)
            except (BadImageError, StorageError, ValueError) as e:
                errors[i] = str(e)
        return {"name": batch["name"], "out": batch["out"], "index": batch["index"], "pixels": pixels,
                "error": np.array(errors, dtype=object)}


class GeneratorActor:
    """Loads the generator once; stylizes pixels (CycleGAN) or draws images from noise (DCGAN)."""

    def __init__(self, checkpoint: str, threads: int | None = None, seed: int = 0, channels_last: bool = True,
                 crash_once_marker: str | None = None):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt = from_bytes(read_uri(checkpoint), checkpoint)
        self.net = self.ckpt.build(self.device)
        self.channels_last = channels_last and self.ckpt.kind == "cyclegan"
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.seed, self.crash_once_marker = seed, crash_once_marker

    def _maybe_crash(self) -> None:
        marker = self.crash_once_marker
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # simulate a lost actor / node: Ray Data must replace it and retry the batch

    def __call__(self, batch: dict) -> dict:
        self._maybe_crash()
        if self.ckpt.kind == "cyclegan":
            ok = np.array([not e for e in batch["error"]], bool)
            out = batch["pixels"].copy()
            if ok.any():
                out[ok] = stylize_pixels(self.net, batch["pixels"][ok], self.device, self.channels_last)
        else:
            out = sample_pixels(self.net, self.seed, batch["index"], self.ckpt.config["nz"], self.device)
        return {"name": batch["name"], "out": batch["out"], "pixels": out, "error": batch["error"]}


class WriteStage:
    """JPEG-encode and write each good row atomically; return only names and errors (small rows)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def __call__(self, batch: dict) -> dict:
        errors = list(batch["error"])
        for i, out in enumerate(batch["out"]):
            if errors[i]:
                continue
            try:
                self.storage.write(out, encode_jpeg(batch["pixels"][i]))
            except StorageError as e:
                raise RuntimeError(f"writing {out}: {e}") from e  # storage failure: let Ray retry the block
        return {"name": batch["name"], "out": batch["out"], "error": np.array(errors, dtype=object)}


# --- driver ---------------------------------------------------------------------------------------

def fingerprint(kind: str, checkpoint_bytes: bytes, plan: list[dict], extra: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, **extra}, sort_keys=True).encode())
    h.update(hashlib.sha256(checkpoint_bytes).digest())
    for row in plan:
        h.update(f"{row['name']}\0{row['out']}\n".encode())
    return h.hexdigest()


def finished_report(storage: Storage, fp: str, plan: list[dict]) -> dict | None:
    """The earlier report when this exact job already finished and all its outputs exist, else None."""
    if not storage.exists(REPORT):
        return None
    try:
        report = json.loads(storage.read(REPORT))
    except (ValueError, StorageError):
        return None
    if report.get("fingerprint") != fp:
        return None
    existing = set(storage.list())
    rejected = {r["name"] for r in report.get("rejected", [])}
    return report if all(row["out"] in existing or row["name"] in rejected for row in plan) else None


def cluster_plan(opts: BatchOptions) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for the running cluster."""
    import ray
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    use_gpu = opts.use_gpu if opts.use_gpu is not None else gpus > 0
    if use_gpu:
        return opts.actors or max(1, gpus), opts.cpus_per_actor or 1.0, 1.0
    actors = opts.actors or 1
    per = opts.cpus_per_actor or max(1.0, (cpus - 1) / actors)
    return actors, per, 0.0


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
            frac = self.done / self.total
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            print(f"\r{self.label} [{bar:<30}] {self.done}/{self.total} {rate:.1f} img/s eta {eta:.0f}s",
                  end="\n" if self.done >= self.total else "", file=sys.stderr, flush=True)


def run_batch(job: str, plan: list[dict], input_storage: Storage | None, opts: BatchOptions,
              extra: dict, early_rejects: list[Rejected], seed: int = 0) -> JobResult:
    """Run `plan` (rows: name, out, key, offset, length, index, error) and write the report.

    Rows whose output exists are skipped; a finished job (same fingerprint, all outputs there) does nothing.
    """
    import ray
    out = opts.output
    ckpt_bytes = read_uri(opts.checkpoint)
    kind = from_bytes(ckpt_bytes, opts.checkpoint, expect_kind="cyclegan" if job == "stylize" else "dcgan").kind
    fp = fingerprint(kind, ckpt_bytes, plan, extra)
    done_report = finished_report(out, fp, plan)
    if done_report is not None:
        return JobResult(done_report, skipped_run=True)

    manifest = json.dumps({"job": job, "fingerprint": fp, **extra,
                           "outputs": {row["out"]: row["name"] for row in plan}}, indent=1, sort_keys=True).encode()
    if not out.exists(MANIFEST) or out.read(MANIFEST) != manifest:
        out.write(MANIFEST, manifest)
    existing = set(out.list())
    todo = [row for row in plan if row["out"] not in existing]
    skipped = len(plan) - len(todo)
    rejected = list(early_rejects)

    start = time.monotonic()
    written = 0
    if todo:
        ensure_ray()
        actors, cpus, gpus = cluster_plan(opts)
        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // opts.batch_size, 200)))
        if job == "stylize":
            ds = ds.map_batches(DecodeStage(input_storage, SUBMISSION_SIZE), batch_size=opts.batch_size, num_cpus=0.5)
        ds = ds.map_batches(
            GeneratorActor, batch_size=opts.batch_size, num_cpus=cpus, num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"checkpoint": opts.checkpoint, "threads": None if gpus else max(1, int(cpus)),
                                   "seed": seed, "channels_last": opts.channels_last,
                                   "crash_once_marker": os.environ.get(CRASH_ONCE_ENV)})
        ds = ds.map_batches(WriteStage(out), batch_size=opts.batch_size, num_cpus=0.5)
        progress = Progress(len(todo), job, opts.progress)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for name, error in zip(batch["name"], batch["error"]):
                if error:
                    rejected.append(Rejected(str(name), str(error)))
                else:
                    written += 1
            progress.update(len(batch["name"]))
    seconds = time.monotonic() - start
    rejected.sort(key=lambda r: r.name)
    report = {
        "job": job, "fingerprint": fp, **extra,
        "counts": {"inputs": len(plan) + len(early_rejects), "outputs": written + skipped, "written": written,
                   "skipped_existing": skipped, "rejected": len(rejected)},
        "seconds": round(seconds, 3), "images_per_s": round(written / seconds, 3) if seconds > 0 else None,
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rejected": [{"name": r.name, "reason": r.reason} for r in rejected],
    }
    out.write(REPORT, json.dumps(report, indent=1).encode())
    return JobResult(report)


def summary_line(result: JobResult) -> str:
    r = result.report
    c = r["counts"]
    if result.skipped_run:
        return f"{r['job']}: already complete, nothing to do ({c['outputs']} images, {c['rejected']} rejected)"
    return (f"{r['job']}: {c['outputs']} images ({c['written']} new, {c['skipped_existing']} already done), "
            f"{r['seconds']:.1f} s, {r['images_per_s'] or 0:.1f} images/s, {c['rejected']} rejected")
