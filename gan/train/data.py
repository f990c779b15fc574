"""Training data: images loaded once as encoded bytes, decoded and augmented per item.

Keeping JPEG bytes (not pixels) in memory lets every worker hold all 7,038 photos (~200 MB) and decode
in DataLoader workers. Augmentation is CycleGAN's: resize to 1.12x, random crop back, random flip.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset

from gan.io.images import BadImageError, decode_image, open_image, to_tensor
from gan.io.sources import Rejected, read_input, scan_inputs
from gan.io.storage import StorageError, open_storage

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data source that cannot be trained on; the message names it."""


def load_encoded_images(uri: str, check: bool = True) -> tuple[list[tuple[str, bytes]], list[Rejected]]:
    """(name, bytes) of every readable image under `uri` (folder, s3:// prefix, or TFRecords).

    Unreadable files are returned as rejects (and logged), so one bad file never stops training;
    a source with no usable image at all raises DataError.
    """
    try:
        storage = open_storage(uri)
        items, rejected = scan_inputs(storage)
    except StorageError as e:
        raise DataError(str(e)) from None
    images: list[tuple[str, bytes]] = []
    for item in items:
        try:
            data = read_input(storage, item)
            if check:
                open_image(data, item.name)
            images.append((item.name, data))
        except (BadImageError, ValueError, StorageError) as e:
            rejected.append(Rejected(item.name, str(e)))
    for r in rejected:
        log.warning("skipping %s: %s", r.name, r.reason)
    if not images:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in rejected[:3])
        raise DataError(f"{uri}: no usable images ({len(rejected)} rejected{': ' + reasons if reasons else ''})")
    return images, rejected


def augment(pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop of `size` from a larger square image, then a random horizontal flip."""
    top, left = (int(rng.integers(0, pixels.shape[0] - size + 1)), int(rng.integers(0, pixels.shape[1] - size + 1)))
    out = pixels[top:top + size, left:left + size]
    return out[:, ::-1] if rng.random() < 0.5 else out


class ImageDataset(Dataset):
    """Decoded (3, size, size) tensors in [-1, 1] from encoded images; with `jitter`, CycleGAN's augmentation.

    Images are decoded at `load_size` (default: 1.12x `size` with jitter, as the paper) and randomly cropped to `size`.
    """

    def __init__(self, images: list[tuple[str, bytes]], size: int, jitter: bool = False, load_size: int | None = None):
        self.images, self.size, self.jitter = images, size, jitter
        default = int(round(size * 1.12 / 2)) * 2 if jitter else size  # 256 -> 286
        self.load_size = max(load_size or default, size)
        self.epoch, self.seed = 0, 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Augmentation is drawn from (seed, epoch, index): the same global batch gets the same crops whatever
        the number of training workers or loader processes."""
        self.epoch, self.seed = epoch, seed

    def item_rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def pixels(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        name, data = self.images[index]
        pixels = decode_image(data, name, self.load_size)
        if self.jitter:
            pixels = augment(pixels, self.size, rng or np.random.default_rng())
        return pixels

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.pixels(index, self.item_rng(index)))


class UnpairedDataset(Dataset):
    """(photo, painting) pairs for CycleGAN: photo i with a random painting, as in the reference; the painting
    and both crops are drawn from (seed, epoch, i) (see `ImageDataset.set_epoch`)."""

    def __init__(self, photos: ImageDataset, paintings: ImageDataset):
        self.photos, self.paintings = photos, paintings

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        self.photos.set_epoch(epoch, seed)
        self.paintings.set_epoch(epoch, seed)

    def __len__(self) -> int:
        return max(len(self.photos), len(self.paintings))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.photos.item_rng(index, stream=1)
        j = int(rng.integers(len(self.paintings)))
        photo = self.photos.pixels(index % len(self.photos), self.photos.item_rng(index))
        return to_tensor(photo), to_tensor(self.paintings.pixels(j, rng))
