"""Generate --count images from noise with a DCGAN generator; image i depends only on (--seed, i).

python -m jobs.generate --checkpoint D.pt --count 7000 --seed 0 --output out/ [--zip out/images.zip]
"""
from __future__ import annotations

import argparse
import sys

from gan.batch import summary_line
from gan.cli import add_batch_args, batch_options
from gan.generate import generate
from gan.ray_runtime import ensure_ray
from gan.submission import assemble


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    add_batch_args(p)
    args = p.parse_args(argv)
    opts = batch_options(args)
    ensure_ray()
    result = generate(args.count, args.seed, opts)
    print(summary_line(result))
    if args.zip:
        z = assemble(opts.output, args.zip, args.min_images, args.max_images)
        print(f"zip: {z['images']} images -> {z['zip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
