"""The loop each Ray Train worker runs (and a search trial of one worker, in its own process): build data and
models, continue from the run's checkpoint, train epochs, report each (with a checkpoint every K epochs).

Each worker holds all training images (encoded) and reads its own shard per epoch through a DistributedSampler;
every network is wrapped in DDP by `prepare_model`. Global batch = batch_size x workers.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from gan.checkpoint import generator_checkpoint, to_bytes
from gan.io.storage import RETRY_WINDOW_S, StorageError, set_retry_window
from gan.models.registry import get_model
from gan.train.data import DeviceLoader, decoded_bytes, load_encoded_images, training_set, training_sources
from gan.train.quality import SCORE, Best, InTrainingEval, curve_png
from gan.train.run_checkpoint import CheckpointNotSaved, newest_intact, upload_checkpoint, write_checkpoint
from gan.train.samples import sample_grid, sample_inputs
from gan.train.settings import TrainSettings

# A callable (event, rank, epoch) that tests pass in to inject faults from the outside; events are "setup"
# (before data and models are built) and "mid_epoch" (once per epoch, halfway). Production passes none.
LoopHook = Callable[[str, int, int], None]


class TrainingError(ValueError):
    """Training stopped for a reason that a retry cannot fix (bad data, settings or checkpoint); one line."""


@dataclass
class _Run:
    """Everything one worker trains with, built by `_setup`."""
    spec: object
    trainer: object
    loader: object
    fixed: object                   # sample-grid inputs: Photos or Seeds
    model_cfg: object
    start_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    evaluator: InTrainingEval | None = None  # on rank 0 only
    best: Best = field(default_factory=Best)
    skipped: list = field(default_factory=list)  # damaged checkpoints passed over when continuing


class RayTrainReports:
    """Where a Ray Train worker's epochs go: Ray Train's `report`, which saves a checkpoint with `upload_checkpoint`.
    A run in its caller's process (`fit_in_process`) passes its own in the config ("reports"), with the same
    attributes and methods."""
    in_process = False

    def __init__(self):
        import ray.train
        ctx = ray.train.get_context()
        self.rank, self.world, self.name = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_experiment_name()

    def latest_checkpoint(self):
        """The run's latest checkpoint that Ray Train registered (None on a first attempt)."""
        import ray.train
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, folder: Path | None = None, dir_name: str | None = None) -> None:
        import ray.train
        if folder is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                             checkpoint_dir_name=dir_name, checkpoint_upload_fn=upload_checkpoint)


def _start_checkpoint(start_from: str | None, reports):
    """The run's latest checkpoint, else the other run's checkpoint it was told to start from (or None)."""
    import ray.train

    from gan.io.storage import arrow_filesystem
    checkpoint = reports.latest_checkpoint()
    if checkpoint is None and start_from:
        path, fs = arrow_filesystem(start_from)
        checkpoint = ray.train.Checkpoint(path, filesystem=fs)
    return checkpoint


def _setup(settings: TrainSettings, hook: LoopHook | None, reports, start_from: str | None = None) -> _Run:
    """Data, models (each wrapped in DDP) and, when the run has a checkpoint, the state it continues from.
    A run in its caller's process (`reports.in_process`) is the one worker, not a Ray Train worker: no DDP, and
    the device is the GPU Ray gave the process, if any."""
    rank, world = reports.rank, reports.world
    if hook:
        hook("setup", rank, 0)
    spec = get_model(settings.model)
    model_cfg = settings.build_model_config()
    images = {source: load_encoded_images(getattr(settings, source))[0] for source in training_sources(spec)}
    if reports.in_process:
        device = torch.device("cuda" if settings.use_gpu else "cpu")
        wrap = lambda m: m.to(device)  # noqa: E731
        prepare_loader = lambda loader: loader  # noqa: E731 - the trainers move each batch to their device
    else:
        import ray.train.torch as rt
        device = rt.get_device()
        wrap = lambda m: rt.prepare_model(m, parallel_strategy_kwargs=spec.ddp_kwargs)  # noqa: E731
        prepare_loader = lambda loader: rt.prepare_data_loader(loader, add_dist_sampler=False)  # noqa: E731
    trainer = spec.trainer(model_cfg, device, wrap, seed=settings.seed, precision=settings.precision,
                           compile=settings.compile)
    trainer.data_init(images)
    # The order of every epoch is one permutation of (seed, epoch) shared out by rank, at any world size: with
    # the per-item augmentation (ImageDataset.set_epoch), N workers x batch B see what one worker x batch N*B sees.
    dataset = training_set(spec, images, model_cfg)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=settings.seed, drop_last=True)
    if _data_on_device(settings, dataset, device):
        loader = DeviceLoader(dataset, sampler, settings.batch_size, device)
    else:
        loader = prepare_loader(
            torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, drop_last=True,
                                        num_workers=settings.loader_workers, pin_memory=device.type == "cuda"))
    fixed = sample_inputs(spec, images, model_cfg, settings.sample_count, settings.seed)
    run = _Run(spec, trainer, loader, fixed, model_cfg)
    if rank == 0 and settings.eval_photos > 0:
        run.evaluator = InTrainingEval(spec, images, settings.eval_photos, settings.eval_features, device,
                                       settings.seed)

    checkpoint = _start_checkpoint(start_from, reports)
    if checkpoint:
        saved = newest_intact(checkpoint)
        if saved.exported.kind != settings.model:
            raise TrainingError(f"run checkpoint {saved.path} is a {saved.exported.kind} run; this run trains "
                                f"{settings.model}: use another --name or --storage")
        try:
            trainer.load_state_dict(saved.state["trainer"])
        except (KeyError, RuntimeError) as e:
            raise TrainingError(f"run checkpoint {saved.path} does not fit these model sizes "
                                f"({str(e).splitlines()[0][:200]}): use the run's sizes or another --name") from None
        run.skipped = saved.skipped
        run.history = saved.history
        if saved.best_generator:
            top = min((h for h in run.history if SCORE in h), key=lambda h: h[SCORE])
            run.best = Best(top["epoch"], top[SCORE], saved.best_generator, saved.best_samples)
        run.start_epoch, run.step = saved.state["epoch"] + 1, saved.state["step"]
    return run


