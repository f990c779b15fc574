"""Every model kind by name: training, checkpoints, the batch jobs and Serve find a kind's pieces here."""
from __future__ import annotations

from gan.models import cyclegan, dcgan
from gan.models.spec import ModelSpec

MODELS: dict[str, ModelSpec] = {spec.kind: spec for spec in (cyclegan.SPEC, dcgan.SPEC)}


def get_model(kind: str) -> ModelSpec:
    try:
        return MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}") from None


def kind_for(task: str) -> str:
    """The model kind whose generator a batch job ("stylize" or "generate") runs."""
    return next(spec.kind for spec in MODELS.values() if spec.task == task)
