"""Evaluation throughput: Inception features in jobs.evaluate's pipeline vs a plain loop, side by side in one run.

python bench/evaluate_throughput.py [--photos DIR] [--count 300] [--batch 32] [--features inception|pixels]
- plain loop: what a user would write: Pillow decode of each file, batches of --batch through the same extractor,
  every core's threads, in one process (model load included);
- the job: `gan.eval.evaluate.features_of`, the function jobs.evaluate runs per image set (Ray Data: decode tasks
  -> feature actor), Ray already started (actor start and model load included).
Target (issue 14): the job >= 0.9x the plain loop's images/s on the 2-core CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan.eval.features import extract, make_extractor  # noqa: E402
from gan.io.images import IMAGE_SIZE, decode_image  # noqa: E402

KAGGLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gan-getting-started" / "photo_jpg"


def plain_loop(files: list[Path], kind: str, batch: int, threads: int) -> tuple[float, np.ndarray]:
    """(seconds, features) of the loop a user would write."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    extractor = make_extractor(kind)
    feats = []
    for i in range(0, len(files), batch):
        pixels = np.stack([decode_image(f.read_bytes(), f.name, IMAGE_SIZE) for f in files[i:i + batch]])
        feats.append(extract(extractor, pixels))
    return time.perf_counter() - t0, np.concatenate(feats)


def job(folder: str, kind: str, batch: int) -> tuple[float, np.ndarray]:
    from gan.eval.evaluate import EvalOptions, features_of
    t0 = time.perf_counter()
    _, feats, _ = features_of(folder, EvalOptions(features=kind, batch_size=batch, progress=False), "bench")
    return time.perf_counter() - t0, feats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photos", default=str(KAGGLE))
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--features", default="inception")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    files = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    if not files:
        sys.exit(f"no .jpg under {args.photos}")
    from gan.ray_runtime import ensure_ray, set_verbose
    set_verbose(False)
    ensure_ray()
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            os.symlink(f.resolve(), Path(tmp) / f.name)
        job(tmp, args.features, args.batch)  # warm: Ray Data's first plan, the file cache
        t_job, f_job = job(tmp, args.features, args.batch)
    t_plain, f_plain = plain_loop(files, args.features, args.batch, args.threads)
    n = len(files)
    print(f"{n} photos, {args.features} features, batch {args.batch}, {args.threads} threads")
    print(f"plain loop      : {n / t_plain:6.2f} images/s ({t_plain:.1f} s, model load included)")
    print(f"jobs.evaluate   : {n / t_job:6.2f} images/s ({t_job:.1f} s, actor start and model load included)")
    print(f"ratio job/plain : {t_plain / t_job:.3f} (target >= 0.9)")
    print(f"same features   : max |difference| {np.abs(f_job - f_plain).max():.2e}")


if __name__ == "__main__":
    main()
