"""The image-to-image networks, as named factories: ResNet and U-Net generators, the PatchGAN discriminator, and
the patch sampler of PatchNCE. After junyanz/pytorch-CycleGAN-and-pix2pix and taesungp/contrastive-unpaired-
translation `models/networks.py`.

Generators map (B, 3, H, W) in [-1, 1] to the same, at any size their downsampling divides. Two options are shared:
`residual` (predict a change added to the input; the last layer starts at zero, so training starts from the input
itself) and `colour` (a fixed colour transfer to the paintings' statistics first, `gan.models.colour`: the network
then learns only what a colour shift cannot give). `encode(x, layers)` returns the encoder's features at the named
layers, for PatchNCE.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gan.models.colour import ColourTransfer
from gan.models.layers import check_one_of, init_weights

UPSAMPLE = ("transpose", "resize")


def check_strength(strength: float) -> float:
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"strength must be in [0, 2] (1: the painting as trained), got {strength}")
    return float(strength)
G_NORMS = ("instance", "none")


def feature_norm(kind: str):
    """Instance norm (the papers'), or none: a generator without it computes the same on a crop as on the whole
    image, so what it learns on training crops is what it does at 256 px. Either keeps the layers' indices."""
    check_one_of("g_norm", kind, G_NORMS)
    return nn.InstanceNorm2d if kind == "instance" else (lambda channels: nn.Identity())


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str = "instance"):
        super().__init__()
        n = feature_norm(norm)
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), n(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), n(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def upsampler(cin: int, cout: int, kind: str) -> nn.Module:
    """x2 upsampling: the paper's transposed convolution, or resize-convolution (Odena et al. 2016), whose kernel
    overlap is even everywhere, so it paints no checkerboard. One module either way, so layer indices (and the
    checkpoints of the paper's generator) stay as they were."""
    check_one_of("upsample", kind, UPSAMPLE)
    if kind == "transpose":
        return nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3))


