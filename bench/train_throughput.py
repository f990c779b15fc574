"""Ray Train overhead: images/s of one Ray Train worker vs a plain PyTorch loop, same model, data and threads.

python bench/train_throughput.py [--threads 2] [--steps 30] [--size 128] [--ngf 16] [--blocks 3]
Both run the same CycleGANTrainer steps over the same DataLoader; the Ray figure is the worker's steady-state
epoch (the second one), so Ray's start-up is reported separately, not mixed into the ratio.
On a CUDA machine it also prints the full-size generator's training images/s with bf16 + channels_last vs fp32.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gan.models.cyclegan import CycleGANConfig, CycleGANTrainer  # noqa: E402
from gan.train.data import ImageDataset, UnpairedDataset, load_encoded_images  # noqa: E402
from gan.train.demo_data import write_demo_data  # noqa: E402


def plain_loop(data: str, cfg: CycleGANConfig, batch: int, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    photos, _ = load_encoded_images(f"{data}/photo_jpg")
    paintings, _ = load_encoded_images(f"{data}/monet_jpg")
    ds = UnpairedDataset(ImageDataset(photos, cfg.image_size, True), ImageDataset(paintings, cfg.image_size, True))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True)
    trainer = CycleGANTrainer(cfg)
    it = iter(loader)
    for _ in range(3):  # warm-up
        trainer.step(*next(it))
    t0, n = time.perf_counter(), 0
    while n < steps:
        for a, b in loader:
            trainer.step(a, b)
            n += 1
            if n >= steps:
                break
    return steps * batch / (time.perf_counter() - t0)


def ray_train(data: str, cfg: CycleGANConfig, batch: int, steps: int, threads: int, storage: str) -> tuple[float, float]:
    import ray
    from gan.train.loop import TrainSettings, check_settings, make_trainer
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
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


def gpu_precision(steps: int = 20) -> None:
    if not torch.cuda.is_available():
        print("gpu: no CUDA device here; the bf16/channels_last comparison runs on a GPU machine")
        return
    x = torch.rand(4, 3, 256, 256, device="cuda") * 2 - 1
    for label, precision, cl in (("fp32", "fp32", False), ("bf16+channels_last", "bf16", True)):
        trainer = CycleGANTrainer(CycleGANConfig(), "cuda", precision=precision)
        if cl:
            for m in (trainer.g_ab, trainer.g_ba, trainer.d_a, trainer.d_b):
                m.to(memory_format=torch.channels_last)
        for _ in range(3):
            trainer.step(x, x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step(x, x)
        torch.cuda.synchronize()
        print(f"gpu {label}: {steps * 4 / (time.perf_counter() - t0):.1f} images/s (full-size CycleGAN step, batch 4)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3)
    args = p.parse_args()
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
    gpu_precision()


if __name__ == "__main__":
    main()
