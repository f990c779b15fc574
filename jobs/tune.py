"""Hyperparameter search with Ray Tune on the MiFID measured during training; a ranked comparison at the end.

python -m jobs.tune --space tune.yaml --trials 8 --time-budget 30m --data ../shared/data/gan-getting-started
python -m jobs.tune --space tune.yaml --trials 12 --gpus-per-trial 0.25 ...   # four trials per GPU
python -m jobs.tune --space tune-pbt.yaml --trials 8 --scheduler pbt ...   # population-based: LR, loss weights
The same --name and --storage continue an interrupted search. Writes STORAGE/NAME/report.{md,json},
samples.png, curves.png and best_generator.pt (loads in jobs.stylize and Serve); --export copies the best.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from gan.train.search import REPORT_MD, SearchError, SearchOptions, export_best, run_search
from gan.train.settings import TrainSettings, model_fields, run_fields
from jobs.cli import location, parser, run_main
from jobs.train import data_sources


def duration(value: str) -> float:
    """argparse type: 90, 90s, 30m, 1.5h -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 90s or 1h, got {value!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def load_space(path: str) -> tuple[dict, dict]:
    """(base settings, search space) from the YAML file: `base:` fixed settings, `space:` what is searched."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SearchError(f"{path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("space"), dict) or not doc["space"]:
        raise SearchError(f"{path}: expected a mapping with a non-empty 'space:' (and optionally 'base:')")
    base = doc.get("base") or {}
    unknown = set(base) - set(model_fields()) - set(run_fields())
    if unknown:
        raise SearchError(f"{path}: base: unknown settings: {', '.join(sorted(unknown))}")
    return base, doc["space"]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--space", required=True, type=location, help="YAML with base: settings and space: to search")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--time-budget", type=duration, default=None, help="stop starting and running trials after this")
    p.add_argument("--scheduler", choices=["asha", "pbt"], default="asha",
                   help="asha: stop trailing trials early; pbt: population-based training (the worst trials "
                        "continue the best ones' weights with perturbed LR, loss weights, DiffAugment, EMA)")
    p.add_argument("--grace-epochs", type=int, default=1, help="ASHA: epochs every trial runs before it can be stopped")
    p.add_argument("--perturbation-epochs", type=int, default=1, help="PBT: epochs between exploit/explore rounds")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPU share per training worker, e.g. 0.25")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--data", type=location, help="Kaggle-layout root: photo_jpg/ and monet_jpg/")
    p.add_argument("--photos", type=location)
    p.add_argument("--paintings", type=location)
    p.add_argument("--name", default="search", help="search name; the same name and storage resume")
    p.add_argument("--storage", default="runs", type=location, help="local folder or s3://bucket/prefix")
    p.add_argument("--export", type=location, help="copy the best trial's generator here")
    args = p.parse_args(argv)
    base, space = load_space(args.space)
    settings = TrainSettings.from_flat(base, **data_sources(args))
    opts = SearchOptions(trials=args.trials, time_budget_s=args.time_budget, scheduler=args.scheduler,
                         gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                         grace_epochs=args.grace_epochs, perturbation_epochs=args.perturbation_epochs)
    print(f"tune: '{args.name}', {args.trials} trials of {settings.model} ({args.scheduler}), "
          f"results in {args.storage}/{args.name}")
    report = run_search(settings, space, opts, args.name, args.storage)
    for t in report["trials"][:5]:
        how = (f" (continued from {', '.join(t['continued_from'])})" if t["continued_from"] else
               " (stopped early)" if t["stopped_early"] and report["scheduler"] == "asha" else "")
        print(f"tune: #{t['rank']} {t['trial']}  mifid {t['mifid']:.2f} at epoch {t['best_epoch']} of "
              f"{t['epochs']}{how}, {t['train_seconds']} s")
    print(f"tune: {len(report['trials'])} trials in {report['seconds']:.0f} s"
          f"{' (resumed)' if report['resumed'] else ''}; report {args.storage}/{args.name}/{REPORT_MD}")
    if args.export:
        export_best(report, args.export)
        print(f"tune: best generator exported to {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
