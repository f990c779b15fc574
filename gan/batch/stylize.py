"""Stylize every photo under an input URI with a CycleGAN generator: plan the work, then run it on Ray."""
from __future__ import annotations

from gan.batch.engine import OUTPUT_SUFFIX, BatchOptions, JobResult, run_batch
from gan.batch.pipeline import Row
from gan.io.naming import output_names
from gan.io.sources import Rejected, scan_uri
from gan.io.storage import Storage


def plan_stylize(input_uri: str) -> tuple[list[Row], list[Rejected], Storage]:
    """(rows, early rejects, input storage): one row per input image, its output name fixed up front."""
    items, rejected, storage = scan_uri(input_uri)
    names = output_names([i.name for i in items], OUTPUT_SUFFIX)
    return [Row(i.name, n, names[i.name], i) for n, i in enumerate(items)], rejected, storage


def stylize(input_uri: str, opts: BatchOptions) -> JobResult:
    rows, rejected, storage = plan_stylize(input_uri)
    extra = {"input": input_uri, "output": opts.output.uri, "checkpoint": opts.checkpoint}
    return run_batch("stylize", rows, storage, opts, extra, rejected)
