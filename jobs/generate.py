"""Generate --count images from noise with a DCGAN generator; image i depends only on (--seed, i).

python -m jobs.generate --checkpoint D.pt --count 7000 --seed 0 --output out/ [--zip out/images.zip]
"""
from __future__ import annotations

import sys

from jobs.cli import add_batch_args, parser, run_batch_job, run_main
from gan.batch.generate import generate_job


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    add_batch_args(p)
    args = p.parse_args(argv)
    return run_batch_job(args, lambda opts: generate_job(args.count, args.seed, opts))


if __name__ == "__main__":
    sys.exit(run_main(main))
