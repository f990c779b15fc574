"""A texture loss without pretrained weights: second-order statistics of fixed random convolutional features.

Ustyuzhaninov et al. ("What does it take to generate natural textures?", ICLR 2017) showed that the Gram
statistics of a single layer of random filters at several scales already capture natural textures. Matching the
generator's output to the paintings in those statistics gives it a dense, direct signal towards Monet's brushwork
from the first step, which an adversarial loss alone gives only once the discriminator has learnt it. Features are
centred per image (covariances, not Gram matrices), so the statistics describe texture, not the colour that the
colour transfer already sets; the target is the paintings' average, fitted once (`fit`). The filters are drawn
from a seed and never trained, so every worker and every resumed run has the same.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RandomTexture(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> per scale a (B, C, C) covariance of ReLU(random conv) features.

    `scales`: the filters' sizes (one bank each, `channels` filters); each filter is zero-mean (a flat image gives
    no response) and of unit norm, so every scale weighs alike."""

    def __init__(self, scales: tuple[int, ...] = (3, 5, 7, 11), channels: int = 64, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for k in scales:
            w = torch.randn(channels, 3, k, k, generator=gen)
            w = w - w.mean(dim=(1, 2, 3), keepdim=True)
            self.register_buffer(f"w{k}", w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1), persistent=False)
            self.register_buffer(f"target{k}", torch.zeros(channels, channels))  # the paintings' mean covariance
        self.scales = scales

    def covariances(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k in self.scales:
            f = F.relu(F.conv2d(x.float(), getattr(self, f"w{k}"), padding=k // 2)).flatten(2)  # (B, C, H*W)
            f = f - f.mean(-1, keepdim=True)
            out.append(f @ f.transpose(1, 2) / f.shape[-1])                                  # (B, C, C)
        return out

    @torch.no_grad()
    def fit(self, batches) -> None:
        """The target: the mean covariance over every image of `batches` (an iterable of (B, 3, H, W) tensors)."""
        sums, n = [torch.zeros_like(getattr(self, f"target{k}")) for k in self.scales], 0
        for x in batches:
            for s, c in zip(sums, self.covariances(x.to(sums[0].device))):
                s += c.sum(0)
            n += len(x)
        for k, s in zip(self.scales, sums):
            getattr(self, f"target{k}").copy_(s / max(n, 1))

    def loss(self, fake: torch.Tensor) -> torch.Tensor:
        """How far the batch's mean covariances are from the paintings', relative to the paintings' size, summed
        over scales."""
        total = fake.new_zeros((), dtype=torch.float32)
        for k, c in zip(self.scales, self.covariances(fake)):
            t = getattr(self, f"target{k}")
            total = total + (c.mean(0) - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)
        return total
