"""Self-describing generator checkpoints: weights plus a small JSON of how to rebuild the network.

One file holds `{"meta": <JSON string>, "state_dict": {name: tensor}}`, readable with
`torch.load(weights_only=True)`, so any job or the server can rebuild a generator from the file alone.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import torch
import torch.nn as nn

from gan.models.registry import get_model, known

FORMAT = "gan-generator/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and the reason."""


@dataclass
class GeneratorCheckpoint:
    kind: str                 # a model kind of gan.models.registry: "cyclegan", "cut" (photo -> Monet), "dcgan" (noise)
    config: dict              # the model's config (CycleGANConfig / DCGANConfig fields)
    state_dict: dict
    epoch: int = 0
    step: int = 0
    arch: str = ""            # the generator's class; files from before it was recorded hold the kind's default

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The generator in eval mode with these weights, rebuilt through the model registry."""
        spec = get_model(self.kind)
        net = spec.generator(spec.config(**self.config))
        if self.arch and self.arch != type(net).__name__:
            raise ValueError(f"architecture {self.arch!r} is not what {self.kind} builds ({type(net).__name__})")
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()


def generator_checkpoint(kind: str, config, generator: nn.Module, epoch: int = 0, step: int = 0) -> GeneratorCheckpoint:
    state = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    return GeneratorCheckpoint(kind, config.to_dict(), state, epoch, step, type(generator).__name__)


def to_bytes(ckpt: GeneratorCheckpoint) -> bytes:
    meta = {"format": FORMAT, "kind": ckpt.kind, "arch": ckpt.arch, "config": ckpt.config, "epoch": ckpt.epoch,
            "step": ckpt.step}
    buf = io.BytesIO()
    torch.save({"meta": json.dumps(meta), "state_dict": ckpt.state_dict}, buf)
    return buf.getvalue()


def from_bytes(data: bytes, source: str = "<bytes>", expect_kind: str | None = None) -> GeneratorCheckpoint:
    """Parse and validate; `source` names the file in every error."""
    if not data:
        raise CheckpointError(f"{source}: checkpoint file is empty")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{source}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict) or "meta" not in obj or "state_dict" not in obj:
        raise CheckpointError(f"{source}: not a generator checkpoint (expected keys 'meta' and 'state_dict'; "
                              "a training-state checkpoint must be exported first with jobs.train --export)")
    try:
        meta = json.loads(obj["meta"])
    except (TypeError, ValueError):
        raise CheckpointError(f"{source}: field 'meta' is not JSON") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{source}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    kind = meta.get("kind")
    if kind not in known():
        raise CheckpointError(f"{source}: field 'kind' is {kind!r}, expected one of {tuple(known())}")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{source}: this is a {kind} generator, but this job needs a {expect_kind} generator")
    ckpt = GeneratorCheckpoint(kind, meta["config"], obj["state_dict"], meta.get("epoch", 0), meta.get("step", 0),
                               meta.get("arch", ""))
    try:
        ckpt.build()
    except (TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{source}: weights do not match the config ({str(e)[:300]})") from None
    return ckpt
