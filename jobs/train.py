"""Train CycleGAN (photo -> Monet) or DCGAN on Ray Train; rerunning the same --name continues where it stopped.

python -m jobs.train --model cyclegan --data demo/ --epochs 10 --num-workers 2 --storage runs/ --name monet
python -m jobs.train --model dcgan --paintings art/ --image-size 64 --storage s3://bucket/runs --name abstract
Model sizes come from flags or a YAML file (--config), flags winning.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from gan.ray_runtime import ensure_ray
from gan.storage import write_uri
from gan.train import GENERATOR_FILE, SAMPLES_FILE, TrainSettings, make_trainer

MODEL_FLAGS = ("image_size", "ngf", "ndf", "n_blocks", "n_layers_d", "nz", "lr", "lambda_cycle", "lambda_identity",
               "decay_epochs", "pool_size", "diffaugment")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, TrainSettings]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--model", choices=["cyclegan", "dcgan"])
    p.add_argument("--data", help="Kaggle-layout root: photos from photo_jpg/, paintings from monet_jpg/")
    p.add_argument("--photos", help="photos: folder, s3:// prefix, or TFRecords (cyclegan)")
    p.add_argument("--paintings", help="paintings / art: folder, s3:// prefix, or TFRecords")
    p.add_argument("--name", default="gan", help="run name; the same name and storage resume")
    p.add_argument("--storage", default="runs", help="local folder or s3://bucket/prefix for checkpoints")
    p.add_argument("--export", help="write the final generator checkpoint here (local or s3://)")
    for flag, typ in (("epochs", int), ("batch_size", int), ("checkpoint_every", int), ("keep_checkpoints", int),
                      ("num_workers", int), ("cpus_per_worker", float), ("loader_workers", int),
                      ("max_failures", int), ("seed", int), ("steps_per_epoch", int)):
        p.add_argument("--" + flag.replace("_", "-"), type=typ)
    p.add_argument("--use-gpu", action="store_true", default=None)
    for flag in MODEL_FLAGS:
        typ = str if flag == "diffaugment" else float if flag.startswith(("lr", "lambda")) else int
        p.add_argument("--" + flag.replace("_", "-"), type=typ)
    args = p.parse_args(argv)

    values: dict = {}
    if args.config:
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            p.error(f"{args.config}: expected a mapping of settings")
        values.update(loaded)
    model_cfg = dict(values.pop("model_config", {}) or {})
    for k in list(values):
        if k in MODEL_FLAGS:
            model_cfg[k] = values.pop(k)
    for k, v in vars(args).items():
        if v is None or k in ("config", "data", "name", "storage", "export"):
            continue
        (model_cfg if k in MODEL_FLAGS else values)[k] = v
    if args.data:
        root = args.data.rstrip("/")  # a local folder or an s3:// prefix: both join with "/"
        values.setdefault("photos", f"{root}/photo_jpg")
        values.setdefault("paintings", f"{root}/monet_jpg")
    known = set(TrainSettings.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        p.error(f"unknown settings: {', '.join(sorted(unknown))}")
    return args, TrainSettings(**values, model_config=model_cfg)


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    trainer = make_trainer(settings, args.name, args.storage)  # checks the data before Ray starts
    ensure_ray()
    result = trainer.fit()
    if result.checkpoint is None:
        print("train: no checkpoint was written", file=sys.stderr)
        return 1
    with result.checkpoint.as_directory() as d:
        generator = (Path(d) / GENERATOR_FILE).read_bytes()
        print(f"train: {args.name} at {result.checkpoint.path}; samples in {SAMPLES_FILE}")
    if result.metrics:
        m = result.metrics
        losses = ", ".join(f"{k}={v:.3f}" for k, v in m.items() if k.startswith("loss"))
        print(f"train: epoch {m['epoch'] + 1}/{settings.epochs}, {losses}, {m['images_per_s']:.1f} images/s")
    if args.export:
        write_uri(args.export, generator)
        print(f"train: generator exported to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
