"""What a generator makes of a batch of inputs: the `infer` hook of a model kind (`ModelSpec.infer`).

Two kinds of input exist: `Photos` (stylize: a photo in, its painting out) and `Seeds` (generate: image i of seed s,
which depends on (s, i) alone, so any sharding draws the same images). A kind's `infer` says which one it takes
(`takes`); the batch jobs, the in-training score and Serve hand it that input and get uint8 images back, with bf16
autocast on CUDA. inference_mode and autocast are per thread, so every call enters them itself, whatever thread
calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from gan.io.images import IMAGE_SIZE, from_uint8, to_uint8
from gan.models.layers import autocast


@dataclass(frozen=True)
class Photos:
    """A batch of photos: (B, 3, H, W) uint8 on the device that runs the generator."""
    pixels: torch.Tensor
    noun: ClassVar[str] = "photos"

    @classmethod
    def from_numpy(cls, pixels: np.ndarray, device: torch.device) -> "Photos":
        """(B, H, W, 3) uint8 -> the batch on `device`, channels_last in memory (the view of the NHWC bytes).

        The uint8 bytes travel (a quarter of float32's), from pinned memory without blocking on CUDA."""
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        return cls(x.permute(0, 3, 1, 2))

    @classmethod
    def example(cls, device: torch.device) -> "Photos":
        """One black photo: what a model actor warms up on."""
        return cls(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8, device=device))

    def __len__(self) -> int:
        return len(self.pixels)


@dataclass(frozen=True)
class Seeds:
    """Images `indices` of `seed`."""
    seed: int
    indices: tuple[int, ...]
    noun: ClassVar[str] = "seeds"

    @classmethod
    def example(cls, device: torch.device) -> "Seeds":
        return cls(0, (0,))

    def __len__(self) -> int:
        return len(self.indices)


class Inference(Protocol):
    """A model kind's `infer`: (generator, inputs of type `takes`) -> (B, 3, 256, 256) uint8 on the generator's
    device. `pad_to`: run at least this many (padding dropped after), so a compiled generator sees one shape."""
    takes: type

    def __call__(self, net: torch.nn.Module, inputs, pad_to: int = 0) -> torch.Tensor: ...


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


class Stylize:
    """Image-to-image: each photo through the generator at its own size (256 px in the jobs)."""
    takes = Photos

    def __call__(self, net: torch.nn.Module, inputs: Photos, pad_to: int = 0) -> torch.Tensor:
        images, n = inputs.pixels, len(inputs)
        if n < pad_to:
            images = torch.cat([images, images.new_zeros((pad_to - n, *images.shape[1:]))])
        x = from_uint8(images.contiguous(memory_format=torch.channels_last))
        with torch.inference_mode(), autocast(images.device):
            return to_uint8(net(x)[:n])


def latent(seed: int, index: int, nz: int) -> torch.Tensor:
    """The latent of image `index`: depends on (seed, index) alone, so any sharding gives the same images."""
    rng = np.random.default_rng([seed, index])
    return torch.from_numpy(rng.standard_normal(nz).astype(np.float32))


class Sample:
    """Noise-to-image: image i of seed s from the latent of (s, i) (the generator's `nz` long), upscaled (bicubic)
    to the submission's 256 px."""
    takes = Seeds

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = size

    def __call__(self, net: torch.nn.Module, inputs: Seeds, pad_to: int = 0) -> torch.Tensor:
        device, n = _device(net), len(inputs)
        indices = list(inputs.indices) + [0] * max(0, pad_to - n)
        z = torch.stack([latent(inputs.seed, int(i), net.nz) for i in indices]).to(device)
        with torch.inference_mode(), autocast(device):
            images = net(z)[:n].float()  # (B, 3, s, s)
            if images.shape[-1] != self.size:
                images = torch.nn.functional.interpolate(images, size=self.size, mode="bicubic", align_corners=False)
            return to_uint8(images)


def to_numpy(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) uint8 anywhere -> (B, H, W, 3) uint8 on the host."""
    return images.movedim(1, -1).cpu().numpy()


def infer_numpy(infer: Inference, net: torch.nn.Module, inputs, batch: int = 16) -> np.ndarray:
    """All of `inputs` ((N, H, W, 3) uint8 photos, or Seeds) through `infer` in batches: (N, 256, 256, 3) uint8."""
    device = _device(net)
    if isinstance(inputs, Seeds):
        parts = [Seeds(inputs.seed, inputs.indices[i:i + batch]) for i in range(0, len(inputs), batch)]
    else:
        parts = [Photos.from_numpy(inputs[i:i + batch], device) for i in range(0, len(inputs), batch)]
    return np.concatenate([to_numpy(infer(net, part)) for part in parts])
