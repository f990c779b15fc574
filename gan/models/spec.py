"""What the training loop, checkpoints and batch jobs need to know about a model kind, and nothing more.

A model file (cyclegan.py, dcgan.py) defines its networks, its Trainer and a `SPEC`; `registry.py` lists the
specs. A new kind is one file plus one line there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

EncodedImages = list[tuple[str, bytes]]  # (name, encoded bytes), as gan.train.data loads them


class Trainer(Protocol):
    """The networks, optimizers and schedules of one model, driven by the training loop."""
    opt_g: torch.optim.Optimizer
    device: torch.device

    @property
    def generator(self) -> nn.Module: ...            # the bare generator that checkpoints export
    def step(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]: ...  # one step; 0-dim losses, on device
    def end_epoch(self) -> None: ...                   # LR schedules
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    task: str                                                   # the batch job it serves: "stylize" or "generate"
    config: type                                                # dataclass of sizes and hyperparameters
    make_config: Callable[[dict, int], Any]                     # (model settings, epochs) -> config
    generator: Callable[[Any], nn.Module]                       # config -> generator (what checkpoints hold)
    trainer: Callable[..., Trainer]                             # (config, device, wrap, seed) -> Trainer
    sources: tuple[str, ...]                                    # TrainSettings data fields it trains on
    dataset: Callable[[dict[str, EncodedImages], Any], Dataset]  # ({source: images}, config) -> training set
    sample_inputs: Callable[[dict[str, EncodedImages], Any, int, int], torch.Tensor]  # (.., count, seed)
    sample_grid: Callable[[nn.Module, torch.Tensor], bytes]     # (generator, sample inputs) -> PNG
    eval_inputs: Callable[[dict[str, EncodedImages], int, int], Any]  # (images, count, seed) -> what render takes
    render: Callable[[nn.Module, Any, torch.device], np.ndarray]  # -> (N, 256, 256, 3) uint8, as the jobs make
    ddp_kwargs: dict | None = None                              # DistributedDataParallel options
