"""A synthetic, seeded data set in the Kaggle layout, so every job runs with no download.

Photos: sharp scenes (sky gradient, horizon, sun, blocky shapes, sensor noise). Paintings: the same
kind of scene in a pastel palette, blurred, covered in short brush strokes: a visibly different style
that a CycleGAN can learn to map to.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from gan.io.images import IMAGE_SIZE, encode_jpeg
from gan.io.storage import open_storage
from gan.io.tfrecord import write_image_examples

RECORDS_PER_TFRECORD = 60


def _scene(rng: np.random.Generator, palette: str) -> Image.Image:
    h = w = IMAGE_SIZE
    if palette == "photo":
        sky_top, sky_bottom = rng.uniform([20, 60, 140], [80, 130, 230]), rng.uniform([150, 180, 210], [220, 230, 250])
        ground = rng.uniform([30, 60, 20], [110, 120, 70])
    else:  # Monet-like: pastel, warm light, lilac shadows
        sky_top, sky_bottom = rng.uniform([150, 170, 200], [200, 210, 240]), rng.uniform([230, 200, 170], [255, 235, 200])
        ground = rng.uniform([110, 150, 110], [170, 200, 150])
    horizon = int(rng.integers(h // 3, 2 * h // 3))
    t = np.linspace(0, 1, horizon)[:, None, None]
    img = np.empty((h, w, 3))
    img[:horizon] = sky_top * (1 - t) + sky_bottom * t
    g = np.linspace(0.8, 1.1, h - horizon)[:, None, None]
    img[horizon:] = ground * g
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    sx, sy, r = int(rng.integers(20, w - 20)), int(rng.integers(10, max(11, horizon - 10))), int(rng.integers(8, 25))
    draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 240, 180) if palette == "photo" else (255, 200, 150))
    for _ in range(int(rng.integers(2, 7))):  # buildings, trees, rocks
        x0, bw, bh = int(rng.integers(0, w - 20)), int(rng.integers(10, 60)), int(rng.integers(10, 90))
        colour = tuple(int(c) for c in (rng.integers(0, 120, 3) if palette == "photo" else rng.integers(100, 220, 3)))
        if rng.random() < 0.5:
            draw.rectangle([x0, horizon - bh, x0 + bw, horizon + 5], fill=colour)
        else:
            draw.ellipse([x0, horizon - bh, x0 + bw, horizon + bh // 3], fill=colour)
    return pil


def make_photo(rng: np.random.Generator) -> np.ndarray:
    pixels = np.asarray(_scene(rng, "photo"), dtype=np.float64)
    pixels += rng.normal(0, 6, pixels.shape)  # sensor noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_painting(rng: np.random.Generator) -> np.ndarray:
    pil = _scene(rng, "painting").filter(ImageFilter.GaussianBlur(3))
    pixels = np.asarray(pil)
    draw = ImageDraw.Draw(pil)
    for _ in range(400):  # brush strokes: short thick lines in a nearby colour
        x, y = int(rng.integers(0, IMAGE_SIZE)), int(rng.integers(0, IMAGE_SIZE))
        base = pixels[y, x].astype(int) + rng.integers(-25, 26, 3)
        angle, length = rng.uniform(0, np.pi), rng.uniform(4, 14)
        dx, dy = length * np.cos(angle), length * np.sin(angle)
        draw.line([x - dx, y - dy, x + dx, y + dy], fill=tuple(int(c) for c in np.clip(base, 0, 255)),
                  width=int(rng.integers(2, 5)))
    return np.asarray(pil)


def _name(rng: np.random.Generator) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, 5))  # 10 hex characters, like Kaggle's


def write_demo_data(out: str | Path, photos: int, paintings: int, seed: int = 0) -> dict[str, int]:
    """Write monet_jpg/, photo_jpg/, monet_tfrec/, photo_tfrec/ under `out`; returns counts per folder."""
    storage = open_storage(str(out))  # a local folder or an s3:// prefix
    rng = np.random.default_rng(seed)
    counts = {}
    for domain, count, make in (("photo", photos, make_photo), ("monet", paintings, make_painting)):
        items = []
        names: set[str] = set()
        for _ in range(count):
            name = _name(rng)
            while name in names:
                name = _name(rng)
            names.add(name)
            jpeg = encode_jpeg(make(rng))
            storage.write(f"{domain}_jpg/{name}.jpg", jpeg)
            items.append((name, jpeg))
        for i, start in enumerate(range(0, len(items), RECORDS_PER_TFRECORD)):
            chunk = items[start:start + RECORDS_PER_TFRECORD]
            with storage.open_write(f"{domain}_tfrec/{domain}{i:02d}-{len(chunk)}.tfrec") as f:
                write_image_examples(f, chunk, domain)
        counts[f"{domain}_jpg"] = count
    return counts
