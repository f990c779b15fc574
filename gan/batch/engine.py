"""Batch jobs that write images (stylize, generate): the plan, the generator actor, the manifest and the report.

The work runs on the shared pipeline (`gan.batch.pipeline`). Exactly once: an output is written atomically
under a name fixed by the manifest, a rerun of the same job schedules only the names that do not exist yet,
and a different job is refused (`gan.batch.manifest`).
"""
from __future__ import annotations

import importlib.util
import json
import resource
import time
from dataclasses import dataclass

import numpy as np

from gan.batch.device_jpeg import decode_to_device, encode_on_device
from gan.batch.inference import sample_pixels, stylize_on_device, stylize_pixels
from gan.batch.manifest import (MANIFEST, REPORT, JobMismatchError, check_same_job, clear_outputs, job_manifest,
                                read_manifest)
from gan.batch.pipeline import DecodeStage, ReadStage, Row, WriteStage, actor_plan, run_pipeline
from gan.checkpoint import from_bytes
from gan.io.images import IMAGE_SIZE
from gan.io.sources import Rejected
from gan.io.storage import Storage, StorageError, read_uri
from gan.models.registry import kind_for

OUTPUT_SUFFIX = ".jpg"


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
    compile: bool = False                # stylize: torch.compile the generator (once per actor, at its start)
    device_jpeg: bool = False            # stylize: tasks only read bytes; the actor decodes and encodes the JPEGs
                                         # on its device (nvJPEG on CUDA; see gan.batch.device_jpeg)
    progress: bool = True
    actor_cls: type | None = None        # default GeneratorActor; tests pass a subclass that fails on purpose
    overwrite: bool = False              # replace another job's outputs in `output` instead of refusing


@dataclass
class JobResult:
    report: dict
    skipped_run: bool = False   # True when a finished job was rerun and did nothing