def _data_on_device(settings: TrainSettings, dataset, device: torch.device) -> bool:
    """Told, or by default on CUDA when the decoded images take under a quarter of the device's memory."""
    if settings.data_on_device is not None:
        return settings.data_on_device
    return device.type == "cuda" and decoded_bytes(dataset) < torch.cuda.get_device_properties(device).total_memory / 4


def _stop(error: Exception) -> dict:
    """What the workers return when they stop for what no restart would fix: the one line, and for a storage fault
    its kind (the driver raises the same kind: exit 1, the rerun continues once it is fixed)."""
    if isinstance(error, StorageError):
        return {"error": str(error), "storage_fault": type(error).__name__}
    return {"error": str(error)}


def _first_stop(stop: dict | None, world: int) -> dict | None:
    """The first stop of any rank, known to every rank (so all stop together, before any barrier)."""
    if world == 1 or not torch.distributed.is_initialized():
        return stop
    stops: list = [None] * world
    torch.distributed.all_gather_object(stops, stop)
    return next((s for s in stops if s), None)


def _node_count(world: int) -> int:
    """How many nodes the workers of this attempt run on (recorded per epoch: placement and elastic resizes)."""
    import ray
    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not torch.distributed.is_initialized():
        return 1
    nodes: list = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return len(set(nodes))


def _wait_at_gate(gate, epoch: int) -> None:
    """Block until the driver has handled `epoch` (polled, so no collective times out however long it takes)."""
    import ray
    while ray.get(gate.opened.remote()) < epoch:
        time.sleep(0.05)


def train_loop_per_worker(config: dict) -> dict | None:
    """Prepare data and models, then loop: train an epoch, report metrics (and a checkpoint every K epochs).

    Returns {"error": line} instead of raising when setup meets what no retry can fix, or a checkpoint cannot be
    saved (the storage past its retry window, a full disk: {"storage_fault": kind} too), so Ray Train does not
    restart the workers for it; the driver raises it as a TrainingError, or as that storage fault.
    """
    settings, hook = TrainSettings(**config["settings"]), config.get("hook")
    set_retry_window(config.get("storage_retry_s", RETRY_WINDOW_S))  # the driver's --storage-retry
    # a run in its caller's process (`fit_in_process`) passes where its epochs go; Ray Train's context is not to be
    # asked there (Ray refuses `ray.train.get_context` where a Tune session is)
    reports = config.get("reports") or RayTrainReports()
    rank, world, name = reports.rank, reports.world, reports.name
    stop, run = None, None
    try:
        run = _setup(settings, hook, reports, config.get("start_from"))
    except (ValueError, ImportError, StorageError) as e:  # bad data, sizes, checkpoint, a missing package, the
        stop = _stop(e)                                   # storage past its window: every attempt alike
    stop = _first_stop(stop, world)
    if stop:
        return stop
    nodes = _node_count(world)

    for epoch in range(run.start_epoch, settings.epochs):
        metrics = {**_train_epoch(settings, run, hook, epoch, rank, world), "workers": world, "nodes": nodes,
                   "run": name}  # which run trained the epoch: a history carried on (PBT) says so
        if run.skipped and epoch == run.start_epoch:  # the driver says which checkpoints it passed over
            metrics["damaged_checkpoints"] = run.skipped
        last = epoch == settings.epochs - 1
        if run.evaluator is not None and ((epoch + 1) % settings.eval_every == 0 or last):
            metrics.update(_evaluate(settings, run, epoch))
        run.history.append(metrics)
        if (epoch + 1) % settings.checkpoint_every == 0 or last:
            # a save that fails (the storage past its retry window, a full disk) stops every rank together, with
            # the run's last complete checkpoint left as it was: Ray Train's restarts would only meet it again
            stop = _first_stop(_save_checkpoint(settings, run, epoch, metrics, reports) if rank == 0
                               else reports.report(metrics), world)
            if stop:
                return stop
        else:
            reports.report(metrics)
        if config.get("gate") is not None and not last:
            _wait_at_gate(config["gate"], epoch)
    return None


