"""Command-line pieces shared by the jobs: locations, --verbose, one-line errors and exit codes, batch flags."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from gan.batch.engine import BatchJob, BatchOptions, summary_line
from gan.ray_runtime import is_verbose, set_verbose
from gan.io.storage import (StorageError, StorageFullError, StorageUnavailableError, open_storage, resolve_uri,
                            set_retry_window)
from gan.batch.submission import MAX_IMAGES, MIN_IMAGES, SubmissionError, run_zipped

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def location(value: str) -> str:
    """argparse type for every file or folder flag: resolved once, here in the driver (`resolve_uri`)."""
    try:
        return resolve_uri(value)
    except StorageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def boolean(value: str) -> bool:
    """argparse type for on/off settings: true/false, yes/no, on/off, 1/0."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def resources(value: str) -> dict:
    """argparse type for custom Ray resources: a JSON object of name -> amount, e.g. '{"trainer": 1}'."""
    import json
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and v >= 0
                                               for k, v in parsed.items()):
        raise argparse.ArgumentTypeError(f"expected a JSON object of resource name -> amount, got {value!r}")
    return parsed


class _RetryWindow(argparse.Action):
    """--storage-retry: applied as it is parsed, before any storage is opened (the storages carry it to workers)."""

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            set_retry_window(value)
        except ValueError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, value)


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own logs and workers' output, and tracebacks with errors")
    p.add_argument("--storage-retry", type=float, metavar="SECONDS", action=_RetryWindow,
                   help="how long an S3 request keeps retrying an outage, throttling or a 5xx before the job stops "
                        "(default 60; $GAN_STORAGE_RETRY_S)")
    return p


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a job's main: errors become one line on stderr (traceback only with --verbose).

    Exit 2 for what a retry cannot fix (bad data, settings, a missing file, a wrong checkpoint), 1 otherwise.
    """
    args = sys.argv[1:] if argv is None else argv
    set_verbose("--verbose" in args)
    _sigterm_as_interrupt()
    try:
        return main(args)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the job stopped what it was doing and says how far it got
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns any error into a line and an exit code
        if is_verbose():
            traceback.print_exc()
        if isinstance(e, (StorageUnavailableError, StorageFullError)):  # fixed outside the job: a rerun continues
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
        bad_input = isinstance(e, (ValueError, StorageError, FileNotFoundError))
        hint = "" if is_verbose() else " (--verbose shows the traceback)"
        print(f"error: {e}" + ("" if bad_input else f" [{type(e).__name__}]{hint}"), file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILED


def _sigterm_as_interrupt() -> None:
    """SIGTERM (`kill`, `ray job stop`, a cluster scaling down) stops a job the way Ctrl-C does: it cleans up and
    says how far it got, instead of dying mid-write. Only in the main thread (where signals can be handled)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=location, help="generator checkpoint: local path or s3://bucket/key")
    p.add_argument("--output", required=True, type=location,
                   help="output folder or s3://bucket/prefix for the JPEGs and the report")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, default=None, help="model actors (default: one per GPU, else 1)")
    p.add_argument("--cpus-per-actor", type=float, default=None)
    p.add_argument("--actor-resources", type=resources, default=None,
                   help='custom Ray resources each model actor needs, e.g. \'{"stylizer": 1}\' to pin a node type')
    p.add_argument("--cpu", action="store_true", help="do not use GPUs even if the cluster has them")
    p.add_argument("--compile", action="store_true",
                   help="stylize: torch.compile the generator in each actor (a one-off compile, then faster batches)")
    p.add_argument("--device-jpeg", action="store_true",
                   help="stylize: read only bytes beside the model; decode and encode the JPEGs on its device "
                        "(nvJPEG on a GPU; other images through Pillow as usual)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="--output holds another job's outputs: delete them and run this job (default: refuse)")
    p.add_argument("--verify-inputs", action="store_true",
                   help="stylize, local inputs: digest every file again (default: only files whose size, mtime or "
                        "inode changed since the job's last run)")
    add_zip_args(p, flag="--zip")


def add_zip_args(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, dest="zip", default=None, required=flag == "--output", type=location,
                   help="submission zip to write, e.g. out/images.zip or s3://bucket/images.zip")
    p.add_argument("--min-images", type=int, default=MIN_IMAGES)
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)


def batch_options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(checkpoint=args.checkpoint, output=open_storage(args.output), batch_size=args.batch_size,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor, actor_resources=args.actor_resources,
                        use_gpu=False if args.cpu else None, progress=not args.no_progress,
                        compile=args.compile, device_jpeg=args.device_jpeg, overwrite=args.overwrite,
                        verify_inputs=args.verify_inputs)


def run_batch_job(args: argparse.Namespace, plan: Callable[[BatchOptions], BatchJob]) -> int:
    """Plan the job, run it (it starts or joins Ray once its inputs are checked) and print its summary line; with
    --zip, make the zip as it runs (a finished job's rerun leaves the zip it made, when untouched since).
    A plan with fewer outputs than the zip's minimum fails before the run: the zip after it could only fail."""
    opts = batch_options(args)
    job = plan(opts)
    if not args.zip:
        result = job.run()
        del job
        print(summary_line(result))
        return 0
    if len(job.plan) < args.min_images:
        raise SubmissionError(f"{job.name}: {len(job.plan)} outputs planned, fewer than the {args.min_images} images "
                              "the zip needs (--min-images); nothing was run (lower --min-images, or drop --zip)")
    result, z, now = run_zipped(job, args.zip, args.min_images, args.max_images)
    del job
    print(summary_line(result))
    print(f"zip: {z['images']} images -> {z['zip']}" if now else
          f"zip: already made of these outputs, untouched since ({z['images']} images) -> {z['zip']}")
    return 0
