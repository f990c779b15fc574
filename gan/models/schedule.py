"""Learning-rate rules: CycleGAN's constant-then-linear-decay, and the configured LR over a loaded optimizer."""
from __future__ import annotations

from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_decay(epochs: int, decay_epochs: int) -> Callable[[int], float]:
    """Multiplier for `LambdaLR`: 1 for the first `epochs - decay_epochs` epochs, then down to 0 by the end.

    Same rule as the reference (`1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1)`), with the total given.
    """
    if decay_epochs < 0 or decay_epochs > epochs:
        raise ValueError(f"decay_epochs must be in [0, epochs={epochs}], got {decay_epochs}")
    constant = epochs - decay_epochs

    def rule(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - constant) / float(decay_epochs + 1)

    return rule


def apply_lr(optimizer: torch.optim.Optimizer, lr: float, scheduler: LambdaLR | None = None) -> None:
    """Make a loaded optimizer (and its LambdaLR) follow the configured LR, not the one saved with it.

    A continued run may have another LR than the checkpoint it starts from (a search's population-based
    exploit, or a user's --lr on a resumed run); the LR then resumes at the schedule's current point.
    """
    factor = 1.0
    if scheduler is not None:
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor


def adam(params, lr: float, betas: tuple[float, float], device: torch.device,
         fused: bool | None = None) -> torch.optim.Adam:
    """Adam, fused (one kernel for all parameters, the same update) on CUDA unless `fused` says otherwise."""
    return torch.optim.Adam(params, lr, betas=betas, fused=device.type == "cuda" if fused is None else fused)


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's kernel: a checkpoint saved by a fused (GPU) Adam
    loads into a CPU one and back. Fused Adam keeps each `step` count beside its parameter, the other on the CPU."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, own in zip(optimizer.param_groups, fused):
        group["fused"] = own
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if "step" in st:
                st["step"] = st["step"].to(p.device if own else "cpu", torch.float32)
