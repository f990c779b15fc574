"""Every model kind by name: training, checkpoints, the batch jobs and Serve find a kind's pieces here.

Kinds of your own: modules named in $GAN_MODELS (comma-separated, importable where the jobs run), each with a
`SPEC`; on a cluster, set it in the job's runtime environment so every worker, actor and replica sees it.
"""
from __future__ import annotations

import importlib
import os

from gan.models import cut, cyclegan, dcgan
from gan.models.spec import ModelSpec

MODELS_ENV = "GAN_MODELS"
MODELS: dict[str, ModelSpec] = {spec.kind: spec for spec in (cyclegan.SPEC, cut.SPEC, dcgan.SPEC)}
_loaded: set[str] = set()


def register(spec: ModelSpec) -> ModelSpec:
    """Add a kind (or replace one of the same name) in this process."""
    MODELS[spec.kind] = spec
    return spec


def _load_plugins() -> None:
    """Import the modules $GAN_MODELS names (once each) and register their SPEC."""
    for name in filter(None, (n.strip() for n in os.environ.get(MODELS_ENV, "").split(","))):
        if name in _loaded:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"${MODELS_ENV}: cannot import model module {name!r} ({e})") from None
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, ModelSpec):
            raise ValueError(f"${MODELS_ENV}: module {name!r} has no SPEC (a gan.models.spec.ModelSpec)")
        register(spec)
        _loaded.add(name)


def known() -> dict[str, ModelSpec]:
    _load_plugins()
    return MODELS


def get_model(kind: str) -> ModelSpec:
    try:
        return known()[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}") from None
