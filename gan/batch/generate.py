"""Draw N images from a DCGAN generator: image i depends only on (seed, i), whatever the sharding."""
from __future__ import annotations

from gan.batch.engine import OUTPUT_SUFFIX, BatchOptions, JobResult, run_batch
from gan.batch.pipeline import Row


def plan_generate(count: int) -> list[Row]:
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    width = max(5, len(str(count - 1)))
    return [Row(f"sample {i}", i, f"{i:0{width}d}{OUTPUT_SUFFIX}") for i in range(count)]


def generate(count: int, seed: int, opts: BatchOptions) -> JobResult:
    extra = {"count": count, "seed": seed, "output": opts.output.uri, "checkpoint": opts.checkpoint}
    return run_batch("generate", plan_generate(count), None, opts, extra, [], {"seed": seed, "count": count},
                     seed=seed)
