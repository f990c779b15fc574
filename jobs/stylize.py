"""Stylize every photo under --input (folder, s3:// prefix, TFRecords or a zip) into Monet-style 256x256 JPEGs.

python -m jobs.stylize --checkpoint G.pt --input photos/ --output out/ [--zip out/images.zip]
"""
from __future__ import annotations

import sys

from jobs.cli import add_batch_args, location, parser, run_batch_job, run_main
from gan.batch.stylize import stylize_job


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--input", required=True, type=location, help="folder, s3://bucket/prefix, TFRecord folder, or .zip")
    add_batch_args(p)
    args = p.parse_args(argv)
    return run_batch_job(args, lambda opts: stylize_job(args.input, opts))


if __name__ == "__main__":
    sys.exit(run_main(main))
