"""Quality measured during training: the competition's score of the current generator, the best epoch, a curve.

Every K epochs the worker renders a fixed set of images as the batch jobs would (stylized photos, or samples of
seeds) through the kind's `infer` and scores them with the project's evaluator against the paintings: FID, KID,
memorization distance against the same paintings, MiFID. The paintings' features, and for a generator of photos
the unstylized photos' own score (the reference every curve is drawn against), are computed once per worker. The
best epoch's generator is kept, so `--export` and the pipeline take the best, not the last. This score is also
what a hyperparameter search optimises.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gan.eval.features import MissingWeightsError, extract, find_inception, make_extractor
from gan.eval.metrics import mifid
from gan.io.images import IMAGE_SIZE, decode_image
from gan.models.inference import Photos, Seeds, infer_numpy
from gan.models.spec import EncodedImages, ModelSpec
from gan.pictures import score_curves

SCORE = "mifid"  # lower is better
BASELINE = "photos_" + SCORE  # the unstylized photos' score on the same photos
BATCH = 32


def feature_kind(requested: str) -> str:
    """"auto": the FID Inception when installed, else the labelled pixel stand-in."""
    if requested != "auto":
        return requested
    try:
        find_inception()
        return "inception"
    except MissingWeightsError:
        return "pixels"


def eval_inputs(spec: ModelSpec, images: dict[str, EncodedImages], count: int, seed: int) -> np.ndarray | Seeds:
    """What is scored: the first `count` photos as the batch job reads them ((count, 256, 256, 3) uint8), or
    images 0 .. count - 1 of seed 0, as `jobs.generate` draws them."""
    if spec.infer.takes is Photos:
        return np.stack([decode_image(d, n, IMAGE_SIZE) for n, d in images["photos"][:count]])
    return Seeds(0, tuple(range(count)))


class InTrainingEval:
    """Scores a generator on `count` fixed inputs against every painting; runs on one worker's device."""

    def __init__(self, spec: ModelSpec, images: dict[str, EncodedImages], count: int, features: str,
                 device: torch.device, seed: int = 0):
        self.spec, self.device, self.kind = spec, device, feature_kind(features)
        self.extractor = make_extractor(self.kind).to(device)
        self.inputs = eval_inputs(spec, images, count, seed)
        paintings = images["paintings"]
        self.real = self._features(np.stack([decode_image(d, n, IMAGE_SIZE) for n, d in paintings]))
        self.baseline = (mifid(self._features(self.inputs), self.real, self.real)[SCORE]
                         if isinstance(self.inputs, np.ndarray) else None)

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([extract(self.extractor, pixels[i:i + BATCH], self.device)
                               for i in range(0, len(pixels), BATCH)])

    @torch.no_grad()
    def score(self, generator: torch.nn.Module) -> dict:
        was_training = generator.training
        generator.eval()
        pixels = infer_numpy(self.spec.infer, generator, self.inputs)  # (N, 256, 256, 3) uint8
        generator.train(was_training)
        s = mifid(self._features(pixels), self.real, self.real)
        out = {"fid": s["fid"], "kid": s["kid"], "memorization": s["distance"], SCORE: s["mifid"],
               "eval_images": len(pixels), "eval_features": self.kind}
        return {**out, BASELINE: self.baseline} if self.baseline is not None else out


@dataclass
class Best:
    """The best epoch so far by SCORE and its exported generator (checkpoint bytes)."""
    epoch: int = -1
    score: float = float("inf")
    generator: bytes = b""
    samples: bytes = b""

    def update(self, epoch: int, score: float, generator: bytes, samples: bytes) -> bool:
        if score < self.score:
            self.epoch, self.score, self.generator, self.samples = epoch, score, generator, samples
            return True
        return False


def curve_png(history: list[dict]) -> bytes:
    """The score per evaluated epoch, the best point marked, the unstylized photos' score as a reference line."""
    points = [(h["epoch"] + 1, h[SCORE]) for h in history if SCORE in h]
    kind = next((h.get("eval_features") for h in history if SCORE in h), "")
    baseline = next((h[BASELINE] for h in history if h.get(BASELINE) is not None), None)
    return score_curves({"": points}, f"{SCORE} per epoch ({kind} features; lower is better)", SCORE,
                        reference=("the photos themselves", baseline) if baseline is not None else None,
                        mark_best=True)
