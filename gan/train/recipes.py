"""Named starting points for `jobs.train --recipe NAME` (and `jobs.pipeline`): flat settings (run settings and the
model kind's config fields), which a `--config` file and flags override. How each was measured: docs/quality.md.
"""
from __future__ import annotations

RECIPES: dict[str, dict] = {
    # 2-core CPU, the default of `jobs.pipeline --data` without a GPU: see docs/quality.md.
    "kaggle-cpu": {"model": "cut", "image_size": 64, "preprocess": "crop", "generator": "resnet", "ngf": 16,
                   "n_blocks": 4, "ndf": 32, "batch_size": 8, "upsample": "resize", "residual": True,
                   "colour": True, "colour_lightness": True, "lambda_nce": 1.0, "ema": 0.995, "strength": 0.7,
                   "lr": 4e-4, "diffaugment": "translation,cutout",
                   "epochs": 10, "steps_per_epoch": 300, "eval_every": 10, "eval_photos": 200,
                   "cpus_per_worker": 2.0},
    # The CPU recipe before it: CycleGAN on 128 px crops, a small residual generator with resize-convolution and
    # EMA, cycle weight 1, no identity loss, DiffAugment translation + cutout, 16 epochs decaying over the second half.
    "cyclegan-cpu": {"model": "cyclegan", "image_size": 128, "preprocess": "crop", "ngf": 16, "n_blocks": 4,
                     "ndf": 32, "batch_size": 2, "upsample": "resize", "residual": True, "ema": 0.999,
                     "lambda_cycle": 1.0, "lambda_identity": 0.0, "lr": 4e-4, "diffaugment": "translation,cutout",
                     "epochs": 16, "steps_per_epoch": 300, "eval_every": 2, "eval_photos": 200,
                     "cpus_per_worker": 2.0},
    # One GPU, ~20 minutes: the paper's full-size CycleGAN (256 px, ngf 64, 9 blocks) at batch 4, with what the CPU
    # runs kept (resize-convolution, residual generator, EMA, DiffAugment translation + cutout on D) and the paper's
    # cycle and identity weights; 35 epochs of 300 steps, scored every 5 on 1,000 photos.
    "kaggle": {"model": "cyclegan", "image_size": 256, "ngf": 64, "n_blocks": 9, "ndf": 64, "batch_size": 4,
               "upsample": "resize", "residual": True, "ema": 0.999, "lambda_cycle": 10.0, "lambda_identity": 0.5,
               "diffaugment": "translation,cutout", "epochs": 35, "steps_per_epoch": 300, "eval_every": 5,
               "eval_photos": 1000, "use_gpu": True, "loader_workers": 6},
}


def recipe(name: str) -> dict:
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
