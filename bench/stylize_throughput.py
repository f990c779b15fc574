"""Stylize throughput: the Ray Data job vs a bare loop vs a plain DataLoader script, side by side in one run.

python bench/stylize_throughput.py [--photos DIR] [--count 400] [--ngf 32] [--blocks 6] [--full]
- bare loop: the same generator over pre-decoded tensors (no I/O), same threads, same batch size;
- DataLoader script: read + decode in 1 loader worker, stylize, encode + write in the main process;
- the job: jobs.stylize's engine (Ray Data: decode tasks -> actor pool -> encode/write tasks).
--full also runs the whole 7,038-photo set with a small generator and prints seconds and the driver's peak RSS.
--gpu (on a CUDA machine): the full-size generator alone, eager and compiled, vs bench/plain_stylize.py vs
`python -m jobs.stylize` [--compile] [--device-jpeg] over 1,500 and 6,000 photos: images/s and wall clock, one table.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan.checkpoint import generator_checkpoint, to_bytes  # noqa: E402
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator  # noqa: E402
from gan.io.images import decode_image, encode_jpeg, to_pixels, to_tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KAGGLE = ROOT.parent / "shared" / "data" / "gan-getting-started" / "photo_jpg"


def make_checkpoint(path: Path, ngf: int, blocks: int) -> str:
    torch.manual_seed(0)
    g = ResnetGenerator(ngf, blocks)
    path.write_bytes(to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=ngf, n_blocks=blocks), g)))
    return str(path)


def bare_loop(files: list[Path], ckpt: str, batch: int, threads: int) -> float:
    from gan.checkpoint import from_bytes
    torch.set_num_threads(threads)
    net = from_bytes(Path(ckpt).read_bytes()).build().to(memory_format=torch.channels_last)
    x = to_tensor(np.stack([decode_image(f.read_bytes(), f.name) for f in files]))
    with torch.inference_mode():
        net(x[:batch].contiguous(memory_format=torch.channels_last))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            net(x[i:i + batch].contiguous(memory_format=torch.channels_last))
    return len(x) / (time.perf_counter() - t0)


class Photos(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        f = self.files[i]
        return to_tensor(decode_image(f.read_bytes(), f.name)), f.stem


def dataloader_script(files: list[Path], ckpt: str, batch: int, threads: int, out: Path) -> float:
    from gan.checkpoint import from_bytes
    t0 = time.perf_counter()  # like the job's figure: model load and loader start-up included
    torch.set_num_threads(threads)
    net = from_bytes(Path(ckpt).read_bytes()).build().to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(Photos(files), batch_size=batch, num_workers=1)
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for x, names in loader:
            y = to_pixels(net(x.contiguous(memory_format=torch.channels_last)))
            for img, name in zip(y, names):
                (out / f"{name}.jpg").write_bytes(encode_jpeg(img))
    return len(files) / (time.perf_counter() - t0)


def ray_job(src: Path, ckpt: str, batch: int, out: Path, device_jpeg: bool = False) -> tuple[float, float]:
    from gan.batch.engine import BatchOptions
    from gan.io.storage import open_storage
    from gan.batch.stylize import stylize
    t0 = time.perf_counter()
    result = stylize(str(src), BatchOptions(checkpoint=ckpt, output=open_storage(str(out)), batch_size=batch,
                                            progress=False, device_jpeg=device_jpeg))
    wall = time.perf_counter() - t0
    return result.report["images_per_s"], wall


def bare_gpu(batch: int, steps: int = 20, compiled: bool = False) -> tuple[float, float]:
    """The full-size generator alone on tensors already on the GPU (bf16, channels_last): (images/s, compile s)."""
    net = ResnetGenerator().cuda().eval().to(memory_format=torch.channels_last)
    x = (torch.rand(batch, 3, 256, 256, device="cuda") * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        t0 = time.perf_counter()
        if compiled:
            net = torch.compile(net, dynamic=False)
        net(x)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            net(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            net(x)
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0), compile_s


def linked_photos(photos: list[Path], count: int, into: Path) -> Path:
    """`count` inputs made of the photos linked over and over (copy k of x.jpg is k-x.jpg)."""
    into.mkdir(parents=True)
    for i in range(count):
        f = photos[i % len(photos)]
        (into / f"{i // len(photos)}-{f.name}").symlink_to(f.resolve())
    return into


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - t0, done.stdout


def gpu_table(photos: str, counts: list[int], batch: int, workers: int) -> None:
    """Side by side on this GPU, full-size generator: the generator alone (eager, compiled), the plain script
    (bench/plain_stylize.py) and `python -m jobs.stylize` (eager, --compile), each as a fresh process whose
    wall clock includes its start (the job's includes Ray's); the job's own images/s is its pipeline's."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")
    eager, _ = bare_gpu(batch)
    compiled, compile_s = bare_gpu(128, compiled=True)
    print(f"GPU: {torch.cuda.get_device_name()}; full-size generator (ngf 64, 9 blocks), bf16 + channels_last")
    print(f"generator alone, batch {batch}, tensors on the GPU: {eager:.0f} images/s")
    print(f"generator alone, torch.compile, batch 128         : {compiled:.0f} images/s ({compile_s:.0f} s compile)")
    files = sorted(Path(photos).glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "full.pt", 64, 9)
        print("| photos | what | images/s in the work | wall s (process) | wall/peer wall |")
        print("|---|---|---|---|---|")
        for n in counts:
            src = linked_photos(files, n, tmp / f"in{n}")
            peer_wall, out = timed([sys.executable, "bench/plain_stylize.py", "--checkpoint", ckpt, "--input", str(src),
                                    "--output", str(tmp / f"peer{n}"), "--batch", str(batch), "--workers", str(workers)])
            print(f"| {n} | plain script ({workers} loader workers) | {n / peer_wall:.0f} | {peer_wall:.1f} | 1.00 |")
            variants = [[], ["--compile"]]
            if importlib.util.find_spec("torchvision"):  # --device-jpeg decodes with torchvision.io
                variants += [["--device-jpeg"], ["--compile", "--device-jpeg"]]
            else:
                print(f"| {n} | jobs.stylize --device-jpeg: not run, torchvision is not installed here | | | |")
            for i, extra in enumerate(variants):
                label, out_dir = " ".join(["jobs.stylize", *extra]), tmp / f"job{n}-{i}"
                wall, _ = timed([sys.executable, "-m", "jobs.stylize", "--checkpoint", ckpt, "--input", str(src),
                                 "--output", str(out_dir), "--batch-size", str(batch), "--no-progress", *extra])
                report = json.loads((out_dir / "_report.json").read_text())
                print(f"| {n} | {label} | {report['images_per_s']:.0f} | {wall:.1f} | {wall / peer_wall:.2f} |")


