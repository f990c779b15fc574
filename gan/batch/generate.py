"""Draw N images from a generator that takes seeds: image i depends only on (seed, i), whatever the sharding."""
from __future__ import annotations

import numpy as np

from gan.batch.engine import OUTPUT_SUFFIX, BatchJob, BatchOptions, JobResult
from gan.batch.pipeline import Row
from gan.models.inference import Seeds


def plan_generate(count: int) -> list[Row]:
    if count < 1:
        raise ValueError(f"--count must be at least 1, got {count}")
    width = max(5, len(str(count - 1)))
    return [Row(f"sample {i}", i, f"{i:0{width}d}{OUTPUT_SUFFIX}") for i in range(count)]


def seeds_of(batch: dict, ok: np.ndarray, seed: int, device) -> Seeds:
    """Image i of the job's seed for each good row i."""
    return Seeds(seed, tuple(row.index for row, good in zip(batch["row"], ok) if good))


def generate_job(count: int, seed: int, opts: BatchOptions) -> BatchJob:
    extra = {"count": count, "seed": seed, "output": opts.output.uri, "checkpoint": opts.checkpoint}
    return BatchJob("generate", Seeds, seeds_of, plan_generate(count), opts, extra,
                    settings={"seed": seed, "count": count}, seed=seed)


def generate(count: int, seed: int, opts: BatchOptions) -> JobResult:
    return generate_job(count, seed, opts).run()
