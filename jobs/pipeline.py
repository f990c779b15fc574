"""The whole flow on one machine or a cluster: data -> train CycleGAN -> stylize every photo -> images.zip -> MiFID.

python -m jobs.pipeline --workdir demo                      # synthetic data, small model, a few minutes on a laptop
python -m jobs.pipeline --workdir run --data ../shared/data/gan-getting-started --epochs 30 --ngf 64 --n-blocks 9
Rerunning continues: training resumes from its last checkpoint, finished stylization and zip are not redone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gan.batch import BatchOptions, summary_line
from gan.demo_data import write_demo_data
from gan.evaluate import EvalOptions, evaluate
from gan.evaluate import summary_line as eval_line
from gan.features import MissingWeightsError, find_inception
from gan.ray_runtime import ensure_ray
from gan.storage import open_storage, write_uri
from gan.stylize import stylize
from gan.submission import MAX_IMAGES, MIN_IMAGES, assemble
from gan.train import GENERATOR_FILE, TrainSettings, make_trainer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo", help="local folder or s3://bucket/prefix for everything written")
    p.add_argument("--data", help="Kaggle-layout root (photo_jpg/, monet_jpg/); default: make demo data")
    p.add_argument("--photos", type=int, default=300, help="demo data: number of photos")
    p.add_argument("--paintings", type=int, default=60, help="demo data: number of paintings")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64, help="training crop size (the generator is convolutional)")
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--n-blocks", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--features", choices=["inception", "pixels"], default=None,
                   help="MiFID features (default: Inception when installed, else the labelled pixel stand-in)")
    args = p.parse_args(argv)
    work = args.workdir.rstrip("/")

    if args.data:
        data = args.data
    else:
        data = f"{work}/data"
        if not Path(data, "photo_jpg").exists():
            write_demo_data(data, args.photos, args.paintings)
            print(f"pipeline: demo data in {data}")
    photos, paintings = f"{data}/photo_jpg", f"{data}/monet_jpg"

    settings = TrainSettings(model="cyclegan", photos=photos, paintings=paintings, epochs=args.epochs,
                             batch_size=args.batch_size, num_workers=args.num_workers, use_gpu=args.use_gpu,
                             model_config={"image_size": args.image_size, "ngf": args.ngf, "n_blocks": args.n_blocks,
                                           "ndf": max(8, args.ngf)})
    trainer = make_trainer(settings, "pipeline", f"{work}/runs")
    ensure_ray()
    result = trainer.fit()
    checkpoint = f"{work}/generator.pt"
    with result.checkpoint.as_directory() as d:
        write_uri(checkpoint, (Path(d) / GENERATOR_FILE).read_bytes())
    print(f"pipeline: trained {args.epochs} epochs; generator at {checkpoint}")

    out = open_storage(f"{work}/images")
    styled = stylize(photos, BatchOptions(checkpoint=checkpoint, output=out, use_gpu=args.use_gpu or None))
    print(summary_line(styled))
    n = styled.report["counts"]["outputs"]
    zip_uri = f"{work}/images.zip"
    lo, hi = (MIN_IMAGES, MAX_IMAGES) if n >= MIN_IMAGES else (1, MAX_IMAGES)
    if lo == 1:
        print(f"pipeline: {n} images is below Kaggle's {MIN_IMAGES}: zip made for inspection, not for submission")
    if not (styled.skipped_run and open_storage(work).exists("images.zip")):
        z = assemble(out, zip_uri, lo, hi)
        print(f"pipeline: {z['images']} images -> {zip_uri}")

    features = args.features
    if features is None:
        try:
            find_inception()
            features = "inception"
        except MissingWeightsError:
            features = "pixels"
            print("pipeline: FID Inception not installed, scoring with the pixel stand-in (see README)")
    report = evaluate(zip_uri, paintings, None, EvalOptions(features=features, min_images=lo, max_images=hi),
                      photos=photos)
    print(eval_line(report))
    print(f"pipeline: report {report['report']}, contact sheet {report['contact_sheet']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
