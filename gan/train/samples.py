"""Sample grids: a picture of progress (photos beside their stylized versions, or DCGAN samples from fixed noise)."""
from __future__ import annotations

import io

import torch
from PIL import Image

from gan.io.images import to_pixels


def grid_png(images: torch.Tensor, nrow: int) -> bytes:
    """(N, 3, H, W) in [-1, 1] -> PNG bytes of a grid with `nrow` images per row."""
    # imported here: torchvision costs every process that imports the models ~2.5 s (it loads torch._dynamo),
    # and only the processes that draw a grid need it (see tests/test_front_door.py, the import test)
    from torchvision.utils import make_grid
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, pad_value=1.0)  # (3, H', W')
    buf = io.BytesIO()
    Image.fromarray(to_pixels(grid)).save(buf, "PNG")
    return buf.getvalue()


@torch.no_grad()
def stylize_grid(generator: torch.nn.Module, photos: torch.Tensor) -> bytes:
    """Two rows: the photos, then what the generator makes of them."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    fakes = generator(photos.to(device)).float().cpu()
    generator.train(was_training)
    return grid_png(torch.cat([photos.cpu(), fakes]), nrow=len(photos))


@torch.no_grad()
def noise_grid(generator: torch.nn.Module, z: torch.Tensor, nrow: int = 8) -> bytes:
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    images = generator(z.to(device)).float().cpu()
    generator.train(was_training)
    return grid_png(images, nrow=nrow)
