"""Sample grids: a picture of progress in each checkpoint. For a generator of photos, the first photos over what
it makes of them; for one of seeds, images of fixed latents. The same inputs every checkpoint, to watch them change."""
from __future__ import annotations

import numpy as np
import torch

from gan.io.images import decode_image, from_uint8
from gan.models.inference import Photos, Seeds
from gan.models.spec import EncodedImages, ModelSpec
from gan.pictures import grid_png

SEED_SAMPLES = 16  # images of a generator of seeds, in rows of 8


def sample_inputs(spec: ModelSpec, images: dict[str, EncodedImages], cfg, count: int, seed: int) -> Photos | Seeds:
    """The first `count` photos at the training size, or SEED_SAMPLES images of `seed`."""
    if spec.infer.takes is Photos:
        pixels = np.stack([decode_image(d, n, cfg.image_size) for n, d in images["photos"][:count]])
        return Photos(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return Seeds(seed, tuple(range(SEED_SAMPLES)))


@torch.no_grad()
def sample_grid(spec: ModelSpec, generator: torch.nn.Module, inputs: Photos | Seeds) -> bytes:
    """PNG: the photos over their paintings (one column each), or the samples in rows of 8."""
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    if isinstance(inputs, Photos):
        made = spec.infer(generator, Photos(inputs.pixels.to(device)))
        grid = torch.cat([from_uint8(inputs.pixels.cpu()), from_uint8(made.cpu())])
        nrow = len(inputs)
    else:
        grid, nrow = from_uint8(spec.infer(generator, inputs).cpu()), 8
    generator.train(was_training)
    return grid_png(grid, nrow=nrow)

