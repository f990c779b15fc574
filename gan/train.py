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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from gan.checkpoint import generator_checkpoint, to_bytes
from gan.cyclegan import CycleGANConfig, CycleGANTrainer
from gan.data import DataError, ImageDataset, UnpairedDataset, load_encoded_images
from gan.dcgan import DCGANConfig, DCGANTrainer
from gan.images import BadImageError, decode_image, to_tensor
from gan.samples import noise_grid, stylize_grid
from gan.sources import read_input, scan_inputs
from gan.storage import StorageError, open_storage

STATE_FILE, GENERATOR_FILE, SAMPLES_FILE, HISTORY_FILE = "state.pt", "generator.pt", "samples.png", "history.json"
FAULT_ENV = "GAN_FAULT_KILL_WORKER"  # test hook: "RANK:EPOCH:MARKER" makes that rank exit mid-epoch, once


@dataclass
class TrainSettings:
    model: str = "cyclegan"                 # cyclegan | dcgan
    photos: str | None = None               # cyclegan domain A
    paintings: str | None = None            # cyclegan domain B; dcgan training images
    epochs: int = 10
    batch_size: int = 1                     # per worker
    checkpoint_every: int = 1
    keep_checkpoints: int = 3
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 0
    max_failures: int = 2
    seed: int = 0
    sample_count: int = 4
    steps_per_epoch: int | None = None      # cap, for quick runs
    model_config: dict = field(default_factory=dict)  # CycleGANConfig / DCGANConfig fields
    fault: str | None = None

    def build_model_config(self) -> CycleGANConfig | DCGANConfig:
        if self.model == "cyclegan":
            cfg = dict(self.model_config)
            cfg.setdefault("epochs", self.epochs)
            cfg.setdefault("decay_epochs", self.epochs // 2)
            return CycleGANConfig(**cfg)
        if self.model == "dcgan":
            return DCGANConfig(**self.model_config)
        raise ValueError(f"--model must be cyclegan or dcgan, got {self.model!r}")


def validate_data(settings: TrainSettings) -> None:
    """Fail in the driver, before any worker starts, when a data source has no usable image."""
    sources = {"--paintings": settings.paintings}
    if settings.model == "cyclegan":
        sources["--photos"] = settings.photos
    for flag, uri in sources.items():
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


def _storage_args(storage: str) -> dict:
    """RunConfig storage arguments; S3 goes through pyarrow with the endpoint from AWS_ENDPOINT_URL."""
    parsed = urlparse(storage)
    if parsed.scheme != "s3":
        return {"storage_path": os.path.abspath(storage)}
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


def make_trainer(settings: TrainSettings, name: str, storage: str):
    import ray.train
    from ray.train.torch import TorchTrainer
    settings.build_model_config()  # bad sizes fail here, in the driver
    validate_data(settings)
    settings.fault = settings.fault or os.environ.get(FAULT_ENV)
    res = {"CPU": settings.cpus_per_worker}
    if settings.use_gpu:
        res["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(settings),
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                               resources_per_worker=res),
        run_config=ray.train.RunConfig(
            name=name, **_storage_args(storage),
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints)),
    )


# --- per worker -----------------------------------------------------------------------------------

def _maybe_fail(fault: str | None, rank: int, epoch: int) -> None:
    if not fault:
        return
    f_rank, f_epoch, marker = fault.split(":", 2)
    if int(f_rank) == rank and int(f_epoch) == epoch and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)  # a worker process dying mid-epoch, as on a lost node


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch as rt

    settings = TrainSettings(**config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = rt.get_device()
    model_cfg = settings.build_model_config()
    ddp_kwargs = {"broadcast_buffers": False} if settings.model == "dcgan" else None  # BatchNorm: see notes
    wrap = lambda m: rt.prepare_model(m, parallel_strategy_kwargs=ddp_kwargs)  # noqa: E731

    paintings, _ = load_encoded_images(settings.paintings)
    size = model_cfg.image_size
    if settings.model == "cyclegan":
        photos, _ = load_encoded_images(settings.photos)
        trainer = CycleGANTrainer(model_cfg, device, wrap, seed=settings.seed)
        dataset = UnpairedDataset(ImageDataset(photos, size, jitter=True), ImageDataset(paintings, size, jitter=True))
        fixed = torch.stack([to_tensor(decode_image(d, n, size)) for n, d in photos[:settings.sample_count]])
    else:
        trainer = DCGANTrainer(model_cfg, device, wrap, seed=settings.seed)
        dataset = ImageDataset(paintings, size, jitter=False)
        fixed = torch.from_numpy(np.random.default_rng(settings.seed).standard_normal((16, model_cfg.nz))).float()

    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, drop_last=True,
                                         num_workers=settings.loader_workers)
    loader = rt.prepare_data_loader(loader)

    start_epoch, step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
            history = json.loads((Path(d) / HISTORY_FILE).read_text())
        trainer.load_state_dict(state["trainer"])
        start_epoch, step = state["epoch"] + 1, state["step"]

    for epoch in range(start_epoch, settings.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        torch.manual_seed(settings.seed * 100_003 + epoch * 1_009 + rank)
        sums: dict[str, float] = {}
        images, t0 = 0, time.perf_counter()
        n_steps = len(loader) if settings.steps_per_epoch is None else min(len(loader), settings.steps_per_epoch)
        for i, batch in enumerate(loader):
            if i >= n_steps:
                break
            if i == n_steps // 2:
                _maybe_fail(settings.fault, rank, epoch)
            losses = trainer.step(*batch) if settings.model == "cyclegan" else trainer.step(batch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            images += settings.batch_size
        seconds = time.perf_counter() - t0
        lr = trainer.opt_g.param_groups[0]["lr"]
        trainer.end_epoch()
        metrics = {"epoch": epoch, "step": step, **{k: v / max(n_steps, 1) for k, v in sums.items()},
                   "images_per_s": images * world / seconds if seconds > 0 else 0.0, "seconds": seconds,
                   "lr": lr, "torch_threads": torch.get_num_threads()}
        history.append(metrics)
        last = epoch == settings.epochs - 1
        if rank == 0 and ((epoch + 1) % settings.checkpoint_every == 0 or last):
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({"trainer": trainer.state_dict(), "epoch": epoch, "step": step}, Path(tmp) / STATE_FILE)
                exported = generator_checkpoint(settings.model, model_cfg, trainer.generator, epoch, step)
                (Path(tmp) / GENERATOR_FILE).write_bytes(to_bytes(exported))
                grid = (stylize_grid(trainer.generator, fixed) if settings.model == "cyclegan"
                        else noise_grid(trainer.generator, fixed))
                (Path(tmp) / SAMPLES_FILE).write_bytes(grid)
                (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history, indent=1))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch_{epoch:05d}")
        else:
            ray.train.report(metrics)