def full_run(photos: str) -> None:
    """The whole photo set through `python -m jobs.stylize`, as a user runs it; its report gives the driver's peak."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "small.pt", 8, 1)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.stylize", "--checkpoint", ckpt, "--input", photos,
                        "--output", f"{tmp}/full", "--batch-size", "32", "--no-progress"],
                       cwd=Path(__file__).resolve().parents[1], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        report = json.loads((Path(tmp) / "full" / "_report.json").read_text())
    c = report["counts"]
    print(f"full set: {c['outputs']} photos ({c['rejected']} rejected) in {seconds:.1f} s wall (command incl. Ray "
          f"start), {report['seconds']:.1f} s in the pipeline = {report['images_per_s']:.1f} images/s; "
          f"generator ngf=8 blocks=1; driver peak RSS {report['driver_peak_rss_mib']:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--photos", default=str(KAGGLE))
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--full", action="store_true", help="also the whole photo set with a small generator")
    p.add_argument("--gpu", action="store_true", help="the GPU table instead: full-size generator, job vs plain script")
    p.add_argument("--gpu-counts", default="1500,6000", help="--gpu: photo counts (photos linked over and over)")
    p.add_argument("--loader-workers", type=int, default=8, help="--gpu: the plain script's DataLoader workers")
    args = p.parse_args()
    if args.gpu:
        gpu_table(args.photos, [int(c) for c in args.gpu_counts.split(",")], max(args.batch, 32), args.loader_workers)
        return
    import ray
    from gan.ray_runtime import ensure_ray
    cpus = os.cpu_count() or 2
    threads = max(1, cpus - 1) if cpus > 2 else cpus  # what the job's CPU actor gets
    if args.full:  # first, while this process is small: a child's ru_maxrss starts at its parent's peak
        full_run(args.photos)
    files = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        for f in files:
            shutil.copyfile(f, src / f.name)
        ckpt = make_checkpoint(tmp / "g.pt", args.ngf, args.blocks)
        bare = bare_loop(files, ckpt, args.batch, threads)
        dl = dataloader_script(files, ckpt, args.batch, threads, tmp / "dl")
        ensure_ray()
        job, wall = ray_job(src, ckpt, args.batch, tmp / "job")
        jpeg_job, jpeg_wall = ray_job(src, ckpt, args.batch, tmp / "job-jpeg", device_jpeg=True)
        print(f"{len(files)} photos, generator ngf={args.ngf} blocks={args.blocks}, batch {args.batch}, "
              f"{threads} model threads on {cpus} cores")
        print(f"bare loop (pre-decoded tensors) : {bare:.2f} images/s")
        print(f"DataLoader script (1 worker)    : {dl:.2f} images/s  ({dl / bare:.3f} of bare)")
        print(f"stylize job (Ray Data actors)   : {job:.2f} images/s  (job wall incl. planning {wall:.1f} s)")
        print(f"stylize --device-jpeg           : {jpeg_job:.2f} images/s  (wall {jpeg_wall:.1f} s; the actor decodes "
              f"and encodes)")
        print(f"ratio job/bare       : {job / bare:.3f} (target >= 0.9)")
        print(f"ratio job/DataLoader : {job / dl:.3f} (target >= 0.95)")
    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    main()
