"""Ray Train overhead: images/s of one Ray Train worker vs a plain PyTorch loop, same model, data and threads.

python bench/train_throughput.py [--threads 2] [--steps 30] [--size 128] [--ngf 16] [--blocks 3]
Both run the same CycleGANTrainer steps over the same DataLoader; the Ray figure is the worker's steady-state
epoch (the second one), so Ray's start-up is reported separately, not mixed into the ratio.
--gpu [--photos DIR] (CUDA): full-size CycleGAN steps at batch 1 and 4, one lever per row (bf16, channels_last, fused
Adam, torch.compile as `jobs.train --compile` does it, then its reduce-overhead mode: CUDA graphs), images/s, TFLOP/s
(PyTorch's own FLOP count of the step) and peak memory; with --photos also the step fed by real data, and the plain
loop vs the Ray Train job on the GPU. A lever that fails prints its error in its row; the table goes on.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer  # noqa: E402
from gan.models.layers import COMPILE_MODES  # noqa: E402
from gan.train.data import DeviceLoader, ImageDataset, UnpairedDataset, load_encoded_images  # noqa: E402
from gan.train.demo_data import write_demo_data  # noqa: E402


def loader(photos: str, paintings: str, size: int, batch: int, workers: int = 0) -> torch.utils.data.DataLoader:
    """The training pairs as the job's worker draws them (jittered crops), shuffled, in batches."""
    a, _ = load_encoded_images(photos)
    b, _ = load_encoded_images(paintings)
    ds = UnpairedDataset(ImageDataset(a, size, True), ImageDataset(b, size, True))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def endless(batches) -> Iterator:
    while True:
        yield from batches


