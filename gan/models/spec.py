"""What a model kind is, and nothing more: its config, its generator, its trainer and its `infer` hook.

A model file (cyclegan.py, cut.py, dcgan.py) defines its networks, its Trainer and a `SPEC`; `registry.py` lists the
specs. Everything else finds a kind there: training builds the trainer (and, from what `infer` takes, its data and
sample grids: `gan.train`), checkpoints rebuild the generator from the config, the batch jobs and Serve call `infer`
on photos or seeds. A new kind is one file plus one line in the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from gan.models.inference import Inference

EncodedImages = list[tuple[str, bytes]]  # (name, encoded bytes): the training images as loaded


class Trainer(Protocol):
    """The networks, optimizers and schedules of one model, driven by the training loop."""
    opt_g: torch.optim.Optimizer
    device: torch.device

    @property
    def generator(self) -> nn.Module: ...            # the bare generator that checkpoints export
    def data_init(self, images: dict[str, EncodedImages]) -> None: ...  # anything fitted to the data, once, at start
    def step(self, *batch: torch.Tensor) -> dict[str, torch.Tensor]: ...  # one step; 0-dim losses, on device
    def end_epoch(self) -> None: ...                   # LR schedules
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def _plain_config(config: type) -> Callable[[dict, int], Any]:
    return lambda settings, epochs: config(**settings)


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    config: type                                  # dataclass of sizes and hyperparameters (`image_size` included)
    generator: Callable[[Any], nn.Module]         # config -> generator (what checkpoints hold)
    trainer: Callable[..., Trainer]               # (config, device, wrap, seed, precision, compile) -> Trainer
    infer: Inference                              # (generator, a batch of Photos or Seeds) -> uint8 images
    make_config: Callable[[dict, int], Any] | None = None  # (model settings, epochs) -> config; default config(**)
    ddp_kwargs: dict | None = None                # DistributedDataParallel options

    def build_config(self, settings: dict, epochs: int) -> Any:
        return (self.make_config or _plain_config(self.config))(settings, epochs)