def _save_checkpoint(settings: TrainSettings, run: _Run, epoch: int, metrics: dict, reports) -> dict | None:
    """Report the epoch with its checkpoint (rank 0); None when saved, else the storage fault's stop."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _write_checkpoint(Path(tmp), settings, run, epoch)
            reports.report(metrics, Path(tmp), f"checkpoint_epoch_{epoch:05d}")
    except CheckpointNotSaved as e:
        return _stop(e.fault)
    return None


def _exported(settings: TrainSettings, run: _Run, epoch: int) -> bytes:
    return to_bytes(generator_checkpoint(settings.model, run.model_cfg, run.trainer.generator, epoch, run.step))


def _evaluate(settings: TrainSettings, run: _Run, epoch: int) -> dict:
    """Score this epoch's generator; keep it (and its samples) when it is the best so far."""
    generator = run.trainer.generator
    scores = run.evaluator.score(generator)
    if scores[SCORE] < run.best.score:  # build the checkpoint bytes and samples only for a new best
        run.best.update(epoch, scores[SCORE], _exported(settings, run, epoch),
                        sample_grid(run.spec, generator, run.fixed))
    return {**scores, "best_epoch": run.best.epoch, "best_" + SCORE: run.best.score}


def _write_checkpoint(folder: Path, settings: TrainSettings, run: _Run, epoch: int) -> None:
    trainer = run.trainer
    write_checkpoint(folder, {"trainer": trainer.state_dict(), "epoch": epoch, "step": run.step},
                     _exported(settings, run, epoch), sample_grid(run.spec, trainer.generator, run.fixed),
                     run.history, run.best.generator, run.best.samples,
                     curve_png(run.history) if run.best.generator else b"")


def _train_epoch(settings: TrainSettings, run: _Run, hook: LoopHook | None, epoch: int, rank: int,
                 world: int) -> dict:
    """One pass over this worker's shard; the epoch's mean losses, speed and LR."""
    trainer, loader = run.trainer, run.loader
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch, settings.seed)
    torch.manual_seed(settings.seed * 100_003 + epoch * 1_009 + rank)
    sums: dict[str, torch.Tensor] = {}  # on the device: the losses are read once per epoch, not once per step
    images, t0 = 0, time.perf_counter()
    n_steps = len(loader) if settings.steps_per_epoch is None else min(len(loader), settings.steps_per_epoch)
    for i, batch in enumerate(loader):
        if i >= n_steps:
            break
        if hook and i == n_steps // 2:
            hook("mid_epoch", rank, epoch)
        losses = trainer.step(*batch) if isinstance(batch, (list, tuple)) else trainer.step(batch)
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        run.step += 1
        images += settings.batch_size
    means = {k: v.item() / max(n_steps, 1) for k, v in sums.items()}  # the one host sync: the epoch's work is done
    seconds = time.perf_counter() - t0
    lr = trainer.opt_g.param_groups[0]["lr"]
    trainer.end_epoch()
    return {"epoch": epoch, "step": run.step, **means,
            "images_per_s": images * world / seconds if seconds > 0 else 0.0, "seconds": seconds,
            "lr": lr, "torch_threads": torch.get_num_threads(), **_speed_facts(settings, trainer.device)}


def _speed_facts(settings: TrainSettings, device: torch.device) -> dict:
    """On CUDA, the peak GPU memory so far (GiB); with --compile, the graphs this worker has compiled so far:
    the first epoch compiles (and is slower for it), a count that grows after it means recompiles."""
    facts = {}
    if device.type == "cuda":
        facts["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if settings.compile is not None:
        from torch._dynamo.utils import counters  # imported with torch.compile itself: only when it is used
        facts["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
    return facts
