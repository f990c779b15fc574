"""Colour transfer (Reinhard et al. 2001) in CIE Lab: each image's per-channel mean and standard deviation are set
to a target's, here the average over the paintings. No learning; the peer every trained model must beat, and the
fixed first stage of a generator that learns only what colour cannot give (`StyleGenerator`'s `colour` input).

Optionally the lightness goes further: each image's L* histogram is matched to the paintings' pooled one (its
quantiles), which moves the photos' contrast curve to the paintings' (light, low-contrast) one; measured in
docs/quality.md.

Images are (B, 3, H, W) in [-1, 1] (sRGB), as everywhere in the models; Lab is computed in float32 with the D65
white point (the sRGB standard's).
"""
from __future__ import annotations

import torch
import torch.nn as nn

# sRGB (linear) -> XYZ, D65; and the D65 white point
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_DELTA = 6 / 29
QUANTILES = 257  # points of the paintings' L* distribution kept for histogram matching


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [-1, 1] -> (B, 3, H, W) L* in [0, 100], a* and b* around 0."""
    rgb = ((x.float() + 1) / 2).clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB_TO_XYZ.to(x.device), linear) / _WHITE.to(x.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_lab`: (B, 3, H, W) Lab -> sRGB in [-1, 1], clamped to the gamut."""
    lum, a, b = lab.unbind(1)
    fy = (lum + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29)) * _WHITE.to(lab.device).view(1, 3, 1, 1)
    linear = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab.device), xyz).clamp(0, 1)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1) * 2 - 1


def lab_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: (B, 3) Lab means and (B, 3) standard deviations."""
    lab = rgb_to_lab(x).flatten(2)  # (B, 3, H*W)
    return lab.mean(-1), lab.std(-1)


def target_stats(images: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The target of the transfer: the average over `images` ((N, 3, H, W) in [-1, 1]) of each image's Lab means
    and standard deviations, as (3,) and (3,)."""
    stats = [lab_stats(images[i:i + batch]) for i in range(0, len(images), batch)]
    means, stds = torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])
    return means.mean(0), stds.mean(0)


def lightness_quantiles(images: torch.Tensor, batch: int = 32, sample: int = 4096, seed: int = 0) -> torch.Tensor:
    """(QUANTILES,) quantiles of L* pooled over `images` ((N, 3, H, W) in [-1, 1]), from `sample` pixels of each."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for i in range(0, len(images), batch):
        lum = rgb_to_lab(images[i:i + batch])[:, 0].flatten(1)  # (B, H*W)
        pick = torch.randint(0, lum.shape[1], (lum.shape[0], min(sample, lum.shape[1])), generator=gen)
        values.append(lum.gather(1, pick.to(lum.device)).flatten())
    return torch.quantile(torch.cat(values).float(), torch.linspace(0, 1, QUANTILES, device=images.device))


def match_histogram(values: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """(B, P) values -> each row's ranks mapped onto `quantiles` (Q,): the row's histogram becomes the target's."""
    ranks = values.argsort(1).argsort(1).float() / max(values.shape[1] - 1, 1) * (len(quantiles) - 1)
    low = ranks.floor().long().clamp(max=len(quantiles) - 2)
    frac = ranks - low
    return quantiles[low] * (1 - frac) + quantiles[low + 1] * frac


class ColourTransfer(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> the same images with each one's Lab mean and std per channel moved to the
    target's. The target is two buffers, so it travels in the generator's state dict (and its checkpoints);
    before `set_target` it is the identity. With `lightness` quantiles (all zero: not used) L* is histogram-matched
    to them instead."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.zeros(3))  # all zero: no target yet, pass images through
        self.register_buffer("lightness", torch.zeros(QUANTILES))

    def set_target(self, mean: torch.Tensor, std: torch.Tensor, lightness: torch.Tensor | None = None) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.lightness.copy_(lightness if lightness is not None else torch.zeros(QUANTILES))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # generators saved before the lightness option: Reinhard's transfer throughout, as they were trained
        state_dict.setdefault(prefix + "lightness", torch.zeros(QUANTILES))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return bool(self.std.abs().sum() > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return x
        lab = rgb_to_lab(x)                                   # (B, 3, H, W)
        flat = lab.flatten(2)
        mean, std = flat.mean(-1)[..., None, None], flat.std(-1)[..., None, None].clamp_min(1e-3)
        moved = (lab - mean) / std * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)
        if self.lightness.abs().sum() > 0:
            moved[:, 0] = match_histogram(lab[:, 0].flatten(1), self.lightness).view_as(lab[:, 0])
        return lab_to_rgb(moved).to(x.dtype)
