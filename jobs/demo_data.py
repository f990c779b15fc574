"""Make a synthetic data set in the Kaggle layout: python -m jobs.demo_data --out DIR --photos N --paintings M"""
from __future__ import annotations

import sys

from jobs.cli import location, parser, run_main
from gan.train.demo_data import write_demo_data


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--out", required=True, type=location,
                   help="output folder or s3:// prefix (monet_jpg/, photo_jpg/, *_tfrec/ are made in it)")
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--paintings", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = write_demo_data(args.out, args.photos, args.paintings, args.seed)
    print(f"demo data in {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
