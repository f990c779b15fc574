"""The whole flow on one machine or a cluster: data -> train a photo -> Monet generator -> stylize every photo ->
images.zip -> MiFID.

python -m jobs.pipeline --workdir demo                      # synthetic data, small model, a few minutes on a laptop
python -m jobs.pipeline --workdir run --data ../shared/data/gan-getting-started   # real data: --recipe kaggle-cpu
python -m jobs.pipeline --workdir run --data ../shared/data/gan-getting-started --use-gpu   # --recipe kaggle
Relative paths are relative to the current directory. Rerunning continues: training resumes from its last
checkpoint, finished stylization and zip are not redone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gan.batch.engine import BatchOptions, summary_line
from gan.batch.stylize import stylize
from gan.batch.submission import MAX_IMAGES, MIN_IMAGES, zip_of_job
from gan.eval.evaluate import EvalOptions, evaluate
from gan.eval.evaluate import summary_line as eval_line
from gan.eval.features import MissingWeightsError, find_inception
from gan.io.storage import open_storage, write_uri
from gan.train.demo_data import write_demo_data
from gan.train.driver import run_training
from gan.train.recipes import RECIPES
from gan.train.run_checkpoint import BEST_FILE, GENERATOR_FILE
from gan.train.settings import TrainSettings
from jobs.cli import location, parser, run_main

STAGES = 5
# Synthetic demo data: a model that trains in a minute or two. Real data (--data) starts from a measured recipe.
DEMO = {"model": "cut", "epochs": 3, "image_size": 64, "ngf": 16, "n_blocks": 2, "batch_size": 4}
OVERRIDES = ("epochs", "image_size", "ngf", "n_blocks", "batch_size", "eval_photos")


def train_settings(args: argparse.Namespace, photos: str, paintings: str) -> TrainSettings:
    """The training settings: the recipe (with --data: kaggle with --use-gpu, else kaggle-cpu) or the demo sizes,
    then the flags given."""
    real = "kaggle" if args.use_gpu else "kaggle-cpu"
    recipe = args.recipe if args.recipe is not None else (real if args.data else "none")
    chosen = dict(RECIPES[recipe]) if recipe != "none" else {**DEMO, "eval_photos": 1000 if args.data else 0}
    chosen.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    chosen.setdefault("ndf", max(8, chosen["ngf"]))
    chosen["use_gpu"] = args.use_gpu or chosen.get("use_gpu", False)
    return TrainSettings.from_flat(chosen, photos=photos, paintings=paintings, num_workers=args.num_workers,
                                   eval_features=args.features or "auto")


class Stage:
    """Prints `pipeline: [k/5] what -> where` when a stage starts and its time when it ends."""

    def __init__(self, index: int, what: str, where: str):
        self.index, self.what, self.where = index, what, where

    def __enter__(self) -> "Stage":
        self.start = time.monotonic()
        print(f"pipeline: [{self.index}/{STAGES}] {self.what} -> {self.where}", flush=True)
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            print(f"pipeline: [{self.index}/{STAGES}] done in {time.monotonic() - self.start:.1f} s", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--workdir", default="demo", type=location,
                   help="local folder or s3://bucket/prefix for everything written")
    p.add_argument("--data", type=location, help="Kaggle-layout root (photo_jpg/, monet_jpg/); default: make demo data")
    p.add_argument("--photos", type=int, default=300, help="demo data: number of photos")
    p.add_argument("--paintings", type=int, default=60, help="demo data: number of paintings")
    p.add_argument("--recipe", choices=[*sorted(RECIPES), "none"], default=None,
                   help="training settings to start from (default with --data: kaggle with --use-gpu, else "
                        "kaggle-cpu; the demo sizes without --data)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="training crop size (the generator is convolutional)")
    p.add_argument("--ngf", type=int, default=None)
    p.add_argument("--n-blocks", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--eval-photos", type=int, default=None,
                   help="score the generator during training on this many photos (default: the recipe's; "
                        "1000 with --data and no recipe; off for demo data)")
    p.add_argument("--features", choices=["inception", "pixels"], default=None,
                   help="MiFID features (default: Inception when installed, else the labelled pixel stand-in)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = args.workdir.rstrip("/")
    started = time.monotonic()

    data = args.data or f"{work}/data"
    with Stage(1, "demo data" if not args.data else "data", data):
        if args.data:
            print(f"pipeline: using {args.data}")
        elif open_storage(f"{data}/photo_jpg").list():
            print("pipeline: already there")
        else:
            counts = write_demo_data(data, args.photos, args.paintings)
            print(f"pipeline: {counts['photo_jpg']} synthetic photos, {counts['monet_jpg']} synthetic paintings")
    photos, paintings = f"{data}/photo_jpg", f"{data}/monet_jpg"

    settings = train_settings(args, photos, paintings)
    checkpoint = f"{work}/generator.pt"
    with Stage(2, f"train {settings.model}, {settings.epochs} epochs", f"{work}/runs/pipeline, {checkpoint}"):
        result = run_training(settings, "pipeline", f"{work}/runs")
        with result.checkpoint.as_directory() as d:
            best = Path(d) / BEST_FILE  # the best-scoring epoch's generator when training scored itself
            write_uri(checkpoint, (best if best.exists() else Path(d) / GENERATOR_FILE).read_bytes())

    out = open_storage(f"{work}/images")
    with Stage(3, "stylize every photo", out.uri):
        styled = stylize(photos, BatchOptions(checkpoint=checkpoint, output=out, use_gpu=args.use_gpu or None))
        print(summary_line(styled))
    n = styled.report["counts"]["outputs"]

    zip_uri = f"{work}/images.zip"
    lo, hi = (MIN_IMAGES, MAX_IMAGES) if n >= MIN_IMAGES else (1, MAX_IMAGES)
    with Stage(4, "submission zip", zip_uri):
        if lo == 1:
            print(f"pipeline: {n} images is below Kaggle's {MIN_IMAGES}: zip made for inspection, not for submission")
        z, now = zip_of_job(out, styled, zip_uri, lo, hi)
        print(f"pipeline: {z['images']} images" if now else "pipeline: already there")

    features = args.features
    if features is None:
        try:
            find_inception()
            features = "inception"
        except MissingWeightsError:
            features = "pixels"
            print("pipeline: FID Inception not installed, scoring with the pixel stand-in (see README)")
    with Stage(5, f"MiFID ({features} features) against the paintings", f"{zip_uri}.evaluation.json"):
        report = evaluate(zip_uri, paintings, None, EvalOptions(features=features, min_images=lo, max_images=hi),
                          photos=photos)
        print(eval_line(report))
        print(f"pipeline: contact sheet {report['contact_sheet']}")
    print(f"pipeline: finished in {time.monotonic() - started:.1f} s; submission {zip_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
