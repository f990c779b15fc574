"""Training on Ray Train: the per-worker loop, checkpoints that continue exactly, and the trainer set-up.

Each worker holds all training images (encoded) and reads its own shard per epoch through the
DistributedSampler that `prepare_data_loader` adds; generators and discriminators are each wrapped in DDP.
Global batch = batch_size x num_workers; the learning rate is not scaled with it (CycleGAN's 2e-4 was set
for batch 1 and is robust to small batches: pass --lr to change it).
A checkpoint (every K epochs and at the end) holds the full training state, the exported generator,
the sample grid and the epoch history; a rerun with the same name and storage continues from the latest.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from ray.train import UserCallback

from gan.checkpoint import from_bytes, generator_checkpoint, to_bytes
from gan.eval.metrics import require_metrics
from gan.io.images import BadImageError, decode_image
from gan.models.registry import get_model
from gan.models.layers import PRECISIONS, check_compile
from gan.train.data import DataError, DeviceLoader, decoded_bytes, load_encoded_images
from gan.train.quality import SCORE, Best, InTrainingEval, curve_png
from gan.io.sources import read_input, scan_inputs
from gan.io.storage import StorageError, open_storage, resolve_uri

STATE_FILE, GENERATOR_FILE, SAMPLES_FILE, HISTORY_FILE = "state.pt", "generator.pt", "samples.png", "history.json"
# the quality report beside them: the best epoch's generator and samples, and the score curve
BEST_FILE, BEST_SAMPLES_FILE, CURVE_FILE = "best_generator.pt", "best_samples.png", "quality.png"

# A callable (event, rank, epoch) that tests pass in to inject faults from the outside; events are "setup"
# (before data and models are built) and "mid_epoch" (once per epoch, halfway). Production passes none.
LoopHook = Callable[[str, int, int], None]


class TrainingError(ValueError):
    """Training stopped for a reason that a retry cannot fix (bad data, settings or checkpoint); one line."""


@dataclass
class TrainSettings:
    model: str = "cyclegan"                 # cyclegan | dcgan
    photos: str | None = None               # cyclegan domain A
    paintings: str | None = None            # cyclegan domain B; dcgan training images
    epochs: int = 10
    batch_size: int = 1                     # per worker
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    num_workers: int = 1                    # workers (the most, when min_workers makes the run elastic)
    min_workers: int | None = None          # elastic: start with >= this many, go on with them after a node is lost
    worker_resources: dict = field(default_factory=dict)  # custom resources each worker needs, e.g. {"trainer": 1}
    use_gpu: bool = False
    precision: str = "auto"                 # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
    compile: str | None = None              # torch.compile the networks of the step: default | reduce-overhead
                                            # (+ CUDA graphs) | max-autotune; once per worker, at its first step
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0            # with use_gpu; a fraction shares a GPU (several search trials on one)
    loader_workers: int = 0
    data_on_device: bool | None = None      # decode the images once into the device's memory and cut batches
                                            # there (None: on CUDA when they take under a quarter of it)
    max_failures: int = 2
    seed: int = 0
    sample_count: int = 4
    steps_per_epoch: int | None = None      # cap, for quick runs
    eval_every: int = 1                     # score the generator every K epochs (and at the end) ...
    eval_photos: int = 1000                 # ... on this many fixed inputs; 0 turns it off
    eval_features: str = "auto"             # inception | pixels | auto (Inception when installed)
    model_config: dict = field(default_factory=dict)  # CycleGANConfig / DCGANConfig fields

    PATH_FIELDS = ("photos", "paintings")

    def resolved(self) -> "TrainSettings":
        """These settings with every local data path made absolute (see `gan.io.storage.resolve_uri`)."""
        return replace(self, **{f: resolve_uri(getattr(self, f)) for f in self.PATH_FIELDS if getattr(self, f)})

    def build_model_config(self):
        """The model's config from `model_config` (sizes, LR, ...) and the run's length."""
        try:
            return get_model(self.model).make_config(dict(self.model_config), self.epochs)
        except TypeError as e:  # an unknown or misspelt model setting
            raise ValueError(f"{self.model} model settings: {e}") from None


def validate_data(settings: TrainSettings) -> None:
    """Fail in the driver, before any worker starts, when a data source has no usable image."""
    for source in get_model(settings.model).sources:
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


def storage_args(storage: str) -> dict:
    """RunConfig storage arguments; S3 goes through pyarrow with the endpoint from AWS_ENDPOINT_URL."""
    parsed = urlparse(storage)
    if parsed.scheme != "s3":
        return {"storage_path": resolve_uri(storage)}
    import pyarrow.fs
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {}
    if endpoint:
        ep = urlparse(endpoint)
        kwargs = {"endpoint_override": ep.netloc, "scheme": ep.scheme or "https"}
    fs = pyarrow.fs.S3FileSystem(access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                                 secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), **kwargs)
    return {"storage_path": f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"), "storage_filesystem": fs}


class EpochLines(UserCallback):
    """Runs in Ray Train's controller and sends each epoch's metrics to the driver through a queue.

    Workers' and the controller's own output stays in Ray's logs unless --verbose; this is how the
    driver still prints one line per epoch.
    """

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put({**metrics[0], "checkpoint": checkpoint.path if checkpoint else None})


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
    if settings.eval_photos > 0:
        require_metrics()
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


def make_trainer(settings: TrainSettings, name: str, storage: str, hook: LoopHook | None = None,
                 callbacks: list | None = None, start_from: str | None = None, gate=None):
    """A TorchTrainer for checked settings (`check_settings`); the same name and storage resume.

    `start_from`: a checkpoint folder (local or s3://) of another run that a new run starts from, with its own
    settings (a population-based search's exploit); the run's own checkpoints, once it has one, win.
    `gate`: an `EpochGate` that the workers wait on after each epoch but the last.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"settings": asdict(settings), "hook": hook, "start_from": start_from, "gate": gate},
        scaling_config=ray.train.ScalingConfig(num_workers=worker_count(settings), use_gpu=settings.use_gpu,
                                               resources_per_worker=per_worker_resources(settings)),
        run_config=ray.train.RunConfig(
            name=name, **storage_args(storage), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints)),
    )


