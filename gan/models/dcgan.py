"""DCGAN (Radford et al. 2015) for 64, 128 and 256 px images, after pytorch/examples `dcgan/main.py`.

The number of up/down blocks follows the image size: 4x4 -> size doubles per block. The discriminator
returns logits and the loss is BCE-with-logits (the numerically safe form of Sigmoid + BCE, also under autocast).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan.models.diffaugment import diff_augment
from gan.models.inference import Sample
from gan.models.layers import autocast, compiled, init_weights, mark_step, set_requires_grad, unwrap
from gan.models.spec import ModelSpec
from gan.models.schedule import adam, apply_lr, load_optimizer

SIZES = (64, 128, 256)


@dataclass
class DCGANConfig:
    image_size: int = 64
    nz: int = 100       # latent size
    ngf: int = 64
    ndf: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    diffaugment: str = ""

    def __post_init__(self):
        if self.image_size not in SIZES:
            raise ValueError(f"DCGAN image_size must be one of {SIZES}, got {self.image_size}")

    @property
    def n_blocks(self) -> int:
        return int(math.log2(self.image_size)) - 3  # 64 -> 3 blocks between the 4x4 and the output layer

    def to_dict(self) -> dict:
        return asdict(self)


def _widths(base: int, n_blocks: int) -> list[int]:
    """Channel widths from the 4x4 end outwards, capped at 8x base (the paper's 64 px net is 8,4,2,1)."""
    return [base * min(2 ** (n_blocks - i), 8) for i in range(n_blocks + 1)]


class DCGANGenerator(nn.Module):
    """(B, nz, 1, 1) noise -> (B, 3, S, S) image in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        w = _widths(cfg.ngf, cfg.n_blocks)
        layers: list[nn.Module] = [nn.ConvTranspose2d(cfg.nz, w[0], 4, 1, 0, bias=False),  # -> (B, w0, 4, 4)
                                   nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w, w[1:]):  # each doubles H and W
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]  # -> (B, 3, S, S)
        self.main = nn.Sequential(*layers)
        self.nz = cfg.nz
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(z.size(0), self.nz, 1, 1))


class DCGANDiscriminator(nn.Module):
    """(B, 3, S, S) image -> (B,) real/fake logits."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        w = _widths(cfg.ndf, cfg.n_blocks)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(3, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]  # -> S/2
        for cin, cout in zip(w, w[1:]):  # each halves H and W
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(w[-1], 1, 4, 1, 0, bias=False)]  # (B, w, 4, 4) -> (B, 1, 1, 1)
        self.main = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class DCGANTrainer:
    """Generator, discriminator, optimizers and the step of the PyTorch example (non-saturating G loss)."""

    def __init__(self, cfg: DCGANConfig, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0, precision: str = "auto",
                 fused: bool | None = None, compile: str | None = None):
        torch.manual_seed(seed)
        self.cfg, self.device, self.precision, self.compile = cfg, torch.device(device), precision, compile
        self.g = wrap(DCGANGenerator(cfg).to(self.device))
        self.d = wrap(DCGANDiscriminator(cfg).to(self.device))
        # what step() calls: these networks or torch.compile views of them (see CycleGANTrainer)
        self._g, self._d, self._frozen_d = (compiled(m, compile) for m in (self.g, self.d, unwrap(self.d)))
        betas = (cfg.beta1, 0.999)
        self.opt_g = adam(self.g.parameters(), cfg.lr, betas, self.device, fused)
        self.opt_d = adam(self.d.parameters(), cfg.lr, betas, self.device, fused)
        self.noise_rng = torch.Generator().manual_seed(seed)

    @property
    def generator(self) -> nn.Module:
        return unwrap(self.g)

    def data_init(self, images: dict) -> None:
        pass  # nothing is fitted to the data

    def _d_in(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.diffaugment) if self.cfg.diffaugment else x

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        real = real.to(self.device, non_blocking=True)
        b = real.size(0)
        z = torch.randn(b, self.cfg.nz, generator=self.noise_rng).to(self.device)
        mark_step(self.compile)
        # Discriminator: real -> 1, fake -> 0 (separate batches, so BatchNorm sees each alone).
        self.opt_d.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            fake = self._g(z)
            out_real = self._d(self._d_in(real)).float()
            out_fake = self._d(self._d_in(fake.detach())).float()
            loss_d = (F.binary_cross_entropy_with_logits(out_real, torch.ones_like(out_real)) +
                      F.binary_cross_entropy_with_logits(out_fake, torch.zeros_like(out_fake)))
        loss_d.backward()
        self.opt_d.step()
        # Generator: make the (frozen, unwrapped) discriminator say 1.
        d = unwrap(self.d)
        set_requires_grad([d], False)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            out = self._frozen_d(self._d_in(fake)).float()
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        loss_g.backward()
        self.opt_g.step()
        set_requires_grad([d], True)
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach(),  # on the device, as CycleGAN's
                "d_real": torch.sigmoid(out_real).mean().detach(), "d_fake": torch.sigmoid(out_fake).mean().detach()}

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {"g": unwrap(self.g).state_dict(), "d": unwrap(self.d).state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "noise_rng": self.noise_rng.get_state()}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.g).load_state_dict(state["g"])
        unwrap(self.d).load_state_dict(state["d"])
        load_optimizer(self.opt_g, state["opt_g"])
        load_optimizer(self.opt_d, state["opt_d"])
        apply_lr(self.opt_g, self.cfg.lr)
        apply_lr(self.opt_d, self.cfg.lr)
        self.noise_rng.set_state(state["noise_rng"])


SPEC = ModelSpec("dcgan", DCGANConfig, DCGANGenerator, DCGANTrainer, Sample(),
                 ddp_kwargs={"broadcast_buffers": False})  # BatchNorm + two D passes per step: see the Ray notes