def timed_steps(trainer: CycleGANTrainer, batches: Iterator, steps: int, batch: int) -> tuple[float, float]:
    """(steady-state images/s over `steps` steps, seconds of the 3 warm-up steps before them: compile included)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(3):
        trainer.step(*next(batches))
    sync()
    t1 = time.perf_counter()
    for _ in range(steps):
        trainer.step(*next(batches))
    sync()
    return steps * batch / (time.perf_counter() - t1), t1 - t0


def plain_loop(data: str, cfg: CycleGANConfig, batch: int, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    pairs = loader(f"{data}/photo_jpg", f"{data}/monet_jpg", cfg.image_size, batch)
    return timed_steps(CycleGANTrainer(cfg), endless(pairs), steps, batch)[0]


def ray_train(data: str, cfg: CycleGANConfig, batch: int, steps: int, threads: int, storage: str) -> tuple[float, float]:
    import ray
    from gan.train.driver import make_trainer
    from gan.train.settings import TrainSettings, check_settings
    ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
    settings = TrainSettings(model="cyclegan", photos=f"{data}/photo_jpg", paintings=f"{data}/monet_jpg",
                             epochs=2, batch_size=batch, num_workers=1, cpus_per_worker=threads,
                             steps_per_epoch=steps, checkpoint_every=2,
                             eval_photos=0,  # no in-training scoring: the plain loop beside it does none
                             model_config={k: getattr(cfg, k) for k in ("image_size", "ngf", "ndf", "n_blocks")})
    t0 = time.perf_counter()
    result = make_trainer(check_settings(settings), "bench", storage).fit()
    total = time.perf_counter() - t0
    ray.shutdown()
    print(f"(Ray worker torch threads: {result.metrics['torch_threads']})")
    return result.metrics["images_per_s"], total


def flops_per_image(trainer: CycleGANTrainer, x: torch.Tensor) -> float:
    """FLOPs of one training step per image, counted by PyTorch on the real step (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        trainer.step(x, x)
    return counter.get_total_flops() / len(x)


LEVERS = (  # label, precision, channels_last, fused Adam, torch.compile mode of the step's networks (--compile)
    ("fp32", "fp32", False, False, None),
    ("bf16", "bf16", False, False, None),
    ("bf16 + channels_last", "bf16", True, False, None),
    ("bf16 + channels_last + fused Adam", "bf16", True, True, None),
    ("bf16 + channels_last + fused Adam + compile", "bf16", True, True, "default"),
    ("bf16 + channels_last + fused Adam + compile reduce-overhead (CUDA graphs)", "bf16", True, True, "reduce-overhead"),
)


def gpu_levers(batches: list[int], steps: int, photos: str | None) -> None:
    """Full-size CycleGAN (256 px, ngf 64, 9 blocks) steps on the GPU, one lever added per row; then the fastest
    row's step fed by the DataLoader over real photos, and from GPU memory (with data vs without)."""
    cfg = CycleGANConfig()
    print(f"GPU: {torch.cuda.get_device_name()}; full-size CycleGAN step, synthetic batches unless said")
    print("| batch | levers | images/s | TFLOP/s | peak GiB | compile s |")
    print("|---|---|---|---|---|---|")
    for batch in batches:
        x = torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1
        flops = flops_per_image(CycleGANTrainer(cfg, "cuda"), x)  # the same maths whatever the levers
        fastest: tuple[float, CycleGANTrainer | None] = (0.0, None)  # the data rows below run the fastest step
        for label, precision, cl, fused, mode in LEVERS:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()  # the batch and the fastest trainer so far: not this row's
            try:
                trainer = CycleGANTrainer(cfg, "cuda", precision=precision, fused=fused, channels_last=cl, compile=mode)
                ips, warm_s = timed_steps(trainer, itertools.repeat((x, x)), steps, batch)
            except Exception as e:  # noqa: BLE001 (a lever that fails here is a row of the table, not the end of it)
                print(f"| {batch} | {label} | failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | |")
                continue
            peak = (torch.cuda.max_memory_allocated() - before) / 2**30
            print(f"| {batch} | {label} | {ips:.1f} | {ips * flops / 1e12:.0f} | {peak:.1f} | "
                  f"{warm_s if mode else 0:.0f} |", flush=True)
            if ips > fastest[0]:
                fastest = (ips, trainer)
            del trainer
        trainer = fastest[1]
        if photos and trainer is not None:
            pairs = loader(photos, str(Path(photos).parent / "monet_jpg"), cfg.image_size, batch, workers=6)
            ips, _ = timed_steps(trainer, endless(pairs), steps, batch)
            print(f"| {batch} | fastest row, real photos through the DataLoader (6 workers, pinned) | {ips:.1f} | | | |")
            on_gpu = DeviceLoader(pairs.dataset, torch.utils.data.RandomSampler(pairs.dataset), batch, "cuda")
            ips, _ = timed_steps(trainer, endless(on_gpu), steps, batch)
            print(f"| {batch} | fastest row, real photos decoded once into GPU memory (DeviceLoader) | {ips:.1f} | | | |")


def gpu_job(photos: str, batch: int, steps: int, storage: str, compile: str | None = None) -> None:
    """The plain loop and one Ray Train worker on the GPU, same full-size model, data, batch and trainer defaults
    (both compiled with `compile`); then the job's own epoch lines (images/s, peak GPU memory, graphs compiled)."""
    import json
    import ray
    from gan.train.driver import make_trainer
    from gan.train.run_checkpoint import HISTORY_FILE
    from gan.train.settings import TrainSettings, check_settings
    paintings = str(Path(photos).parent / "monet_jpg")
    trainer = CycleGANTrainer(CycleGANConfig(), "cuda", compile=compile)  # the job's defaults on CUDA
    plain, _ = timed_steps(trainer, endless(loader(photos, paintings, 256, batch, workers=6)), steps, batch)
    del trainer
    torch.cuda.empty_cache()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    settings = TrainSettings(model="cyclegan", photos=photos, paintings=paintings, epochs=2, batch_size=batch,
                             num_workers=1, use_gpu=True, loader_workers=6, steps_per_epoch=steps,
                             checkpoint_every=2, eval_photos=0, compile=compile)
    result = make_trainer(check_settings(settings), "bench-gpu", storage).fit()
    ray.shutdown()
    with result.checkpoint.as_directory() as d:
        for m in json.loads((Path(d) / HISTORY_FILE).read_text()):
            print(f"job epoch {m['epoch'] + 1}: {m['images_per_s']:.1f} images/s, {m['seconds']:.1f} s, peak "
                  f"{m.get('peak_gpu_gib', 0):.1f} GiB, graphs compiled {m.get('compiled_graphs', '-')}")
    job = result.metrics["images_per_s"]
    print(f"compile {compile or 'off'}: plain loop (real photos, DataLoader, batch {batch}): {plain:.1f} images/s; "
          f"Ray Train job, 1 GPU worker (its defaults: data in GPU memory): {job:.1f} images/s (steady epoch); "
          f"ratio {job / plain:.3f} (target >= 0.95)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="the GPU table instead: full-size CycleGAN, each lever, the job")
    p.add_argument("--gpu-batches", default="1,4", help="--gpu: batch sizes (the original recipe's 1, the job's)")
    p.add_argument("--photos", default=None, help="--gpu: photo folder (paintings in ../monet_jpg) for the runs with data")
    p.add_argument("--compile", default=None, choices=COMPILE_MODES, help="--gpu: the plain loop and the job compiled")
    p.add_argument("--no-levers", action="store_true", help="--gpu: only the plain loop vs the job")
    args = p.parse_args()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device here")
        batches = [int(b) for b in args.gpu_batches.split(",")]
        if not args.no_levers:
            gpu_levers(batches, args.steps, args.photos)
        if args.photos:
            with tempfile.TemporaryDirectory() as tmp:
                gpu_job(args.photos, batches[-1], args.steps, tmp, args.compile)
        return
    cfg = CycleGANConfig(image_size=args.size, ngf=args.ngf, ndf=args.ngf, n_blocks=args.blocks)
    with tempfile.TemporaryDirectory() as tmp:
        write_demo_data(tmp, photos=64, paintings=32)
        plain = plain_loop(tmp, cfg, args.batch, args.steps, args.threads)
        ray_ips, total = ray_train(tmp, cfg, args.batch, args.steps, args.threads, f"{tmp}/runs")
    print(f"model: CycleGAN {args.size}px ngf={args.ngf} blocks={args.blocks}, batch {args.batch}, "
          f"{args.steps} steps, {args.threads} threads")
    print(f"plain PyTorch loop : {plain:.2f} images/s")
    print(f"Ray Train, 1 worker: {ray_ips:.2f} images/s (steady-state epoch; whole fit() incl. start-up {total:.1f} s)")
    print(f"ratio Ray/plain    : {ray_ips / plain:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
