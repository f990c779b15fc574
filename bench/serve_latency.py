"""Serve latency and throughput vs the bare generator, in one run.

python bench/serve_latency.py [--ngf 16] [--blocks 3] [--requests 40] [--threads 2]
Prints p50/p99 latency and requests/s for 1 and 16 concurrent HTTP clients, the bare generator's batch-1
forward time and batched images/s (batch = max_batch_size, same threads), and the two target checks:
16-client requests/s >= 0.7 of bare batched images/s; 1-client p50 within 30 ms of the bare forward time.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan.checkpoint import generator_checkpoint, to_bytes  # noqa: E402
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator  # noqa: E402
from gan.io.images import decode_image, encode_jpeg, to_tensor  # noqa: E402
from gan.ray_runtime import free_port  # noqa: E402


def bare(net, photo: bytes, batch: int, reps: int = 10) -> tuple[float, float]:
    """(seconds per batch-1 forward incl. decode+encode, batched images/s)."""
    x1 = to_tensor(decode_image(photo, "p"))[None]
    xb = x1.repeat(batch, 1, 1, 1)
    with torch.inference_mode():
        net(x1), net(xb)
        t0 = time.perf_counter()
        for _ in range(reps):
            decode_image(photo, "p")
            y = net(x1)
            encode_jpeg(((y[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy())
        single = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        for _ in range(reps // 2 or 1):
            net(xb)
        batched = batch * (reps // 2 or 1) / (time.perf_counter() - t0)
    return single, batched


def load(url: str, photo: bytes, clients: int, requests: int) -> tuple[np.ndarray, float]:
    def one() -> float:
        t0 = time.perf_counter()
        req = urllib.request.Request(url, data=photo, method="POST", headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(lambda _: one(), range(requests)))
    return np.array(lat), requests / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    import ray
    from ray import serve
    from serve.app import GanServer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = ResnetGenerator(args.ngf, args.blocks).eval()
    rng = np.random.default_rng(0)
    photo = encode_jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    single, batched = bare(net, photo, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "g.pt"
        ckpt.write_bytes(to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=args.ngf, n_blocks=args.blocks), net)))
        ray.init(address="local", num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = {"checkpoint": str(ckpt), "max_batch_size": args.batch, "batch_wait_timeout_s": 0.005,
                  "torch_threads": args.threads}
        serve.run(GanServer.options(user_config=config, ray_actor_options={"num_cpus": args.threads}).bind(),
                  name="gan", route_prefix="/")
        url = f"http://127.0.0.1:{port}/stylize"
        load(url, photo, 1, 3)  # warm-up
        lat1, rps1 = load(url, photo, 1, args.requests)
        lat16, rps16 = load(url, photo, 16, args.requests * 4)
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats").read())
        floor = []
        for _ in range(args.requests):  # Serve's HTTP path with no model: proxy -> replica -> back
            t0 = time.perf_counter()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz").read()
            floor.append(time.perf_counter() - t0)
        serve.shutdown()
        ray.shutdown()
    ms = lambda a, q: np.percentile(a, q) * 1000  # noqa: E731
    print(f"generator ngf={args.ngf} blocks={args.blocks}, {args.threads} threads, max_batch_size {args.batch}")
    print(f"bare: batch-1 decode+forward+encode {single * 1000:.1f} ms; batched forward {batched:.2f} images/s")
    print(f" 1 client : p50 {ms(lat1, 50):.1f} ms, p99 {ms(lat1, 99):.1f} ms, {rps1:.2f} req/s")
    print(f"16 clients: p50 {ms(lat16, 50):.1f} ms, p99 {ms(lat16, 99):.1f} ms, {rps16:.2f} req/s")
    print(f"GET /healthz (no model) p50 {np.median(floor) * 1000:.1f} ms: the HTTP path's own floor here")
    print(f"replica batches: {stats['batch_sizes']} (torch threads {stats['torch_threads']})")
    print(f"ratio 16-client req/s / bare batched images/s: {rps16 / batched:.3f} (target >= 0.7)")
    print(f"1-client p50 - bare batch-1 time: {ms(lat1, 50) - single * 1000:.1f} ms (target <= 30 ms)")


if __name__ == "__main__":
    main()
