"""CUT / FastCUT (Park et al., ECCV 2020): one-sided photo -> Monet translation. One generator and one discriminator;
content is kept by PatchNCE (each output patch must match its own input patch against the image's other patches,
in the generator's own encoder features) instead of a second generator and a cycle: about half of CycleGAN's
compute per step. After taesungp/contrastive-unpaired-translation `models/cut_model.py`; FastCUT's settings
(NCE weight 10, no identity NCE, flip equivariance) are the defaults.

Beyond the paper, for short runs: a ResNet or U-Net generator that is `residual` (starts as its input) and may
start from the `colour`-transferred photo (`gan.models.colour`); a low-pass content term (the output, blurred, stays
its input, blurred: the layout is kept and the texture left free); the adversarial loss by name
(`gan.models.losses`); DiffAugment on the discriminator's inputs; an EMA of the generator; a separate
discriminator LR.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gan.io.images import decode_image, to_tensor
from gan.models.colour import lightness_quantiles, target_stats
from gan.models.diffaugment import diff_augment
from gan.models.inference import Stylize
from gan.models.layers import autocast, check_one_of, compiled, mark_step, set_requires_grad, unwrap
from gan.models.losses import check_gan_loss, d_loss, g_loss
from gan.models.networks import (D_NORMS, UPSAMPLE, PatchDiscriminator, PatchSampler, ResnetGenerator, UnetGenerator,
                                 check_strength, feature_norm, patch_nce)
from gan.models.schedule import adam, apply_lr, linear_decay, load_optimizer
from gan.models.spec import ModelSpec
from gan.models.texture import RandomTexture

GENERATORS = ("resnet", "unet")
TEXTURE_CROPS = 4  # crops per painting that the texture loss's target is fitted on
PREPROCESS = ("resize_and_crop", "crop")


@dataclass
class CUTConfig:
    image_size: int = 256   # training crop size
    generator: str = "resnet"  # resnet (ngf, n_blocks) | unet (ngf, n_down)
    ngf: int = 64
    n_blocks: int = 9
    n_down: int = 5
    g_norm: str = "instance"  # or "none": the generator computes the same on a training crop as on a whole image
    ndf: int = 64
    n_layers_d: int = 3
    d_norm: str = "instance"  # or "spectral": spectral norm on the discriminator's convolutions, no feature norm
    upsample: str = "resize"
    residual: bool = True   # output = input + a learned change (starts as the input)
    colour: bool = False    # colour-transfer the input to the paintings' Lab statistics first (fixed, no learning)
    colour_lightness: bool = False  # with colour: match L* to the paintings' histogram, not only its mean and std
    lambda_gan: float = 1.0
    lambda_nce: float = 10.0  # FastCUT; CUT is 1 with nce_idt
    lambda_lowpass: float = 0.0  # L1 between input and output at 1/lowpass_scale size: the layout and its colours
    lowpass_scale: int = 8       # stay, the texture below that scale is the generator's to paint
    lambda_texture: float = 0.0  # random-filter Gram statistics of the output against the paintings' (texture.py)
    nce_idt: bool = False     # PatchNCE on paintings through the generator too (CUT's identity term)
    nce_layers: str = ""      # encoder layers for PatchNCE, comma-separated; "" = the generator's own choice
    num_patches: int = 256
    nce_t: float = 0.07
    flip_equivariance: bool = True  # FastCUT: a flipped photo must give the flipped painting
    gan_loss: str = "lsgan"
    lr: float = 2e-4
    lr_d: float = 0.0         # the discriminator's LR; 0 = lr
    beta1: float = 0.5
    epochs: int = 200
    decay_epochs: int = 100
    diffaugment: str = ""
    ema: float = 0.0
    strength: float = 1.0     # at inference, this share of the way from the (colour-staged) photo to the painting
    preprocess: str = "crop"  # crops of the 256 px images (the scale of inference) | the paper's resize + crop

    def __post_init__(self):
        check_one_of("generator", self.generator, GENERATORS)
        check_one_of("upsample", self.upsample, UPSAMPLE)
        check_one_of("preprocess", self.preprocess, PREPROCESS)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        check_gan_loss(self.gan_loss)
        check_strength(self.strength)
        feature_norm(self.g_norm)
        check_one_of("d_norm", self.d_norm, D_NORMS)
        self.layers()

    def layers(self) -> list[int] | None:
        try:
            return [int(v) for v in self.nce_layers.split(",")] if self.nce_layers.strip() else None
        except ValueError:
            raise ValueError(f"nce_layers must be comma-separated layer numbers, got {self.nce_layers!r}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def build_generator(cfg: CUTConfig) -> ResnetGenerator | UnetGenerator:
    kw = {"upsample": cfg.upsample, "residual": cfg.residual, "colour": cfg.colour, "norm": cfg.g_norm,
          "strength": cfg.strength}
    if cfg.generator == "unet":
        return UnetGenerator(cfg.ngf, cfg.n_down, **kw)
    return ResnetGenerator(cfg.ngf, cfg.n_blocks, **kw)


class CUTTrainer:
    """The generator, its PatchNCE heads, the discriminator, their optimizers and LR schedules, and an EMA."""

    def __init__(self, cfg: CUTConfig, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0, precision: str = "auto",
                 fused: bool | None = None, compile: str | None = None):
        torch.manual_seed(seed)
        self.cfg, self.device, self.precision, self.compile = cfg, torch.device(device), precision, compile
        self.seed = seed
        g = build_generator(cfg).to(self.device)
        self.layers = cfg.layers() or g.nce_layers()
        with torch.no_grad():  # the heads are sized by the encoder's channels at these layers
            channels = [f.shape[1] for f in g.encode(torch.zeros(1, 3, 32, 32, device=self.device), self.layers)]
        self.g = wrap(g)
        self.f = wrap(PatchSampler(channels).to(self.device)) if cfg.lambda_nce > 0 else None
        self.d = wrap(PatchDiscriminator(cfg.ndf, cfg.n_layers_d, norm=cfg.d_norm).to(self.device))
        self._g, self._d, self._frozen_d = (compiled(m, compile) for m in (self.g, self.d, unwrap(self.d)))
        betas = (cfg.beta1, 0.999)
        g_params = itertools.chain(self.g.parameters(), self.f.parameters() if self.f is not None else [])
        self.opt_g = adam(g_params, cfg.lr, betas, self.device, fused)
        self.opt_d = adam(self.d.parameters(), cfg.lr_d or cfg.lr, betas, self.device, fused)
        rule = linear_decay(cfg.epochs, cfg.decay_epochs)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.ema = (AveragedModel(unwrap(self.g), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema > 0 else None)
        self.texture = RandomTexture(seed=seed).to(self.device) if cfg.lambda_texture > 0 else None

    @property
    def generator(self) -> nn.Module:
        """The photo -> Monet generator that checkpoints export (its moving average with ema)."""
        return self.ema.module if self.ema is not None else unwrap(self.g)

    def data_init(self, images: dict[str, list[tuple[str, bytes]]]) -> None:
        """What is fitted to the paintings, once: with `colour`, the transfer's target, their average Lab statistics
        and, with `colour_lightness`, L* quantiles (in every copy of the generator; checkpoints carry them as
        buffers); with a texture loss, their random-filter covariances over crops of the training size
        (`TEXTURE_CROPS` per painting, drawn from the seed)."""
        if not (self.cfg.colour or self.texture is not None):
            return
        paintings = torch.stack([to_tensor(decode_image(data, name)) for name, data in images["paintings"]])
        if self.cfg.colour:
            mean, std = target_stats(paintings)
            lightness = lightness_quantiles(paintings, seed=self.seed) if self.cfg.colour_lightness else None
            for g in filter(None, (unwrap(self.g), self.ema.module if self.ema is not None else None)):
                g.colour.set_target(mean.to(self.device), std.to(self.device),
                                    lightness.to(self.device) if lightness is not None else None)
        if self.texture is not None:
            size, gen = self.cfg.image_size, torch.Generator().manual_seed(self.seed)
            room = paintings.shape[-1] - size + 1
            corners = torch.randint(0, room, (len(paintings), TEXTURE_CROPS, 2), generator=gen).tolist()
            crops = torch.stack([p[:, y:y + size, x:x + size] for p, cs in zip(paintings, corners) for y, x in cs])
            self.texture.fit(crops[i:i + 64] for i in range(0, len(crops), 64))

    def _d_in(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.diffaugment) if self.cfg.diffaugment else x

    def _nce(self, source: torch.Tensor, output: torch.Tensor, flipped: bool) -> torch.Tensor:
        """PatchNCE between the generator's encoder features of its input and of its output, averaged over layers."""
        g = unwrap(self.g)
        queries = g.encode(output, self.layers)
        if flipped:  # the output came from the flipped input: flip its features back onto the input's positions
            queries = [q.flip(3) for q in queries]
        keys = g.encode(source, self.layers)
        k, where = self.f(keys, self.cfg.num_patches)
        q, _ = self.f(queries, self.cfg.num_patches, where)
        return sum(patch_nce(qi, ki, self.cfg.nce_t) for qi, ki in zip(q, k)) / len(q)

    def _lowpass(self, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """L1 between the generator's input (colour-transferred when `colour`) and its output, both averaged over
        lowpass_scale x lowpass_scale squares."""
        g, k = unwrap(self.g), self.cfg.lowpass_scale
        target = g.colour(source) if g.colour is not None else source
        return F.l1_loss(F.avg_pool2d(output.float(), k), F.avg_pool2d(target.detach().float(), k))

    def step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step on a batch of photos (A) and paintings (B), each (B, 3, H, W) in [-1, 1]: D, then G."""
        cfg = self.cfg
        real_a, real_b = (x.to(self.device, non_blocking=True) for x in (real_a, real_b))
        n = len(real_a)
        flipped = cfg.flip_equivariance and bool(torch.rand(()) < 0.5)
        source = real_a.flip(3) if flipped else real_a
        mark_step(self.compile)
        with autocast(self.device, self.precision):
            fake = self._g(torch.cat([source, real_b]) if cfg.nce_idt else source)  # (B or 2B, 3, H, W)
        fake_b = fake[:n]

        # Discriminator: paintings against the current fakes (no history pool, as CUT).
        set_requires_grad([unwrap(self.d)], True)
        self.opt_d.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss_d = d_loss(cfg.gan_loss, self._d(self._d_in(real_b)), self._d(self._d_in(fake_b.detach())))
        loss_d.backward()
        self.opt_d.step()

        # Generator: fool the (frozen, unwrapped) discriminator; keep each patch's content (PatchNCE).
        set_requires_grad([unwrap(self.d)], False)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss_gan = g_loss(cfg.gan_loss, self._frozen_d(self._d_in(fake_b))) * cfg.lambda_gan
            zero = torch.zeros((), device=self.device)
            loss_nce = self._nce(real_a, fake_b, flipped) * cfg.lambda_nce if self.f is not None else zero
            if self.f is not None and cfg.nce_idt:
                loss_nce = 0.5 * (loss_nce + self._nce(real_b, fake[n:], False) * cfg.lambda_nce)
            loss_lowpass = self._lowpass(source, fake_b) * cfg.lambda_lowpass if cfg.lambda_lowpass > 0 else zero
            loss_texture = self.texture.loss(fake_b) * cfg.lambda_texture if self.texture is not None else zero
            loss_g = loss_gan + loss_nce + loss_lowpass + loss_texture
        loss_g.backward()
        self.opt_g.step()
        set_requires_grad([unwrap(self.d)], True)
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.g))
        return {"loss_g": loss_gan.detach(), "loss_nce": loss_nce.detach(), "loss_lowpass": loss_lowpass.detach(),
                "loss_texture": loss_texture.detach(), "loss_d": loss_d.detach()}

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    def state_dict(self) -> dict:
        nets = {k: unwrap(getattr(self, k)).state_dict() for k in ("g", "d") + (("f",) if self.f is not None else ())}
        if self.texture is not None:
            nets["texture"] = self.texture.state_dict()
        return {**nets, "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        for k in ("g", "d") + (("f",) if self.f is not None else ()) + (("texture",) if self.texture is not None else ()):
            unwrap(getattr(self, k)).load_state_dict(state[k])
        load_optimizer(self.opt_g, state["opt_g"])
        load_optimizer(self.opt_d, state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        apply_lr(self.opt_g, self.cfg.lr, self.sched_g)
        apply_lr(self.opt_d, self.cfg.lr_d or self.cfg.lr, self.sched_d)
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


def _config(settings: dict, epochs: int) -> CUTConfig:
    """The LR decays over the run's second half unless the settings say otherwise."""
    return CUTConfig(**{"epochs": epochs, "decay_epochs": epochs // 2, **settings})


SPEC = ModelSpec("cut", CUTConfig, build_generator, CUTTrainer, Stylize(), make_config=_config)
