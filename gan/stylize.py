"""Stylize every photo under an input URI with a CycleGAN generator: plan the work, then run it on Ray."""
from __future__ import annotations

from gan.batch import OUTPUT_SUFFIX, BatchOptions, JobResult, plan_row, run_batch
from gan.naming import output_names
from gan.sources import scan_uri


def plan_stylize(input_uri: str) -> tuple[list[dict], list, object]:
    """(rows, early rejects, input storage): one row per input image, its output name fixed up front."""
    items, rejected, storage = scan_uri(input_uri)
    names = output_names([i.name for i in items], OUTPUT_SUFFIX)
    rows = [plan_row(i.name, names[i.name], n, i) for n, i in enumerate(items)]
    return rows, rejected, storage


def stylize(input_uri: str, opts: BatchOptions) -> JobResult:
    rows, rejected, storage = plan_stylize(input_uri)
    extra = {"input": input_uri, "output": opts.output.uri, "checkpoint": opts.checkpoint}
    return run_batch("stylize", rows, storage, opts, extra, rejected)