def epoch_line(m: dict, epochs: int) -> str:
    losses = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
    saved = ", checkpoint saved" if m.get("checkpoint") else ""
    score = ""
    if SCORE in m:
        label = SCORE if m["eval_features"] == "inception" else f"{SCORE}[{m['eval_features']} stand-in]"
        score = (f"  {label} {m[SCORE]:.2f} (FID {m['fid']:.2f}, d {m['memorization']:.3f}; "
                 f"best {m['best_' + SCORE]:.2f} @ epoch {m['best_epoch'] + 1})")
    peak = f", peak {m['peak_gpu_gib']:.1f} GiB" if "peak_gpu_gib" in m else ""
    return (f"train: epoch {m['epoch'] + 1}/{epochs}  {losses}  {m['images_per_s']:.1f} images/s, "
            f"{m['seconds']:.1f} s{peak}{score}{saved}")


class EpochGate:
    """How far the driver lets the workers train: the last epoch whose metrics it has handled. A Ray actor."""

    def __init__(self):
        self.epoch = -1

    def open(self, epoch: int) -> None:
        self.epoch = max(self.epoch, epoch)

    def opened(self) -> int:
        return self.epoch


def _wait_at_gate(gate, epoch: int) -> None:
    """Block until the driver has handled `epoch` (polled, so no collective times out however long it takes)."""
    import ray
    while ray.get(gate.opened.remote()) < epoch:
        time.sleep(0.05)


def fit_with_epochs(settings: TrainSettings, name: str, storage: str, on_epoch: Callable[[dict], None],
                    hook: LoopHook | None = None, start_from: str | None = None, lockstep: bool = False):
    """`fit()` a trainer for these settings in a thread while each epoch's metrics reach `on_epoch` here, in this
    thread and in order ("checkpoint": the epoch's Train checkpoint path, or None); the Result, or what fit() raised.

    In the calling thread because a Tune trial must report from its own thread; the driver prints from it.
    `lockstep`: the workers start an epoch only once `on_epoch` has returned for the one before. A Tune trial's
    report returns when Tune lets the trial go on, so a trial that Tune stops or pauses (ASHA, or PBT waiting for
    the others) trains no epoch past the last one Tune saw: PBT's rounds stay synchronous and no work is wasted.
    """
    import ray
    from ray.util.queue import Empty, Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    # on this node, as Ray Train puts its controller: a queue on a worker node would die with that node
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    gate = ray.remote(EpochGate).options(num_cpus=0, scheduling_strategy=here).remote() if lockstep else None
    trainer = make_trainer(settings, name, storage, hook, callbacks=[EpochLines(queue)], start_from=start_from,
                           gate=gate)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            outcome["error"] = e

    runner = threading.Thread(target=fit, daemon=True)
    runner.start()
    try:
        while runner.is_alive() or not queue.empty():
            try:
                metrics = queue.get(timeout=0.2)
            except Empty:
                continue
            on_epoch(metrics)
            if gate is not None:
                gate.open.remote(metrics["epoch"])
    finally:
        ray.kill(queue.actor)
        if gate is not None:
            ray.kill(gate)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def run_training(settings: TrainSettings, name: str, storage: str, hook: LoopHook | None = None,
                 echo: Callable[[str], None] = print):
    """Check, start or join Ray, train (resuming a run of the same name), print a line per epoch; the Result.

    Raises TrainingError at once for what no retry can fix; only worker deaths spend --max-failures.
    """
    import ray.train

    from gan.ray_runtime import ensure_ray
    settings = check_settings(settings)
    ensure_ray()
    check_workers_placeable(settings)
    try:
        result = fit_with_epochs(settings, name, storage, lambda m: echo(epoch_line(m, settings.epochs)), hook)
    except ray.train.TrainingFailedError as e:
        raise RuntimeError(f"training failed after {settings.max_failures + 1} attempts: "
                           f"{_last_line(str(e))}") from e
    if isinstance(result.return_value, dict) and result.return_value.get("error"):
        raise TrainingError(result.return_value["error"])
    return result


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


