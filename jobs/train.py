"""Train a model kind (cut, cyclegan: photo -> Monet; dcgan: noise -> art) on Ray Train; rerunning the same --name
continues where it stopped.

python -m jobs.train --recipe kaggle-cpu --data ../shared/data/gan-getting-started --export g.pt
python -m jobs.train --model cyclegan --data demo/ --epochs 10 --num-workers 2 --storage runs/ --name monet
python -m jobs.train --model dcgan --paintings art/ --image-size 64 --storage s3://bucket/runs --name abstract
Settings come from a recipe, a YAML file of the same names with underscores (--config) and flags, each winning
over the one before. Relative paths, on the command line and in the YAML file, are relative to the current
directory. Every setting's flag comes from gan.train.settings.TrainSettings or a model kind's config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from gan.io.storage import write_uri
from gan.models.layers import COMPILE_MODES
from gan.models.registry import known
from gan.train.driver import run_training
from gan.train.recipes import RECIPES
from gan.train.run_checkpoint import BEST_FILE, CURVE_FILE, GENERATOR_FILE, SAMPLES_FILE
from gan.train.settings import TrainSettings, field_types, model_fields, run_fields
from jobs.cli import boolean, location, parser, resources, run_main

JOB_FLAGS = ("recipe", "config", "data", "name", "storage", "export", "verbose", "storage_retry")  # the job's own, not settings
PATHS = ("data", "photos", "paintings", "storage", "export")  # made absolute where the file or flag gives them


def _flag_type(typ: type):
    return {bool: boolean, dict: resources}.get(typ, typ)


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    """A flag for every field of TrainSettings (but model_config) and of every model kind's config."""
    types = field_types(TrainSettings)
    for name, f in run_fields().items():
        flag, kw = "--" + name.replace("_", "-"), {"help": f.metadata.get("help")}
        if name == "model":
            kw.update(choices=sorted(known()))
        elif name == "use_gpu":
            kw.update(action="store_true", default=None)
        elif name == "compile":
            kw.update(nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE")
        elif f.metadata.get("path"):
            kw.update(type=location)
        else:
            kw.update(type=_flag_type(types[name]))
        p.add_argument(flag, **kw)
    group = p.add_argument_group("model settings (the fields of each kind's config; a kind takes its own)")
    for name, typ in sorted(model_fields().items()):
        group.add_argument("--" + name.replace("_", "-"), type=_flag_type(typ))


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="a measured set of settings to start from")
    p.add_argument("--config", type=location, help="YAML file with any of the settings (flags override it)")
    p.add_argument("--data", type=location, help="Kaggle-layout root: photos from photo_jpg/, paintings from monet_jpg/")
    p.add_argument("--name", default="gan", help="run name; the same name and storage resume")
    p.add_argument("--storage", default="runs", type=location, help="local folder or s3://bucket/prefix for checkpoints")
    p.add_argument("--export", type=location,
                   help="write the generator of the best-scoring epoch (the last when not scored) here (local or s3://)")
    add_settings_flags(p)
    return p


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, TrainSettings]:
    p = build_parser()
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
        p.set_defaults(**{k: location(v) if k in PATHS else v for k, v in loaded.items()})
        args = p.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in JOB_FLAGS}
    return args, TrainSettings.from_flat(values, **data_sources(args))


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
