"""CycleGAN (Zhu et al. 2017): two ResNet generators, two 70x70 PatchGANs, LSGAN + cycle + identity losses, and
one training step. The networks are `gan.models.networks`' (after junyanz/pytorch-CycleGAN-and-pix2pix). Domain A
is photos, B is Monet. The step is plain PyTorch: the Ray Train job passes `wrap=ray.train.torch.prepare_model`.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gan.models.diffaugment import diff_augment
from gan.models.image_pool import ImagePool
from gan.models.inference import Stylize
from gan.models.layers import autocast, check_one_of, compiled, mark_step, set_requires_grad, unwrap
from gan.models.losses import lsgan_loss
from gan.models.networks import UPSAMPLE, PatchDiscriminator, ResnetGenerator
from gan.models.schedule import adam, apply_lr, linear_decay, load_optimizer
from gan.models.spec import ModelSpec

PREPROCESS = ("resize_and_crop", "crop")


@dataclass
class CycleGANConfig:
    image_size: int = 256
    ngf: int = 64           # generator width
    n_blocks: int = 9       # residual blocks (9 for 256 px in the paper, 6 for 128 px)
    ndf: int = 64           # discriminator width
    n_layers_d: int = 3     # 3 gives the 70x70 receptive field
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle
    lr: float = 2e-4
    beta1: float = 0.5
    epochs: int = 200       # total epochs: constant LR for `epochs - decay_epochs`, then linear decay to 0
    decay_epochs: int = 100
    pool_size: int = 50
    diffaugment: str = ""   # e.g. "color,translation,cutout"
    upsample: str = "transpose"  # "transpose" (the paper's) or "resize": nearest x2 + conv, no checkerboard
    ema: float = 0.0        # decay of an exponential moving average of the generator (exported); 0 = off
    residual: bool = False  # generator output = input + a learned change, so it starts as the identity
    preprocess: str = "resize_and_crop"  # training crops: the paper's resize to 1.12x image_size + crop, or
                                         # "crop": image_size crops of the 256 px images, at the scale of inference

    def __post_init__(self):
        check_one_of("upsample", self.upsample, UPSAMPLE)
        check_one_of("preprocess", self.preprocess, PREPROCESS)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_generator(cfg: CycleGANConfig) -> ResnetGenerator:
    return ResnetGenerator(cfg.ngf, cfg.n_blocks, upsample=cfg.upsample, residual=cfg.residual)


class CycleGANTrainer:
    """Both generators, both discriminators, their optimizers, LR schedules and image pools.

    `wrap` turns each network into its distributed form (DDP); the discriminators are called unwrapped
    in the generator step, where their parameters are frozen and must not take part in DDP's gradient sync.
    """

    def __init__(self, cfg: CycleGANConfig, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m, seed: int = 0, precision: str = "auto",
                 fused: bool | None = None, channels_last: bool | None = None, compile: str | None = None):
        torch.manual_seed(seed)
        self.cfg, self.device, self.precision, self.compile = cfg, torch.device(device), precision, compile
        # NHWC feeds the tensor cores' convolutions without transposes; on CUDA unless told (CPU: NCHW)
        self.memory_format = (torch.channels_last if (self.device.type == "cuda" if channels_last is None
                                                      else channels_last) else torch.contiguous_format)
        make_g = lambda: build_generator(cfg).to(self.device, memory_format=self.memory_format)  # noqa: E731
        make_d = lambda: PatchDiscriminator(cfg.ndf, cfg.n_layers_d).to(self.device,  # noqa: E731
                                                                        memory_format=self.memory_format)
        self.g_ab, self.g_ba = wrap(make_g()), wrap(make_g())  # photo -> Monet, Monet -> photo
        self.d_a, self.d_b = wrap(make_d()), wrap(make_d())    # judges photos, judges Monets
        # what step() calls: these networks, or with `compile` torch.compile views of them (the same parameters);
        # the frozen discriminators of the generator step are called unwrapped, outside DDP
        self._nets = tuple(compiled(m, compile) for m in (self.g_ab, self.g_ba, self.d_a, self.d_b))
        self._frozen_d = tuple(compiled(unwrap(m), compile) for m in (self.d_a, self.d_b))
        betas = (cfg.beta1, 0.999)
        self.opt_g = adam(itertools.chain(self.g_ab.parameters(), self.g_ba.parameters()), cfg.lr, betas, self.device, fused)
        self.opt_d = adam(itertools.chain(self.d_a.parameters(), self.d_b.parameters()), cfg.lr, betas, self.device, fused)
        rule = linear_decay(cfg.epochs, cfg.decay_epochs)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, seed), ImagePool(cfg.pool_size, seed + 1)
        self.ema = (AveragedModel(unwrap(self.g_ab), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
                    if cfg.ema > 0 else None)

    @property
    def generator(self) -> nn.Module:
        """The photo -> Monet generator that the batch jobs and the server use (its moving average with ema)."""
        return self.ema.module if self.ema is not None else unwrap(self.g_ab)

    def data_init(self, images: dict) -> None:
        pass  # nothing is fitted to the data

    def _d_in(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.cfg.diffaugment) if self.cfg.diffaugment else x

    def step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch of photos (A) and paintings (B), each (B, 3, H, W) in [-1, 1]."""
        cfg = self.cfg
        real_a, real_b = (x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                          for x in (real_a, real_b))  # (B, 3, H, W) each
        lam_idt = cfg.lambda_cycle * cfg.lambda_identity
        mark_step(self.compile)
        g_ab, g_ba, d_a, d_b = self._nets
        frozen_d_a, frozen_d_b = self._frozen_d
        plain_d = [unwrap(self.d_a), unwrap(self.d_b)]  # what freezing and unfreezing act on

        # Generators: fool both (frozen, unwrapped) discriminators, reconstruct both ways, keep colours.
        set_requires_grad(plain_d, False)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            loss_gan = (lsgan_loss(frozen_d_b(self._d_in(fake_b)), True) +
                        lsgan_loss(frozen_d_a(self._d_in(fake_a)), True))
            loss_cycle = (F.l1_loss(rec_a.float(), real_a) + F.l1_loss(rec_b.float(), real_b)) * cfg.lambda_cycle
            if lam_idt > 0:
                loss_idt = (F.l1_loss(g_ab(real_b).float(), real_b) +
                            F.l1_loss(g_ba(real_a).float(), real_a)) * lam_idt
            else:
                loss_idt = torch.zeros((), device=self.device)
            loss_g = loss_gan + loss_cycle + loss_idt
        loss_g.backward()
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update_parameters(unwrap(self.g_ab))

        # Discriminators: real vs. a fake drawn from the history pool.
        set_requires_grad(plain_d, True)
        self.opt_d.zero_grad(set_to_none=True)
        pooled_b = self.pool_b.query(fake_b.detach().float())
        pooled_a = self.pool_a.query(fake_a.detach().float())
        with autocast(self.device, self.precision):
            loss_d_b = 0.5 * (lsgan_loss(d_b(self._d_in(real_b)), True) +
                              lsgan_loss(d_b(self._d_in(pooled_b)), False))
            loss_d_a = 0.5 * (lsgan_loss(d_a(self._d_in(real_a)), True) +
                              lsgan_loss(d_a(self._d_in(pooled_a)), False))
            loss_d = loss_d_a + loss_d_b
        loss_d.backward()
        self.opt_d.step()
        # detached 0-dim tensors on the device: reading them (.item()) would wait for the GPU at every step
        return {"loss_g": loss_gan.detach(), "loss_cycle": loss_cycle.detach(), "loss_identity": loss_idt.detach(),
                "loss_d": loss_d.detach()}

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()

    def state_dict(self) -> dict:
        nets = {k: unwrap(getattr(self, k)).state_dict() for k in ("g_ab", "g_ba", "d_a", "d_b")}
        return {**nets, "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict(),
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        for k in ("g_ab", "g_ba", "d_a", "d_b"):
            unwrap(getattr(self, k)).load_state_dict(state[k])
        load_optimizer(self.opt_g, state["opt_g"])
        load_optimizer(self.opt_d, state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        apply_lr(self.opt_g, self.cfg.lr, self.sched_g)
        apply_lr(self.opt_d, self.cfg.lr, self.sched_d)
        if "pool_a" in state:
            self.pool_a.load_state_dict(state["pool_a"], self.device)
            self.pool_b.load_state_dict(state["pool_b"], self.device)
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


def _config(settings: dict, epochs: int) -> CycleGANConfig:
    """The LR decays over the run's second half unless the settings say otherwise."""
    return CycleGANConfig(**{"epochs": epochs, "decay_epochs": epochs // 2, **settings})


SPEC = ModelSpec("cyclegan", CycleGANConfig, build_generator, CycleGANTrainer, Stylize(), make_config=_config)