def load_state(path: Path) -> dict:
    """A training state as saved by any device, loaded to CPU.

    Models and optimizers move to the worker's device when loaded into it; RNG states stay CPU ByteTensors
    (`map_location=<cuda>` would move them and `set_state` would then refuse them).
    """
    return torch.load(path, map_location="cpu", weights_only=True)


# --- per worker -----------------------------------------------------------------------------------

@dataclass
class _Run:
    """Everything one worker trains with, built by `_setup`."""
    trainer: object
    loader: torch.utils.data.DataLoader
    fixed: torch.Tensor             # sample-grid inputs: photos (CycleGAN) or latents (DCGAN)
    model_cfg: object
    start_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    evaluator: InTrainingEval | None = None  # on rank 0 only
    best: Best = field(default_factory=Best)


def _start_checkpoint(start_from: str | None):
    """The run's latest checkpoint, else the other run's checkpoint it was told to start from (or None)."""
    import ray.train
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and start_from:
        where = storage_args(start_from)
        checkpoint = ray.train.Checkpoint(where["storage_path"], filesystem=where.get("storage_filesystem"))
    return checkpoint


def _setup(settings: TrainSettings, hook: LoopHook | None, rank: int, world: int,
           start_from: str | None = None) -> _Run:
    """Data, models (each wrapped in DDP) and, when the run has a checkpoint, the state it continues from."""
    import ray.train.torch as rt
    if hook:
        hook("setup", rank, 0)
    spec = get_model(settings.model)
    model_cfg = settings.build_model_config()
    images = {source: load_encoded_images(getattr(settings, source))[0] for source in spec.sources}
    wrap = lambda m: rt.prepare_model(m, parallel_strategy_kwargs=spec.ddp_kwargs)  # noqa: E731
    trainer = spec.trainer(model_cfg, rt.get_device(), wrap, seed=settings.seed, precision=settings.precision,
                           compile=settings.compile)
    # The order of every epoch is one permutation of (seed, epoch) shared out by rank, at any world size: with
    # the per-item augmentation (ImageDataset.set_epoch), N workers x batch B see what one worker x batch N*B sees.
    dataset = spec.dataset(images, model_cfg)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=settings.seed, drop_last=True)
    device = rt.get_device()
    if _data_on_device(settings, dataset, device):
        loader = DeviceLoader(dataset, sampler, settings.batch_size, device)
    else:
        loader = rt.prepare_data_loader(
            torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler, drop_last=True,
                                        num_workers=settings.loader_workers, pin_memory=device.type == "cuda"),
            add_dist_sampler=False)
    fixed = spec.sample_inputs(images, model_cfg, settings.sample_count, settings.seed)
    run = _Run(trainer, loader, fixed, model_cfg)
    if rank == 0 and settings.eval_photos > 0:
        run.evaluator = InTrainingEval(spec, images, settings.eval_photos, settings.eval_features, rt.get_device(),
                                       settings.seed)

    checkpoint = _start_checkpoint(start_from)
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_state(Path(d) / STATE_FILE)
            run.history = json.loads((Path(d) / HISTORY_FILE).read_text())
            exported = from_bytes((Path(d) / GENERATOR_FILE).read_bytes(), f"checkpoint {checkpoint.path}")
            if (Path(d) / BEST_FILE).exists():
                scored = [h for h in run.history if SCORE in h]
                top = min(scored, key=lambda h: h[SCORE])
                run.best = Best(top["epoch"], top[SCORE], (Path(d) / BEST_FILE).read_bytes(),
                                (Path(d) / BEST_SAMPLES_FILE).read_bytes())
        if exported.kind != settings.model:
            raise TrainingError(f"run checkpoint {checkpoint.path} is a {exported.kind} run; this run trains "
                                f"{settings.model}: use another --name or --storage")
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, RuntimeError) as e:
            raise TrainingError(f"run checkpoint {checkpoint.path} does not fit these model sizes "
                                f"({str(e).splitlines()[0][:200]}): use the run's sizes or another --name") from None
        run.start_epoch, run.step = state["epoch"] + 1, state["step"]
    return run