class GeneratorActor:
    """Loads the generator once; stylizes `pixels` (stylize) or draws images for each row's index (generate).

    Warmed up in the constructor (CUDA context, kernels, and with `compile` the compiled graph at the batch's
    shape), so that cost is paid while Ray Data reads the first inputs, not on the first batch. A compiled
    generator always sees `batch_size` images (a short batch is padded), so it compiles once.
    """

    def __init__(self, checkpoint: str, job: str, threads: int | None = None, seed: int = 0,
                 channels_last: bool = True, compile: bool = False, batch_size: int = 1):
        import torch
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt = from_bytes(read_uri(checkpoint), checkpoint)
        self.net = self.ckpt.build(self.device)
        self.job, self.seed = job, seed
        import ray
        self.node = ray.get_runtime_context().get_node_id()  # the report counts images per node
        if channels_last and job == "stylize":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.pad_to = 0
        if compile and job == "stylize":
            self.net, self.pad_to = torch.compile(self.net, dynamic=False), batch_size
        if self.pad_to or self.device.type == "cuda":
            if job == "stylize":
                self._stylize(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
            else:
                self._sample([0])

    def _stylize(self, pixels: np.ndarray) -> np.ndarray:
        return stylize_pixels(self.net, pixels, self.device, self.pad_to)

    def _sample(self, indices: list[int]) -> np.ndarray:
        return sample_pixels(self.net, self.seed, indices, self.ckpt.config["nz"], self.device)

    def _stylize_jpegs(self, batch: dict) -> dict:
        """Bytes in (`data`, from ReadStage), JPEG bytes out (`jpeg`): decode, stylize and encode on the device."""
        errors = list(batch["error"])
        todo = [i for i, e in enumerate(errors) if not e]
        encoded = np.empty(len(errors), dtype=object)
        encoded[:] = b""
        if todo:
            images, failed = decode_to_device([batch["data"][i] for i in todo], [batch["row"][i].name for i in todo],
                                              IMAGE_SIZE, self.device)
            styled = stylize_on_device(self.net, images, self.pad_to)  # (B, 3, H, W) uint8, on the device
            for i, error, jpeg in zip(todo, failed, encode_on_device(styled)):
                errors[i], encoded[i] = error, (b"" if error else jpeg)
        return {"row": batch["row"], "jpeg": encoded, "error": np.array(errors, dtype=object),
                "node": np.full(len(errors), self.node, dtype=object)}

    def __call__(self, batch: dict) -> dict:
        if "data" in batch:
            return self._stylize_jpegs(batch)
        if self.job == "stylize":
            ok = np.array([not e for e in batch["error"]], bool)
            out = batch["pixels"].copy()
            if ok.any():
                out[ok] = self._stylize(batch["pixels"][ok])
        else:
            out = self._sample([row.index for row in batch["row"]])
        return {"row": batch["row"], "pixels": out, "error": batch["error"],
                "node": np.full(len(out), self.node, dtype=object)}


# --- driver ---------------------------------------------------------------------------------------

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


def run_batch(job: str, plan: list[Row], input_storage: Storage | None, opts: BatchOptions, extra: dict,
              early_rejects: list[Rejected], settings: dict | None = None, seed: int = 0) -> JobResult:
    """Run `plan` under the output folder's manifest contract (gan.batch.manifest) and write the report.

    `settings` are what, beside the checkpoint, the image policy and the inputs, decides the outputs (seed,
    count); `extra` is recorded only. The same job resumes (outputs that exist are skipped; a finished job
    does nothing); another job is refused unless `opts.overwrite`, which clears the old job's outputs first.
    """
    if opts.device_jpeg and importlib.util.find_spec("torchvision") is None:
        raise ValueError("--device-jpeg needs torchvision (a dependency of this project: pip install -e .)")
    started = time.time()
    out = opts.output
    out.remove_stale_temps(before=started)  # what a killed run of this job left half-written
    ckpt_bytes = read_uri(opts.checkpoint)
    kind = from_bytes(ckpt_bytes, opts.checkpoint, expect_kind=kind_for(job)).kind
    manifest = job_manifest(job, kind, ckpt_bytes, plan, settings or {}, extra)
    fp = manifest["fingerprint"]
    planned = [row.out for row in plan]
    existing = set(out.list())
    old = read_manifest(out)
    if opts.overwrite:
        if clear_outputs(out, old, planned, existing):
            existing = set(out.list())
    else:
        check_same_job(out, old, manifest, planned, existing)
        done_report = finished_report(out, fp, plan, existing)
        if done_report is not None:
            return JobResult(done_report, skipped_run=True)
    encoded = json.dumps(manifest, indent=1, sort_keys=True).encode()
    if not out.exists(MANIFEST) or out.read(MANIFEST) != encoded:
        out.write(MANIFEST, encoded)
    todo = [row for row in plan if row.out not in existing]
    skipped = len(plan) - len(todo)
    rejected = list(early_rejects)

    start = time.monotonic()
    written = 0
    per_node: dict[str, int] = {}   # images written by this run, by the node of the actor that made them
    if todo:
        results = run_pipeline(
            todo, opts.actor_cls or GeneratorActor,
            {"checkpoint": opts.checkpoint, "job": job, "seed": seed, "channels_last": opts.channels_last,
             "compile": opts.compile, "batch_size": opts.batch_size},
            actor_plan(opts.actors, opts.cpus_per_actor, opts.use_gpu, opts.actor_resources), opts.batch_size,
            decode=(None if job != "stylize" else ReadStage(input_storage) if opts.device_jpeg
                    else DecodeStage(input_storage, IMAGE_SIZE)),
            write=WriteStage(out), label=job, progress=opts.progress)
        for batch in results:
            nodes = batch.get("node", [None] * len(batch["row"]))
            for row, error, node in zip(batch["row"], batch["error"], nodes):
                if error:
                    rejected.append(Rejected(row.name, str(error)))
                else:
                    written += 1
                    if node:
                        per_node[node] = per_node.get(node, 0) + 1
    seconds = time.monotonic() - start
    rejected.sort(key=lambda r: r.name)
    report = {
        "job": job, "fingerprint": fp, **extra,
        "counts": {"inputs": len(plan) + len(early_rejects), "outputs": written + skipped, "written": written,
                   "skipped_existing": skipped, "rejected": len(rejected)},
        "seconds": round(seconds, 3), "images_per_s": round(written / seconds, 3) if seconds > 0 else None,
        "images_per_node": dict(sorted(per_node.items())),
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


__all__ = ["MANIFEST", "REPORT", "OUTPUT_SUFFIX", "BatchOptions", "JobResult", "JobMismatchError", "GeneratorActor",
           "run_batch", "summary_line"]
