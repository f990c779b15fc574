"""Adversarial objectives: what a discriminator minimises on real and fake logits, and what the generator minimises
on the fake ones. Computed in float32 whatever the autocast.

lsgan: least squares (Mao et al. 2017), CycleGAN's and CUT's default. hinge: the hinge loss of SAGAN/BigGAN, whose
discriminator stops pushing on patches it already gets right. bce: the original non-saturating GAN loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("lsgan", "hinge", "bce")


def check_gan_loss(name: str) -> str:
    if name not in GAN_LOSSES:
        raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {name!r}")
    return name


def lsgan_loss(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
    return F.mse_loss(pred.float(), target.float())


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on its logits for real and (detached) fake images."""
    real, fake = real.float(), fake.float()
    if kind == "lsgan":
        return 0.5 * (lsgan_loss(real, True) + lsgan_loss(fake, False))
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) +
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's logits for its images."""
    fake = fake.float()
    if kind == "lsgan":
        return lsgan_loss(fake, True)
    if kind == "hinge":
        return -fake.mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
