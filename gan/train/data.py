"""Training data: images loaded once as encoded bytes, decoded and augmented per item.

Keeping JPEG bytes (not pixels) in memory lets every worker hold all 7,038 photos (~200 MB) and decode
in DataLoader workers, or (on a GPU) to decode each once into device memory (`DeviceLoader`). Augmentation is
CycleGAN's: resize to 1.12x, random crop back, random flip; or (`preprocess: crop`) crops of the 256 px images.

What a model trains on follows from what its generator takes (`ModelSpec.infer`): a generator of photos learns
from unpaired photos and paintings, one of seeds from the paintings alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from gan.io.images import IMAGE_SIZE, BadImageError, decode_image, from_uint8, open_image, to_tensor
from gan.io.sources import Rejected, read_input, scan_inputs
from gan.io.storage import StorageError, open_storage
from gan.models.inference import Photos
from gan.models.spec import EncodedImages, ModelSpec

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


@dataclass(frozen=True)
class Crop:
    """One training view of an image: which image, where it is cut, whether it is flipped. Drawn once by the
    dataset, applied to decoded pixels on the host (`ImageDataset.pixels`) or on the device (`DeviceLoader`)."""
    image: int
    top: int = 0
    left: int = 0
    flip: bool = False


class ImageDataset(Dataset):
    """Decoded (3, size, size) tensors in [-1, 1] from encoded images; with `jitter`, CycleGAN's augmentation.

    Images are decoded at `load_size` (default: 1.12x `size` with jitter, as the paper), randomly cropped to `size`
    and flipped half the time.
    """

    def __init__(self, images: list[tuple[str, bytes]], size: int, jitter: bool = False, load_size: int | None = None):
        self.images, self.size, self.jitter = images, size, jitter
        default = int(round(size * 1.12 / 2)) * 2 if jitter else size  # 256 -> 286
        self.load_size = max(load_size or default, size)
        self.epoch, self.seed = 0, 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def parts(self) -> tuple["ImageDataset", ...]:
        """The image sets an item is cut from (one here; photos and paintings for `UnpairedDataset`)."""
        return (self,)

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Augmentation is drawn from (seed, epoch, index): the same global batch gets the same crops whatever
        the number of training workers or loader processes."""
        self.epoch, self.seed = epoch, seed

    def item_rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, stream])

    def crop(self, image: int, rng: np.random.Generator) -> Crop:
        """A random `size` crop of the `load_size` image and a coin for the horizontal flip (none without jitter)."""
        if not self.jitter:
            return Crop(image)
        room = self.load_size - self.size + 1
        top, left = int(rng.integers(0, room)), int(rng.integers(0, room))
        return Crop(image, top, left, bool(rng.random() < 0.5))

    def crops(self, index: int) -> tuple[Crop, ...]:
        """Item `index` as one crop per part."""
        return (self.crop(index, self.item_rng(index)),)

    def decoded(self, image: int) -> np.ndarray:
        """(load_size, load_size, 3) uint8."""
        name, data = self.images[image]
        return decode_image(data, name, self.load_size)

    def pixels(self, crop: Crop) -> np.ndarray:
        """(size, size, 3) uint8: the crop applied on the host."""
        out = self.decoded(crop.image)[crop.top:crop.top + self.size, crop.left:crop.left + self.size]
        return out[:, ::-1] if crop.flip else out

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(self.pixels(self.crops(index)[0]))


class UnpairedDataset(Dataset):
    """(photo, painting) pairs for CycleGAN: photo i with a random painting, as in the reference; the painting
    and both crops are drawn from (seed, epoch, i) (see `ImageDataset.set_epoch`)."""

    def __init__(self, photos: ImageDataset, paintings: ImageDataset):
        self.photos, self.paintings = photos, paintings

    @property
    def parts(self) -> tuple[ImageDataset, ImageDataset]:
        return self.photos, self.paintings

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        self.photos.set_epoch(epoch, seed)
        self.paintings.set_epoch(epoch, seed)

    def __len__(self) -> int:
        return max(len(self.photos), len(self.paintings))

    def crops(self, index: int) -> tuple[Crop, Crop]:
        rng = self.photos.item_rng(index, stream=1)
        j = int(rng.integers(len(self.paintings)))
        photo = self.photos.crop(index % len(self.photos), self.photos.item_rng(index))
        return photo, self.paintings.crop(j, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        photo, painting = self.crops(index)
        return to_tensor(self.photos.pixels(photo)), to_tensor(self.paintings.pixels(painting))


def decoded_bytes(dataset: ImageDataset | UnpairedDataset) -> int:
    """What `DeviceLoader` keeps on the device: every image of every part as uint8 at its load size."""
    return sum(len(part) * part.load_size ** 2 * 3 for part in dataset.parts)


class DeviceLoader:
    """The DataLoader's batches, cut from images decoded once and kept as uint8 on the training device.

    The training sets are small (300 paintings and 7,038 photos are ~1.8 GB as uint8 at 286 px), so each image is
    decoded once and every step only crops, flips and normalises on the GPU: no loader processes, no host-to-device
    copy per step. The dataset draws the crops, so a run trains on the same pixels either way.
    """

    def __init__(self, dataset: ImageDataset | UnpairedDataset, sampler: torch.utils.data.Sampler, batch_size: int,
                 device: torch.device | str):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.images = [torch.from_numpy(np.stack([part.decoded(i) for i in range(len(part))])).to(device)
                       for part in dataset.parts]  # per part (N, load, load, 3) uint8

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # whole batches only, as the DataLoader's drop_last

    def __iter__(self):
        indices = list(self.sampler)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            crops = [self.dataset.crops(i) for i in indices[start:start + self.batch_size]]
            batch = [self._cut(images, part.size, [c[k] for c in crops])
                     for k, (images, part) in enumerate(zip(self.images, self.dataset.parts))]
            yield batch[0] if len(batch) == 1 else batch

    @staticmethod
    def _cut(images: torch.Tensor, size: int, crops: list[Crop]) -> torch.Tensor:
        views = [images[c.image, c.top:c.top + size, c.left:c.left + size] for c in crops]  # (size, size, 3) each
        x = torch.stack([v.flip(1) if c.flip else v for v, c in zip(views, crops)])  # (B, size, size, 3) uint8
        return from_uint8(x.permute(0, 3, 1, 2))  # (B, 3, size, size) in [-1, 1], as to_tensor


def training_sources(spec: ModelSpec) -> tuple[str, ...]:
    """The TrainSettings data fields a model kind trains on."""
    return ("photos", "paintings") if spec.infer.takes is Photos else ("paintings",)


def training_set(spec: ModelSpec, images: dict[str, EncodedImages], cfg) -> ImageDataset | UnpairedDataset:
    """The training set of a model kind: (photo, painting) pairs for a generator of photos, cropped as its config's
    `preprocess` says ("crop": pieces of the 256 px images, the scale of inference; else the paper's resize to
    1.12x and crop back), flipped half the time; for a generator of seeds, the paintings resized whole."""
    if spec.infer.takes is not Photos:
        return ImageDataset(images["paintings"], cfg.image_size, jitter=False)
    load_size = IMAGE_SIZE if getattr(cfg, "preprocess", "") == "crop" else None
    return UnpairedDataset(ImageDataset(images["photos"], cfg.image_size, jitter=True, load_size=load_size),
                           ImageDataset(images["paintings"], cfg.image_size, jitter=True, load_size=load_size))
