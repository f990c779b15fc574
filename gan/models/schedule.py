"""Learning-rate rule of CycleGAN: constant, then linear decay to zero."""
from __future__ import annotations

from typing import Callable


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
