"""Train CycleGAN (photo -> Monet) or DCGAN on Ray Train; rerunning the same --name continues where it stopped.

python -m jobs.train --model cyclegan --data demo/ --epochs 10 --num-workers 2 --storage runs/ --name monet
python -m jobs.train --model dcgan --paintings art/ --image-size 64 --storage s3://bucket/runs --name abstract
Settings come from flags or a YAML file of the same names with underscores (--config), flags winning.
Relative paths, on the command line and in the YAML file, are relative to the current directory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from jobs.cli import boolean, location, parser, resources, run_main
from gan.io.storage import write_uri
from gan.models.layers import COMPILE_MODES
from gan.train.loop import BEST_FILE, CURVE_FILE, GENERATOR_FILE, SAMPLES_FILE, TrainSettings, run_training

MODEL_FLAGS = {"image_size": int, "ngf": int, "ndf": int, "n_blocks": int, "n_layers_d": int, "nz": int,
               "lr": float, "lambda_cycle": float, "lambda_identity": float, "decay_epochs": int, "pool_size": int,
               "diffaugment": str, "upsample": str, "ema": float, "residual": boolean, "preprocess": str}
RUN_FLAGS = {"epochs": int, "batch_size": int, "precision": str, "compile": str, "checkpoint_every": int,
             "keep_checkpoints": int, "num_workers": int, "min_workers": int, "worker_resources": resources,
             "cpus_per_worker": float, "loader_workers": int, "max_failures": int, "seed": int, "steps_per_epoch": int,
             "eval_every": int, "eval_photos": int, "eval_features": str, "data_on_device": boolean}
FLAG_OPTIONS = {"compile": {"nargs": "?", "const": "default", "choices": COMPILE_MODES, "metavar": "MODE",
                            "help": "torch.compile the networks of the training step (default mode without a "
                                    "MODE; reduce-overhead adds CUDA graphs): a one-off compile per worker"}}


# Named starting points, measured (see README "Quality"): a recipe's values are defaults that --config and flags
# override.
RECIPES = {
    # 2-core CPU: 128 px crops at the scale of inference, a small residual generator (it starts as the photo) with
    # resize-convolution and EMA, a light cycle weight (1: with 5 the generator settles back to the photo) and no
    # identity loss, DiffAugment translation + cutout on D (colour jitter would hide the palette that D should
    # learn), LR 4e-4 (2x the paper's: it scored better in the same time), 16 epochs with the LR decaying over the
    # second half (~23 minutes of training here, 29 with the scoring), scored every 2 epochs. Measured in README
    # "Quality"; the best epoch is exported.
    "kaggle-cpu": {"image_size": 128, "preprocess": "crop", "ngf": 16, "n_blocks": 4, "ndf": 32, "batch_size": 2,
                   "upsample": "resize", "residual": True, "ema": 0.999, "lambda_cycle": 1.0, "lambda_identity": 0.0,
                   "lr": 4e-4, "diffaugment": "translation,cutout", "epochs": 16, "steps_per_epoch": 300,
                   "eval_every": 2, "eval_photos": 200, "cpus_per_worker": 2.0},
    # One GPU, ~20 minutes: the paper's full-size networks (256 px, ngf 64, 9 blocks) at batch 4, with what the CPU
    # measurements kept (resize-convolution, residual generator, EMA, DiffAugment translation + cutout on D) and
    # the paper's cycle and identity weights. 35 epochs of 300 steps (42,000 image pairs: about 18 minutes at the
    # 38.8 images/s seen on an H100), LR decaying over the second half (of any --epochs), scored every 5 epochs on
    # 1,000 photos.
    # Its score is NOT measured yet (no GPU has been lent to this project): see README "Quality".
    "kaggle": {"image_size": 256, "ngf": 64, "n_blocks": 9, "ndf": 64, "batch_size": 4, "upsample": "resize",
               "residual": True, "ema": 0.999, "lambda_cycle": 10.0, "lambda_identity": 0.5,
               "diffaugment": "translation,cutout", "epochs": 35, "steps_per_epoch": 300,
               "eval_every": 5, "eval_photos": 1000, "use_gpu": True, "loader_workers": 6},
}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, TrainSettings]:
    p = parser(__doc__)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a measured set of settings to start from")
    p.add_argument("--config", type=location, help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--model", choices=["cyclegan", "dcgan"], default="cyclegan")
    p.add_argument("--data", type=location, help="Kaggle-layout root: photos from photo_jpg/, paintings from monet_jpg/")
    p.add_argument("--photos", type=location, help="photos: folder, s3:// prefix, or TFRecords (cyclegan)")
    p.add_argument("--paintings", type=location, help="paintings / art: folder, s3:// prefix, or TFRecords")
    p.add_argument("--name", default="gan", help="run name; the same name and storage resume")
    p.add_argument("--storage", default="runs", type=location, help="local folder or s3://bucket/prefix for checkpoints")
    p.add_argument("--export", type=location,
                   help="write the generator of the best-scoring epoch (the last when not scored) here (local or s3://)")
    p.add_argument("--use-gpu", action="store_true", default=None)
    for flag, typ in {**RUN_FLAGS, **MODEL_FLAGS}.items():
        p.add_argument("--" + flag.replace("_", "-"), type=typ, **FLAG_OPTIONS.get(flag, {}))
    args = p.parse_args(argv)
    if args.recipe:  # the recipe's values become defaults; the config file and flags win
        p.set_defaults(**RECIPES[args.recipe])
        args = p.parse_args(argv)
    if args.config:  # the file's values become defaults; flags given on the command line win
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            p.error(f"{args.config}: expected a mapping of settings")
        loaded.update(loaded.pop("model_config", None) or {})
        unknown = set(loaded) - {a.dest for a in p._actions}
        if unknown:
            p.error(f"{args.config}: unknown settings: {', '.join(sorted(unknown))}")
        p.set_defaults(**{k: location(v) if k in ("data", "photos", "paintings", "storage", "export") else v
                          for k, v in loaded.items()})
        args = p.parse_args(argv)
    return args, settings_from(vars(args), **data_sources(args))


def settings_from(values: dict, **given) -> TrainSettings:
    """TrainSettings from flat settings (flags, a YAML file, a recipe; None = not set): run settings by name,
    model settings into model_config; `given` are set as they are."""
    run = {k: v for k, v in values.items() if v is not None and (k in RUN_FLAGS or k in ("model", "use_gpu"))}
    model = {k: v for k, v in values.items() if v is not None and k in MODEL_FLAGS}
    return TrainSettings(**run, **given, model_config=model)


def data_sources(args: argparse.Namespace) -> dict:
    """photos and paintings from --photos/--paintings, else from the Kaggle layout under --data."""
    root = args.data.rstrip("/") if args.data else None  # a local folder or an s3:// prefix: both join with "/"
    return {"photos": args.photos or (f"{root}/photo_jpg" if root else None),
            "paintings": args.paintings or (f"{root}/monet_jpg" if root else None)}


def main(argv: list[str] | None = None) -> int:
    args, settings = parse(argv)
    print(f"train: {settings.model} '{args.name}', {settings.epochs} epochs, checkpoints in {args.storage}/{args.name}")
    result = run_training(settings, args.name, args.storage)
    if result.checkpoint is None:
        print("train: no checkpoint was written", file=sys.stderr)
        return 1
    with result.checkpoint.as_directory() as d:
        best = Path(d) / BEST_FILE
        generator = (best if best.exists() else Path(d) / GENERATOR_FILE).read_bytes()
    print(f"train: done; latest checkpoint {result.checkpoint.path} (sample grid {SAMPLES_FILE}"
          + (f", quality report {CURVE_FILE} and {BEST_FILE})" if best.exists() else ")"))
    if args.export:
        write_uri(args.export, generator)
        print(f"train: generator exported to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
