"""Stylize every photo under an input URI with a generator that takes photos: plan the work, then run it on Ray."""
from __future__ import annotations

import numpy as np

from gan.batch.engine import OUTPUT_SUFFIX, BatchJob, BatchOptions, JobResult
from gan.batch.manifest import known_inputs
from gan.batch.pipeline import Row
from gan.io.naming import output_names
from gan.io.sources import KnownTags, Rejected, scan_uri
from gan.io.storage import Storage
from gan.models.inference import Photos


def plan_stylize(input_uri: str, known: KnownTags | None = None) -> tuple[list[Row], list[Rejected], Storage]:
    """(rows, early rejects, input storage): one row per input image, its output name fixed up front. `known`:
    the inputs an earlier run tagged (gan.io.sources.scan_inputs)."""
    items, rejected, storage = scan_uri(input_uri, known)
    names = output_names([i.name for i in items], OUTPUT_SUFFIX)
    return [Row(i.name, n, names[i.name], i) for n, i in enumerate(items)], rejected, storage


def photos_of(batch: dict, ok: np.ndarray, seed: int, device) -> Photos:
    """The decoded photos of a batch's good rows (the decode stage's `pixels`)."""
    return Photos.from_numpy(batch["pixels"][ok], device)


def stylize_job(input_uri: str, opts: BatchOptions) -> BatchJob:
    # a rerun reads only the inputs changed since (--verify-inputs: all)
    rows, rejected, storage = plan_stylize(input_uri, None if opts.verify_inputs else known_inputs(opts.output))
    extra = {"input": input_uri, "output": opts.output.uri, "checkpoint": opts.checkpoint}
    return BatchJob("stylize", Photos, photos_of, rows, opts, extra, rejected, input_storage=storage)


def stylize(input_uri: str, opts: BatchOptions) -> JobResult:
    return stylize_job(input_uri, opts).run()