class _Generator(nn.Module):
    """What both generators share: the optional colour stage before the network, the residual after it, and the
    strength: in eval mode (scoring, export, the jobs, Serve) the output is `strength` of the way from the staged
    input to the network's painting; training always sees the whole painting."""
    residual: bool
    colour: ColourTransfer | None
    strength: float = 1.0

    def _setup_output(self, last: nn.Conv2d, residual: bool, colour: bool, strength: float = 1.0) -> None:
        init_weights(self)
        self.residual = residual
        self.colour = ColourTransfer() if colour else None
        self.strength = check_strength(strength)
        if residual:  # the change starts at zero: the generator starts as its input
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self.colour(x) if self.colour is not None else x

    def _output(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.residual:  # (B, 3, H, W) + a change in [-1, 1], back into the image range
            y = (x + y).clamp(-1.0, 1.0)
        if self.training or self.strength == 1.0:
            return y
        return (x + self.strength * (y - x)).clamp(-1.0, 1.0)


class ResnetGenerator(_Generator):
    """Reflection-padded 7x7 stem, 2 stride-2 downsamplings, `n_blocks` residual blocks at 1/4 size, 2 upsamplings,
    a 7x7 head with tanh (Johnson et al. 2016, as CycleGAN). With `residual`, the output is the input plus this
    network's change, so a short run spends its steps on colour and brushwork rather than relearning the scene."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, channels: int = 3, upsample: str = "transpose",
                 residual: bool = False, colour: bool = False, norm: str = "instance", strength: float = 1.0):
        super().__init__()
        n = feature_norm(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), n(ngf), nn.ReLU(True),
        ]
        for mult in (1, 2):  # (B, ngf, H, W) -> (B, 4ngf, H/4, W/4)
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), n(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm) for _ in range(n_blocks)]
        for mult in (4, 2):  # (B, 4ngf, H/4, W/4) -> (B, ngf, H, W)
            layers += [upsampler(ngf * mult, ngf * mult // 2, upsample), n(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.n_blocks = n_blocks
        self._setup_output(self.model[-2], residual, colour, strength)

    def nce_layers(self) -> list[int]:
        """PatchNCE's default layers (CUT's 0,4,8,12,16 in this layout): the padded input, both downsamplings, the
        first residual block and the middle one."""
        first = 10  # index of the first residual block
        return sorted({0, 4, 7, first, first + self.n_blocks // 2})

    def encode(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """The features after each of `layers` (indices into `model`), in order, from the colour-staged input."""
        feats, h, last = [], self._input(x), max(layers)
        for i, layer in enumerate(self.model):
            h = layer(h)
            if i in layers:
                feats.append(h)
            if i == last:
                break
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        return self._output(x, self.model(x))


class UnetGenerator(_Generator):
    """U-Net (Ronneberger et al. 2015, as pix2pix): `n_down` stride-2 levels (widths ngf, 2ngf, ... capped at
    8ngf), each mirrored by an upsampling that concatenates the level's features; instance norm, LeakyReLU down,
    ReLU up. Most of its work is at low resolution, so per pixel it costs far less than the ResNet generator, and
    its skips carry the photo's layout, leaving the deep levels to learn style."""

    def __init__(self, ngf: int = 32, n_down: int = 5, channels: int = 3, upsample: str = "resize",
                 residual: bool = True, colour: bool = False, norm: str = "instance", strength: float = 1.0):
        super().__init__()
        n = feature_norm(norm)
        widths = [ngf * min(2 ** i, 8) for i in range(n_down)]      # per level, after its downsampling
        self.stem = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, ngf // 2, 3),
                                  n(ngf // 2), nn.LeakyReLU(0.2, True))  # (B, ngf/2, H, W)
        ins = [ngf // 2] + widths[:-1]
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), n(cout), nn.LeakyReLU(0.2, True))
            for cin, cout in zip(ins, widths))                         # level i: (B, widths[i], H/2^(i+1), ...)
        # up j mirrors down level n_down-1-j: its input is the deeper output (+ that level's skip, but the deepest)
        ups = []
        for j, level in enumerate(reversed(range(n_down))):
            cin = widths[level] * (1 if j == 0 else 2)
            cout = ins[level]
            ups.append(nn.Sequential(upsampler(cin, cout, upsample), n(cout), nn.ReLU(True)))
        self.up = nn.ModuleList(ups)
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ngf, channels, 3), nn.Tanh())  # stem skip in
        self.n_down = n_down
        self._setup_output(self.head[1], residual, colour, strength)

    def nce_layers(self) -> list[int]:
        """The stem and each downsampling level but the deepest (0 = stem, k = level k)."""
        return list(range(self.n_down))

    def encode(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        feats, h = [], self.stem(self._input(x))
        if 0 in layers:
            feats.append(h)
        for k, down in enumerate(self.down, start=1):
            if k > max(layers):
                break
            h = down(h)
            if k in layers:
                feats.append(h)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        skips = [self.stem(x)]                     # (B, ngf/2, H, W)
        for down in self.down:
            skips.append(down(skips[-1]))          # halves H, W each
        h = skips.pop()                            # the deepest level, (B, widths[-1], H/2^n, W/2^n)
        for up in self.up:
            h = torch.cat([up(h), skips.pop()], 1)  # doubles H, W; concatenates that level's skip
        return self._output(x, self.head(h))


D_NORMS = ("instance", "spectral")


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) -> (B, 1, H/8 - 2, W/8 - 2) real/fake logits, one per 70x70 patch (n_layers 3).

    `norm`: instance norm between the convolutions (the paper's), or spectral norm on every convolution and no
    feature norm (Miyato et al. 2018: a discriminator whose gradients stay smooth, so the generator's steer)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, channels: int = 3, norm: str = "instance"):
        super().__init__()
        check_one_of("d_norm", norm, D_NORMS)
        spectral = norm == "spectral"
        feature_norm = (lambda c: nn.Identity()) if spectral else nn.InstanceNorm2d  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1), feature_norm(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)
        init_weights(self)
        if spectral:
            for m in self.model:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchSampler(nn.Module):
    """PatchNCE's projection head (CUT's PatchSampleF, "mlp_sample"): from each encoder feature map, the same
    `count` random positions of every image, each through a two-layer MLP (one per layer) and L2-normalised.

    The MLPs are built for the channel counts given, so the module exists before the first step (a data-dependent
    lazy init, as the reference has, would not survive DDP wrapping or a checkpoint load)."""

    def __init__(self, channels: list[int], width: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width))
                                  for c in channels)
        init_weights(self)

    def forward(self, feats: list[torch.Tensor], count: int, positions: list[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, C, H, W) per layer -> (B, S, width) per layer, and the positions drawn (S = min(count, H*W))."""
        out, drawn = [], []
        for k, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            flat = feat.flatten(2).transpose(1, 2)                    # (B, H*W, C)
            where = (positions[k] if positions is not None else
                     torch.randperm(flat.shape[1], device=feat.device)[:count])
            picked = mlp(flat[:, where].float())                      # (B, S, width)
            out.append(F.normalize(picked, dim=-1))
            drawn.append(where)
        return out, drawn


def patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE (Park et al. 2020): each output patch (`query`, (B, S, C)) must pick its own input patch (`key`)
    among the other S - 1 patches of the same image; cross-entropy over the S logits, averaged."""
    b, s, _ = query.shape
    logits = query @ key.detach().transpose(1, 2) / temperature     # (B, S, S): positives on the diagonal
    return F.cross_entropy(logits.flatten(0, 1), torch.arange(s, device=query.device).repeat(b))
