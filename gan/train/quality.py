"""Quality measured during training: the competition's score of the current generator, the best epoch, a curve.

Every K epochs the worker renders a fixed set of images as the batch jobs would (stylized photos, or DCGAN
samples) and scores them with the project's evaluator against the paintings: FID, memorization distance
against the same paintings, MiFID. The paintings' features are computed once per worker. The best epoch's
generator is kept, so `--export` and the pipeline take the best, not the last. This score is also what a
hyperparameter search optimises.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from gan.eval.features import MissingWeightsError, extract, find_inception, make_extractor
from gan.eval.metrics import mifid, require_metrics
from gan.io.images import IMAGE_SIZE, decode_image
from gan.models.spec import EncodedImages, ModelSpec

SCORE = "mifid"  # lower is better
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


class InTrainingEval:
    """Scores a generator on `count` fixed inputs against every painting; runs on one worker's device."""

    def __init__(self, spec: ModelSpec, images: dict[str, EncodedImages], count: int, features: str,
                 device: torch.device, seed: int = 0):
        require_metrics()  # here, in the workers' setup, not after the first epochs
        self.spec, self.device, self.kind = spec, device, feature_kind(features)
        self.extractor = make_extractor(self.kind).to(device)
        self.inputs = spec.eval_inputs(images, count, seed)
        paintings = images["paintings"]
        self.real = np.concatenate([self._features(np.stack([decode_image(d, n, IMAGE_SIZE)
                                                             for n, d in paintings[i:i + BATCH]]))
                                    for i in range(0, len(paintings), BATCH)])

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return extract(self.extractor, pixels, self.device)

    @torch.no_grad()
    def score(self, generator: torch.nn.Module) -> dict:
        was_training = generator.training
        generator.eval()
        pixels = self.spec.render(generator, self.inputs, self.device)  # (N, 256, 256, 3) uint8
        generator.train(was_training)
        feats = np.concatenate([self._features(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)])
        s = mifid(feats, self.real, self.real)
        return {"fid": s["fid"], "memorization": s["distance"], SCORE: s["mifid"], "eval_images": len(pixels),
                "eval_features": self.kind}


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


COLOURS = [(30, 90, 200), (200, 40, 40), (40, 150, 60), (160, 80, 200), (220, 140, 20), (0, 150, 160),
           (120, 120, 120), (90, 50, 20)]


def curve_png(history: list[dict], width: int = 640, height: int = 360) -> bytes:
    """The score per evaluated epoch as a line plot, the best point marked: a PNG."""
    points = [(h["epoch"] + 1, h[SCORE]) for h in history if SCORE in h]
    kind = next((h.get("eval_features") for h in history if SCORE in h), "")
    return line_plot({"": points}, f"{SCORE} per epoch ({kind} features; lower is better)", width, height,
                     mark_best=True)


def line_plot(series: dict[str, list], title: str, width: int = 640, height: int = 360,
              mark_best: bool = False) -> bytes:
    """Score-per-epoch lines, one colour per series (labelled on the right when named): a PNG."""
    legend = any(series)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = 60, 30, width - (180 if legend else 20), height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    points = [p for s in series.values() for p in s]
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y0, y1 = min(ys), max(max(ys), min(ys) * 1.001 + 1e-9)
        to_px = lambda x, y: (left + (x - x0) / (x1 - x0) * (right - left),  # noqa: E731
                              bottom - (y - y0) / (y1 - y0) * (bottom - top))
        for i, (label, line) in enumerate(series.items()):
            colour = COLOURS[i % len(COLOURS)]
            pts = [to_px(x, y) for x, y in line]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            for cx, cy in pts:
                draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
            if label:
                draw.text((right + 10, top + 16 * i), label, fill=colour)
        if mark_best:
            bx, by = min(points, key=lambda p: p[1])
            cx, cy = to_px(bx, by)
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(200, 40, 40))
            label = f"best {by:.2f} @ epoch {bx}"
            lx = cx + 6 if cx + 6 + draw.textlength(label) < width else cx - 6 - draw.textlength(label)
            draw.text((lx, cy - 14), label, fill=(200, 40, 40))
        draw.text((4, top), f"{y1:.1f}", fill="black")
        draw.text((4, bottom - 10), f"{y0:.1f}", fill="black")
        draw.text((left, bottom + 8), f"epoch {x0}", fill="black")
        draw.text((right - 60, bottom + 8), f"epoch {x1}", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