def _data_on_device(settings: TrainSettings, dataset, device: torch.device) -> bool:
    """Told, or by default on CUDA when the decoded images take under a quarter of the device's memory."""
    if settings.data_on_device is not None:
        return settings.data_on_device
    return device.type == "cuda" and decoded_bytes(dataset) < torch.cuda.get_device_properties(device).total_memory / 4


def _setup_errors(error: str, world: int) -> str:
    """The first setup error of any rank, known to every rank (so all stop together, before any barrier)."""
    if world == 1 or not torch.distributed.is_initialized():
        return error
    errors: list = [None] * world
    torch.distributed.all_gather_object(errors, error)
    return next((e for e in errors if e), "")


def _node_count(world: int) -> int:
    """How many nodes the workers of this attempt run on (recorded per epoch: placement and elastic resizes)."""
    import ray
    node = ray.get_runtime_context().get_node_id()
    if world == 1 or not torch.distributed.is_initialized():
        return 1
    nodes: list = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return len(set(nodes))


def train_loop_per_worker(config: dict) -> dict | None:
    """Prepare data and models, then loop: train an epoch, report metrics (and a checkpoint every K epochs).

    Returns {"error": line} instead of raising when setup meets what no retry can fix, so Ray Train does
    not restart the workers for it; the driver raises it as a TrainingError.
    """
    import ray.train

    settings, hook = TrainSettings(**config["settings"]), config.get("hook")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    error, run = "", None
    try:
        run = _setup(settings, hook, rank, world, config.get("start_from"))
    except (ValueError, ImportError) as e:  # bad data, sizes, checkpoint, a missing package: every attempt alike
        error = str(e)
    error = _setup_errors(error, world)
    if error:
        return {"error": error}
    nodes, name = _node_count(world), ctx.get_experiment_name()

    for epoch in range(run.start_epoch, settings.epochs):
        metrics = {**_train_epoch(settings, run, hook, epoch, rank, world), "workers": world, "nodes": nodes,
                   "run": name}  # which run trained the epoch: a history carried on (PBT) says so
        last = epoch == settings.epochs - 1
        if run.evaluator is not None and ((epoch + 1) % settings.eval_every == 0 or last):
            metrics.update(_evaluate(settings, run, epoch))
        run.history.append(metrics)
        if rank == 0 and ((epoch + 1) % settings.checkpoint_every == 0 or last):
            with tempfile.TemporaryDirectory() as tmp:
                _write_checkpoint(Path(tmp), settings, run, epoch)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:05d}")
        else:
            ray.train.report(metrics)
        if config.get("gate") is not None and not last:
            _wait_at_gate(config["gate"], epoch)
    return None


def _exported(settings: TrainSettings, run: _Run, epoch: int) -> bytes:
    return to_bytes(generator_checkpoint(settings.model, run.model_cfg, run.trainer.generator, epoch, run.step))


def _evaluate(settings: TrainSettings, run: _Run, epoch: int) -> dict:
    """Score this epoch's generator; keep it (and its samples) when it is the best so far."""
    generator = run.trainer.generator
    scores = run.evaluator.score(generator)
    if scores[SCORE] < run.best.score:  # build the checkpoint bytes and samples only for a new best
        run.best.update(epoch, scores[SCORE], _exported(settings, run, epoch),
                        get_model(settings.model).sample_grid(generator, run.fixed))
    return {**scores, "best_epoch": run.best.epoch, "best_" + SCORE: run.best.score}


def _write_checkpoint(folder: Path, settings: TrainSettings, run: _Run, epoch: int) -> None:
    """The training state, the exported generator, the sample grid, the history so far, and the quality report:
    the best epoch's generator and samples and the score curve."""
    trainer = run.trainer
    torch.save({"trainer": trainer.state_dict(), "epoch": epoch, "step": run.step}, folder / STATE_FILE)
    (folder / GENERATOR_FILE).write_bytes(_exported(settings, run, epoch))
    (folder / SAMPLES_FILE).write_bytes(get_model(settings.model).sample_grid(trainer.generator, run.fixed))
    (folder / HISTORY_FILE).write_text(json.dumps(run.history, indent=1))
    if run.best.generator:
        (folder / BEST_FILE).write_bytes(run.best.generator)
        (folder / BEST_SAMPLES_FILE).write_bytes(run.best.samples)
        (folder / CURVE_FILE).write_bytes(curve_png(run.history))


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
