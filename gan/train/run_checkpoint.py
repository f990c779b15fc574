"""What one epoch's run checkpoint folder holds, written by rank 0 and read back when a run continues.

state.pt          the full training state (networks, optimizers, schedules, pools, RNG), epoch and step
generator.pt      this epoch's generator, exported (`gan.checkpoint`)
samples.png       the sample grid
history.json      every epoch's metrics so far
best_generator.pt, best_samples.png, quality.png
                  the quality report: the best-scoring epoch's generator and samples, and the score curve
Everything is loaded with `weights_only=True`, and to the CPU first (a GPU run continues on a CPU and back).
A checkpoint that cannot be read whole (a truncated or overwritten file) is damaged: a run continues from the
newest intact one of its folder (`newest_intact`), saying which files it skipped, and stops when none is intact.
Storage that does not answer is not damage: uploads and downloads are retried within the storage retry window
(`gan.io.storage.arrow_call`), then stop the run as a StorageUnavailableError; a full disk as a StorageFullError.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gan.checkpoint import GeneratorCheckpoint, from_bytes
from gan.io.storage import StorageError, arrow_call

STATE_FILE, GENERATOR_FILE, SAMPLES_FILE, HISTORY_FILE = "state.pt", "generator.pt", "samples.png", "history.json"
BEST_FILE, BEST_SAMPLES_FILE, CURVE_FILE = "best_generator.pt", "best_samples.png", "quality.png"
FOLDER = re.compile(r"checkpoint_epoch_\d+$")  # how Ray Train names our checkpoints in the run's folder


class DamagedCheckpoint(ValueError):
    """A run checkpoint with a file that cannot be read; the message names the checkpoint, the file and why."""


def load_state(path: Path) -> dict:
    """A training state as saved by any device, loaded to CPU.

    Models and optimizers move to the worker's device when loaded into it; RNG states stay CPU ByteTensors
    (`map_location=<cuda>` would move them and `set_state` would then refuse them).
    """
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class RunCheckpoint:
    """One epoch's checkpoint as read back; `path` where it is, `skipped` the newer ones found damaged."""
    state: dict
    history: list
    exported: GeneratorCheckpoint
    best_generator: bytes = b""
    best_samples: bytes = b""
    path: str = ""
    skipped: list[str] = field(default_factory=list)


def _read(folder: Path, name: str, what: str, read):
    try:
        return read(folder / what)
    except Exception as e:  # noqa: BLE001 - torch, json and zip raise many types for a damaged file
        raise DamagedCheckpoint(f"{name}/{what}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                                ) from None


def _checked_generator(path: Path) -> bytes:
    data = path.read_bytes()
    from_bytes(data, str(path))
    return data


def read_checkpoint(folder: Path, name: str) -> RunCheckpoint:
    """The checkpoint in `folder`; `name` (its path in the run's storage) names it in errors. DamagedCheckpoint
    when a file is missing or cannot be read whole."""
    state = _read(folder, name, STATE_FILE, load_state)
    if not isinstance(state, dict) or not {"trainer", "epoch", "step"} <= set(state):
        raise DamagedCheckpoint(f"{name}/{STATE_FILE}: not a training state")
    history = _read(folder, name, HISTORY_FILE, lambda p: json.loads(p.read_text()))
    exported = _read(folder, name, GENERATOR_FILE, lambda p: from_bytes(p.read_bytes(), f"checkpoint {name}"))
    if not (folder / BEST_FILE).exists():
        return RunCheckpoint(state, history, exported, path=name)
    best = _read(folder, name, BEST_FILE, _checked_generator)
    samples = _read(folder, name, BEST_SAMPLES_FILE, lambda p: p.read_bytes())
    return RunCheckpoint(state, history, exported, best, samples, path=name)


def newest_intact(checkpoint) -> RunCheckpoint:
    """The run checkpoint `checkpoint` (a ray.train.Checkpoint), or when it is damaged the newest intact one before
    it in the same folder; DamagedCheckpoint naming the damage when none is intact, StorageUnavailableError when
    the storage does not answer within its retry window."""
    import pyarrow.fs
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, own = path.rsplit("/", 1) if "/" in path else ("", path)
    candidates = [path]
    if FOLDER.match(own):  # older epochs of the same run, newest first
        selector = pyarrow.fs.FileSelector(parent, allow_not_found=True)
        infos = arrow_call(f"listing {parent}", lambda: fs.get_file_info(selector), parent, fs)
        older = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                        and FOLDER.match(i.base_name) and i.base_name < own), reverse=True)
        candidates += [f"{parent}/{name}" for name in older]
    damaged: list[str] = []
    for candidate in candidates:
        try:
            saved = arrow_call(f"reading {candidate}", lambda: _download_and_read(candidate, fs), candidate,
                               fs)
        except (DamagedCheckpoint, OSError) as e:
            if isinstance(e, StorageError):  # the storage did not answer in its window: not the checkpoint's fault
                raise
            damaged.append(str(e) if isinstance(e, DamagedCheckpoint) else f"{candidate}: {e}")
            continue
        saved.skipped = damaged
        return saved
    raise DamagedCheckpoint(f"no intact run checkpoint to continue from ({len(damaged)} damaged; newest: {damaged[0]}); "
                            "remove the run's folder or use another --name")


