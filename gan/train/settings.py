"""A training run's settings: one dataclass, from which `jobs.train`'s flags and the settings a search may vary are
derived, and the checks the driver runs on them before Ray starts.

Model settings (sizes, LR, loss weights) are the fields of the model kind's config (`gan.models`), kept in
`model_config`; `TrainSettings.from_flat` sorts flat settings (flags, a YAML file, a recipe) into the two.
Each field's metadata: `help` (the flag's help), `search` (False: a search cannot vary it), `path` (a location,
made absolute in the driver).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, replace

from gan.io.images import BadImageError, decode_image
from gan.io.sources import read_input, scan_inputs
from gan.io.storage import StorageError, open_storage, resolve_uri
from gan.models.layers import PRECISIONS, check_compile
from gan.models.registry import get_model, known
from gan.train.data import DataError, training_sources


def _f(default, help: str, search: bool = True, path: bool = False, **kw):
    """A settings field with its flag's help and whether a search may vary it."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "search": search, "path": path}, **kw)


@dataclass
class TrainSettings:
    model: str = _f("cyclegan", "model kind (see gan.models.registry)", search=False)
    photos: str | None = _f(None, "photos: folder, s3:// prefix, or TFRecords (models that stylize)",
                            search=False, path=True)
    paintings: str | None = _f(None, "paintings / art: folder, s3:// prefix, or TFRecords", search=False, path=True)
    epochs: int = _f(10, "epochs to train (a rerun with more continues)")
    batch_size: int = _f(1, "images per step per worker: the global batch is this x workers")
    checkpoint_every: int = _f(1, "write a checkpoint every K epochs (and at the end)")
    keep_checkpoints: int = _f(3, "checkpoints kept in the run folder")
    num_workers: int = _f(1, "training workers (the most, with --min-workers)")
    min_workers: int | None = _f(None, "elastic: start with at least this many, go on with them after a node is lost")
    worker_resources: dict = _f(dict, 'custom Ray resources each worker needs, e.g. \'{"trainer": 1}\'')
    use_gpu: bool = _f(False, "train on GPUs (one per worker, or --gpus-per-worker)")
    precision: str = _f("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32")
    compile: str | None = _f(None, "torch.compile the networks of the training step (default mode without a MODE; "
                                   "reduce-overhead adds CUDA graphs): a one-off compile per worker")
    cpus_per_worker: float = _f(1.0, "CPUs each worker asks Ray for")
    gpus_per_worker: float = _f(1.0, "with --use-gpu; a fraction shares a GPU (several search trials on one)")
    loader_workers: int = _f(0, "DataLoader processes per worker")
    data_on_device: bool | None = _f(None, "decode the images once into the device's memory and cut batches there "
                                           "(default: on CUDA when they take under a quarter of it)")
    max_failures: int = _f(2, "worker restarts from the last checkpoint before the run fails")
    seed: int = _f(0, "seed of the weights, the data order and the augmentation")
    sample_count: int = _f(4, "images in each checkpoint's sample grid")
    steps_per_epoch: int | None = _f(None, "cap on the steps of an epoch")
    eval_every: int = _f(1, "score the generator every K epochs (and at the end) ...", search=False)
    eval_photos: int = _f(1000, "... on this many fixed inputs; 0 turns it off", search=False)
    eval_features: str = _f("auto", "inception | pixels | auto (Inception when installed)", search=False)
    model_config: dict = _f(dict, "the model kind's config fields", search=False)

    def resolved(self) -> "TrainSettings":
        """These settings with every local data path made absolute (see `gan.io.storage.resolve_uri`)."""
        paths = [f.name for f in dataclasses.fields(self) if f.metadata.get("path") and getattr(self, f.name)]
        return replace(self, **{name: resolve_uri(getattr(self, name)) for name in paths})

    def build_model_config(self):
        """The model's config from `model_config` (sizes, LR, ...) and the run's length."""
        try:
            return get_model(self.model).build_config(dict(self.model_config), self.epochs)
        except TypeError as e:  # an unknown or misspelt model setting
            raise ValueError(f"{self.model} model settings: {e}") from None

    @classmethod
    def from_flat(cls, values: dict, **given) -> "TrainSettings":
        """Settings from flat values (None = not set): run settings by name, model settings into model_config;
        `given` are set as they are."""
        run = {k: v for k, v in values.items() if v is not None and k in run_fields()}
        model = {k: v for k, v in values.items() if v is not None and k in model_fields()}
        model.update(given.pop("model_config", {}))
        return cls(**{**run, **given}, model_config=model)


