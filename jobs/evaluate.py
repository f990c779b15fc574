"""Score generated images with MiFID as Kaggle does; writes a JSON report and a contact sheet, prints one line.

python -m jobs.evaluate --generated out/images.zip --real data/monet_jpg [--train data/monet_jpg] [--photos data/photo_jpg]
"""
from __future__ import annotations

import sys

from jobs.cli import location, parser, run_main
from gan.eval.evaluate import EvalOptions, evaluate, summary_line
from gan.eval.features import EXTRACTORS
from gan.batch.submission import MAX_IMAGES, MIN_IMAGES


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--generated", required=True, type=location, help="folder, s3:// prefix, or images.zip")
    p.add_argument("--real", required=True, type=location, help="the real paintings (FID reference)")
    p.add_argument("--train", type=location,
                   help="images the generator trained on, for the memorization penalty (default: --real)")
    p.add_argument("--photos", type=location, help="the source photos, to pair with their stylized versions on the contact sheet")
    p.add_argument("--report", type=location, help="report JSON path (default: beside the generated images)")
    p.add_argument("--features", choices=EXTRACTORS, default="inception",
                   help="'pixels' is a fast stand-in for tests; its number is not Kaggle's MiFID")
    p.add_argument("--inception-weights", type=location, help="FID Inception file (default: the packaged one or torch's cache)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--min-images", type=int, default=MIN_IMAGES, help="for a zip: the submission range")
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    opts = EvalOptions(features=args.features, inception_weights=args.inception_weights, batch_size=args.batch_size,
                       actors=args.actors, progress=not args.no_progress, min_images=args.min_images,
                       max_images=args.max_images)
    report = evaluate(args.generated, args.real, args.train, opts, args.photos, args.report)
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
