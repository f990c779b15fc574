"""Assemble the submission zip from a job's output folder, checking count, size, mode and format.

python -m jobs.assemble --input out/ --output out/images.zip
"""
from __future__ import annotations

import sys

from jobs.cli import add_zip_args, location, parser, run_main
from gan.io.storage import open_storage
from gan.batch.submission import assemble


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--input", required=True, type=location, help="folder or s3://bucket/prefix holding the JPEGs")
    add_zip_args(p, flag="--output")
    args = p.parse_args(argv)
    z = assemble(open_storage(args.input), args.zip, args.min_images, args.max_images)
    print(f"zip: {z['images']} images, {z['bytes']} bytes -> {z['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