def run_fields() -> dict[str, dataclasses.Field]:
    """TrainSettings' own settings (all but model_config), by name."""
    return {f.name: f for f in dataclasses.fields(TrainSettings) if f.name != "model_config"}


def field_types(cls: type) -> dict[str, type]:
    """A dataclass's fields' types, `X | None` as X (a flag is either given or not)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
        out[f.name] = args[0] if optional else hint
    return out


def model_fields(kinds: list[str] | None = None) -> dict[str, type]:
    """The config fields of the given model kinds (default: every registered kind), by name, with their types;
    names TrainSettings already has (epochs) are the run's. Two kinds giving one name two types is an error."""
    out: dict[str, type] = {}
    for kind in kinds or list(known()):
        for name, typ in field_types(get_model(kind).config).items():
            if name in run_fields():
                continue
            if out.get(name, typ) is not typ:
                raise TypeError(f"model setting {name!r} is {out[name].__name__} in one kind, {typ.__name__} in {kind}")
            out[name] = typ
    return out


def searchable(model: str) -> set[str]:
    """What a search may vary: the run settings not marked otherwise, and the model kind's config fields."""
    return {n for n, f in run_fields().items() if f.metadata.get("search", True)} | set(model_fields([model]))


# --- the driver's checks, before Ray starts ----------------------------------------------------------

def validate_data(settings: TrainSettings) -> None:
    """Fail in the driver, before any worker starts, when a data source has no usable image."""
    for source in training_sources(get_model(settings.model)):
        flag, uri = f"--{source}", getattr(settings, source)
        if not uri:
            raise DataError(f"{flag} is required for --model {settings.model}")
        try:
            storage = open_storage(uri)
            items, rejected = scan_inputs(storage)
        except StorageError as e:
            raise DataError(f"{flag} {e}") from None
        for item in items:
            try:
                decode_image(read_input(storage, item), item.name, 8)
                break
            except (BadImageError, ValueError, StorageError):
                continue
        else:
            raise DataError(f"{flag} {uri}: no readable image among {len(items)} files "
                            f"({len(rejected)} corrupt TFRecord files)")


def check_settings(settings: TrainSettings) -> TrainSettings:
    """Settings with absolute paths, after checking sizes and data here, in the driver, before Ray starts."""
    settings = settings.resolved()
    if settings.min_workers is not None and not 1 <= settings.min_workers <= settings.num_workers:
        raise ValueError(f"min_workers must be between 1 and num_workers ({settings.num_workers}), "
                         f"got {settings.min_workers}")
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {settings.precision!r}")
    check_compile(settings.compile)
    settings.build_model_config()
    validate_data(settings)
    return settings


def worker_count(settings: TrainSettings) -> int | tuple[int, int]:
    """ScalingConfig's num_workers: a fixed size, or (min, max) for elastic training.

    Elastic is how a run survives losing a node for good: Ray Train restarts from the last checkpoint with the
    workers it can place (at least `min_workers`) instead of waiting for the lost node's resources, and grows
    back when they return. The global batch is then batch_size x the workers of the moment.
    """
    lo, hi = settings.min_workers, settings.num_workers
    if lo is None or lo >= hi:
        return hi
    return (max(1, lo), hi)


def per_worker_resources(settings: TrainSettings) -> dict:
    """What each training worker asks Ray for: its CPUs, its GPU share (a fraction lets several search trials
    share one GPU), and any custom resources that place it."""
    res = {"CPU": settings.cpus_per_worker, **settings.worker_resources}
    if settings.use_gpu:
        res["GPU"] = settings.gpus_per_worker
    return res


def check_workers_placeable(settings: TrainSettings) -> None:
    """At once, in the driver: workers that this Ray can never place (see `ray_runtime.check_placeable`)."""
    from gan.ray_runtime import check_placeable
    count = worker_count(settings)
    check_placeable(per_worker_resources(settings), count[0] if isinstance(count, tuple) else count,
                    "training worker", {"CPU": "cpus_per_worker (--cpus-per-worker)",
                                         "GPU": "use_gpu (--use-gpu, or a GPU recipe: --recipe kaggle; on a CPU, "
                                                "--recipe kaggle-cpu)",
                                         "*": "worker_resources (--worker-resources)"})


__all__ = ["TrainSettings", "asdict", "check_settings", "validate_data", "worker_count", "per_worker_resources",
           "check_workers_placeable", "run_fields", "model_fields", "searchable", "field_types"]
