"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout on real and fake images.

Applied to both before the discriminator, it stops a discriminator from memorising a small set
(300 Monet paintings) while the generator still receives gradients through the augmentation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def diff_augment(x: torch.Tensor, policy: str = "color,translation,cutout") -> torch.Tensor:
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in POLICIES:
            raise ValueError(f"unknown DiffAugment policy {name!r}; choose from {', '.join(POLICIES)}")
        x = _AUGMENTS[name](x)
    return x.contiguous()


def _color(x: torch.Tensor) -> torch.Tensor:
    b = x.size(0)
    rand = lambda: torch.rand(b, 1, 1, 1, dtype=x.dtype, device=x.device)  # noqa: E731
    x = x + (rand() - 0.5)                                         # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand() * 2) + mean                           # saturation
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean                      # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gy = torch.clamp(gy.unsqueeze(0) + ty + 1, 0, h + 1)          # (B, H, W) indices into the padded image
    gx = torch.clamp(gx.unsqueeze(0) + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])                                # (B, C, H+2, W+2), zero border
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[bi, gy, gx].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of `ratio` of the size in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    y0, x0 = oy - ch // 2, ox - cw // 2                            # top-left corner, may lie outside
    gy, gx = gy.unsqueeze(0), gx.unsqueeze(0)
    inside = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENTS = {"color": _color, "translation": _translation, "cutout": _cutout}
