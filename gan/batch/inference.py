"""Running a generator the same way everywhere: the batch jobs' actors and the Serve replicas.

Both take uint8 pixels or (seed, index) pairs and return uint8 pixels, with bf16 autocast on CUDA and
DCGAN samples upscaled to the submission size. inference_mode and autocast are per thread, so these
functions enter them themselves, whatever thread calls them.
"""
from __future__ import annotations

import numpy as np
import torch

from gan.io.images import IMAGE_SIZE, from_uint8, to_pixels, to_uint8
from gan.models.layers import autocast



def latent(seed: int, index: int, nz: int) -> torch.Tensor:
    """The latent of image `index`: depends on (seed, index) alone, so any sharding gives the same images."""
    rng = np.random.default_rng([seed, index])
    return torch.from_numpy(rng.standard_normal(nz).astype(np.float32))


def to_device_uint8(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) uint8 on `device`, channels_last in memory (the view of NHWC bytes).

    The uint8 bytes travel (a quarter of float32's), from pinned memory without blocking on CUDA.
    """
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2)


def stylize_on_device(net: torch.nn.Module, images: torch.Tensor, pad_to: int = 0) -> torch.Tensor:
    """(B, 3, H, W) uint8 on the model's device -> the same, stylized, left there (for the device's JPEG encoder).

    `pad_to`: run a batch of at least this many (zeros after the images, dropped after) so that a compiled
    generator sees one shape and never compiles again for a short last batch.
    """
    n = len(images)
    if n < pad_to:
        images = torch.cat([images, images.new_zeros((pad_to - n, *images.shape[1:]))])
    x = from_uint8(images.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode(), autocast(images.device):
        return to_uint8(net(x)[:n])


def stylize_pixels(net: torch.nn.Module, pixels: np.ndarray, device: torch.device, pad_to: int = 0) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W, 3) uint8 through a CycleGAN generator (`pad_to` as `stylize_on_device`)."""
    return stylize_on_device(net, to_device_uint8(pixels, device), pad_to).movedim(1, -1).cpu().numpy()


def sample_pixels(net: torch.nn.Module, seed: int, indices, nz: int, device: torch.device,
                  size: int = IMAGE_SIZE) -> np.ndarray:
    """DCGAN images for (seed, i) for each i in `indices`, upscaled (bicubic) to size x size: (B, size, size, 3)."""
    z = torch.stack([latent(seed, int(i), nz) for i in indices]).to(device)
    with torch.inference_mode(), autocast(device):
        images = net(z).float()  # (B, 3, s, s)
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=size, mode="bicubic", align_corners=False)
        return to_pixels(images)
