"""Running a generator the same way everywhere: the batch jobs' actors and the Serve replicas.

Both take uint8 pixels or (seed, index) pairs and return uint8 pixels, with bf16 autocast on CUDA and
DCGAN samples upscaled to the submission size. inference_mode and autocast are per thread, so these
functions enter them themselves, whatever thread calls them.
"""
from __future__ import annotations

import numpy as np
import torch

from gan.io.images import IMAGE_SIZE, to_pixels, to_tensor
from gan.models.layers import autocast



def latent(seed: int, index: int, nz: int) -> torch.Tensor:
    """The latent of image `index`: depends on (seed, index) alone, so any sharding gives the same images."""
    rng = np.random.default_rng([seed, index])
    return torch.from_numpy(rng.standard_normal(nz).astype(np.float32))


def stylize_pixels(net: torch.nn.Module, pixels: np.ndarray, device: torch.device,
                   channels_last: bool = False) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, H, W, 3) uint8 through a CycleGAN generator."""
    x = to_tensor(pixels).to(device)  # (B, 3, H, W)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device):
        return to_pixels(net(x))


def sample_pixels(net: torch.nn.Module, seed: int, indices, nz: int, device: torch.device,
                  size: int = IMAGE_SIZE) -> np.ndarray:
    """DCGAN images for (seed, i) for each i in `indices`, upscaled (bicubic) to size x size: (B, size, size, 3)."""
    z = torch.stack([latent(seed, int(i), nz) for i in indices]).to(device)
    with torch.inference_mode(), autocast(device):
        images = net(z).float()  # (B, 3, s, s)
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=size, mode="bicubic", align_corners=False)
        return to_pixels(images)
