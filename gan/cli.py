"""Command-line pieces shared by the batch jobs (stylize, generate, assemble)."""
from __future__ import annotations

import argparse
from typing import Callable

from gan.batch import BatchOptions, JobResult, summary_line
from gan.ray_runtime import ensure_ray
from gan.storage import open_storage
from gan.submission import MAX_IMAGES, MIN_IMAGES, assemble


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="generator checkpoint: local path or s3://bucket/key")
    p.add_argument("--output", required=True, help="output folder or s3://bucket/prefix for the JPEGs and the report")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=None, help="model actors (default: one per GPU, else 1)")
    p.add_argument("--cpus-per-actor", type=float, default=None)
    p.add_argument("--cpu", action="store_true", help="do not use GPUs even if the cluster has them")
    p.add_argument("--no-progress", action="store_true")
    add_zip_args(p, flag="--zip")


def add_zip_args(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, dest="zip", default=None, required=flag == "--output",
                   help="submission zip to write, e.g. out/images.zip or s3://bucket/images.zip")
    p.add_argument("--min-images", type=int, default=MIN_IMAGES)
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)


def batch_options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(checkpoint=args.checkpoint, output=open_storage(args.output), batch_size=args.batch_size,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                        use_gpu=False if args.cpu else None, progress=not args.no_progress)


def run_batch_job(args: argparse.Namespace, job: Callable[[BatchOptions], JobResult]) -> int:
    """Start or join Ray, run the job, print its summary line, and assemble the zip when --zip is given."""
    opts = batch_options(args)
    ensure_ray()
    print(summary_line(job(opts)))
    if args.zip:
        z = assemble(opts.output, args.zip, args.min_images, args.max_images)
        print(f"zip: {z['images']} images -> {z['zip']}")
    return 0
