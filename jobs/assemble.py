"""Assemble the submission zip from a job's output folder, checking count, size, mode and format.

python -m jobs.assemble --input out/ --output out/images.zip
"""
from __future__ import annotations

import argparse
import sys

from gan.cli import add_zip_args
from gan.storage import open_storage
from gan.submission import SubmissionError, assemble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder or s3://bucket/prefix holding the JPEGs")
    add_zip_args(p, flag="--output")
    args = p.parse_args(argv)
    try:
        z = assemble(open_storage(args.input), args.zip, args.min_images, args.max_images)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"zip: {z['images']} images, {z['bytes']} bytes -> {z['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
