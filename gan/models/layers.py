"""Helpers every model shares: the papers' weight init, freezing, DDP unwrapping, the one autocast rule, and the
optional torch.compile of the networks a training step calls."""
from __future__ import annotations

import torch
import torch.nn as nn


def check_one_of(name: str, value, choices: tuple) -> None:
    """A config field that must be one of `choices`: a ValueError naming the field otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) init as in the CycleGAN and DCGAN papers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module under a DDP wrapper: used where no gradient sync is wanted."""
    return getattr(module, "module", module)


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device: torch.device | str, precision: str = "auto"):
    """bf16 autocast (fp32 master weights stay in the optimizer): on CUDA with "auto", anywhere with "bf16";
    plain fp32 with "fp32", and with "auto" off CUDA."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compiled(module: nn.Module, mode: str | None) -> nn.Module:
    """What a training step calls: `module` itself, or with a `mode` a torch.compile view of it that shares its
    parameters (so optimizers, DDP, state dicts and checkpoints see the plain module; a compiled run's checkpoint
    loads in an eager one and back). "reduce-overhead" adds CUDA graphs on CUDA."""
    if check_compile(mode) is None:
        return module
    return torch.compile(module, mode=mode)


def check_compile(mode: str | None) -> str | None:
    """`mode` when it is None or a torch.compile mode; else the one-line error (the driver checks before Ray)."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


def mark_step(mode: str | None) -> None:
    """Tell CUDA graphs (compile mode "reduce-overhead") that a new training step begins: the last step's graph
    outputs may then be overwritten. A no-op otherwise."""
    if mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
