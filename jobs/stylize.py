"""Stylize every photo under --input (folder, s3:// prefix, or TFRecords) into Monet-style 256x256 JPEGs.

python -m jobs.stylize --checkpoint G.pt --input photos/ --output out/ [--zip out/images.zip]
"""
from __future__ import annotations

import argparse
import sys

from gan.cli import add_batch_args, batch_options
from gan.ray_runtime import ensure_ray
from gan.stylize import stylize
from gan.batch import summary_line
from gan.submission import assemble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="folder, s3://bucket/prefix, or a folder of .tfrec files")
    add_batch_args(p)
    args = p.parse_args(argv)
    opts = batch_options(args)
    ensure_ray()
    result = stylize(args.input, opts)
    print(summary_line(result))
    if args.zip:
        z = assemble(opts.output, args.zip, args.min_images, args.max_images)
        print(f"zip: {z['images']} images -> {z['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