def _download_and_read(path: str, fs) -> RunCheckpoint:
    import ray.train
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as d:
        return read_checkpoint(Path(d), path)


class CheckpointNotSaved(Exception):
    """A reported checkpoint that could not be saved; `fault` is the StorageError the run stops with.

    Ray Train's `report` tries its upload up to 3 times when the error's text names a passing AWS error (as an
    outage's does): raised as itself, the storage retry window would be spent three times over. This text names
    none, so the window is the window."""

    def __init__(self, dir_name: str, fault: StorageError):
        super().__init__(f"{dir_name} was not saved ({type(fault).__name__}; the run stops)")
        self.fault = fault


def upload_checkpoint(checkpoint, dir_name: str):
    """Ray Train's own upload of a reported checkpoint (its `checkpoint_upload_fn`), retried within the storage
    retry window while S3 does not answer; a full disk fails at once. The folder is registered only once whole."""
    import ray.train
    return persist(ray.train.get_context().get_storage(), checkpoint, dir_name)


def persist(storage, checkpoint, dir_name: str):
    """`storage.persist_current_checkpoint` (a Ray Train StorageContext) within the storage retry window; a storage
    fault raised as CheckpointNotSaved."""
    where = storage.build_checkpoint_path_from_name(dir_name)
    with _saving(dir_name):
        return arrow_call(f"saving {dir_name}", lambda: storage.persist_current_checkpoint(checkpoint, dir_name),
                          where, storage.storage_filesystem)


@contextmanager
def _saving(dir_name: str):
    """A storage fault while saving `dir_name` (its retry window spent, or a full disk) as CheckpointNotSaved."""
    try:
        yield
    except StorageError as e:
        raise CheckpointNotSaved(dir_name, e) from None


class InProcessCheckpoints:
    """A run's checkpoints when it trains in its caller's process (`fit_in_process`: no Ray Train run to keep
    them): saved as Ray Train saves them (`<storage>/<name>/checkpoint_epoch_N`, within the storage retry window),
    the newest `keep` kept. A folder cut short by a crash is read back as damaged and passed over (`newest_intact`)."""

    def __init__(self, storage: str, name: str, keep: int):
        import pyarrow.fs

        from gan.io.storage import arrow_filesystem
        path, fs = arrow_filesystem(storage)
        self.fs = fs or pyarrow.fs.LocalFileSystem()
        self.run, self.keep = f"{path.rstrip('/')}/{name}", keep

    def save(self, folder: Path, dir_name: str) -> str:
        """Copy `folder` to the run's `dir_name`; its path there (as Ray Train names it: S3 without the scheme)."""
        import pyarrow.fs
        dest = f"{self.run}/{dir_name}"

        def copy() -> None:
            self.fs.create_dir(dest)
            pyarrow.fs.copy_files(str(folder), dest, source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=self.fs)
        with _saving(dir_name):
            arrow_call(f"saving {dir_name}", copy, dest, self.fs)
            arrow_call(f"pruning {self.run}", self._prune, self.run, self.fs)
        return dest

    def _prune(self) -> None:
        import pyarrow.fs
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.run, allow_not_found=True))
        saved = sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory and FOLDER.match(i.base_name))
        for old in saved[:-self.keep] if self.keep > 0 else []:
            self.fs.delete_dir(old)


def write_checkpoint(folder: Path, state: dict, generator: bytes, samples: bytes, history: list,
                     best_generator: bytes = b"", best_samples: bytes = b"", curve: bytes = b"") -> None:
    torch.save(state, folder / STATE_FILE)
    (folder / GENERATOR_FILE).write_bytes(generator)
    (folder / SAMPLES_FILE).write_bytes(samples)
    (folder / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    if best_generator:
        (folder / BEST_FILE).write_bytes(best_generator)
        (folder / BEST_SAMPLES_FILE).write_bytes(best_samples)
        (folder / CURVE_FILE).write_bytes(curve)
