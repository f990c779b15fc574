"""Serve under overload: open-loop load on 127.0.0.1 at 1x, 2x and 4x a replica's measured capacity.

python bench/serve_load.py [--seconds 20] [--max-requests 600] [--ngf 16] [--blocks 3] [--threads 2]

First the replica's capacity (requests/s of closed-loop clients, enough to fill its batches). Then, per rate,
requests arrive on a fixed schedule (Poisson arrivals at the rate, whatever the answers do: open loop), bounded in
count and time, half of them 256 px photos and half 3-5 MB uploads (a large photo, as a phone sends). Per rate it
prints accepted requests/s, p50/p99 latency of accepted requests, the share refused with 503 (and whether each
carried Retry-After), errors other than 503 (must be 0), and the replica's peak RSS and peak requests in progress.
A replica holds at most max_batch_size + max_queued_requests requests, so its memory stays bounded at any rate.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gan.checkpoint import generator_checkpoint, to_bytes  # noqa: E402
from gan.io.images import encode_jpeg  # noqa: E402
from gan.ray_runtime import free_port  # noqa: E402
from gan.models.cyclegan import CycleGANConfig, ResnetGenerator  # noqa: E402


def uploads(rng: np.random.Generator) -> list[bytes]:
    """A 256 px photo, and two large ones of 3-5 MB (noisy PNGs of a few megapixels, as a phone's file weighs)."""
    small = encode_jpeg(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    large = []
    for side in (1100, 1250):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
        large.append(buf.getvalue())
    return [small, *large]


def send(url: str, body: bytes, ctype: str) -> tuple[int, float, bool]:
    """(status, seconds, had Retry-After)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status, time.perf_counter() - t0, False
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - t0, e.headers.get("Retry-After") is not None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return -1, time.perf_counter() - t0, False


def capacity(url: str, photo: bytes, clients: int, seconds: float) -> float:
    """Closed-loop requests/s with `clients` in flight: what one replica answers when it is kept full."""
    stop, done = time.monotonic() + seconds, []

    def client():
        while time.monotonic() < stop:
            done.append(send(url, photo, "image/jpeg")[0])
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(c == 200 for c in done) / (time.perf_counter() - t0)


def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float, limit: int) -> dict:
    """Requests at Poisson arrivals of `rate`/s for `seconds` (at most `limit`), each on its own thread."""
    rng = np.random.default_rng(1)
    gaps = rng.exponential(1 / rate, size=limit)
    results: list[tuple[int, float, bool, int]] = []
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(256) as pool:
        futures, due = [], 0.0
        for i, gap in enumerate(gaps):
            due += gap
            if due > seconds:
                break
            time.sleep(max(0.0, due - (time.perf_counter() - t0)))
            body = bodies[0] if i % 2 == 0 else bodies[1 + (i // 2) % 2]
            futures.append(pool.submit(lambda b=body: (*send(url, b, "image/jpeg" if b is bodies[0] else "image/png"),
                                                       len(b))))
        results = [f.result() for f in futures]
    elapsed = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    lat = np.array([r[1] for r in ok]) if ok else np.array([np.nan])
    return {"sent": len(results), "accepted_per_s": len(ok) / elapsed, "p50_ms": np.percentile(lat, 50) * 1000,
            "p99_ms": np.percentile(lat, 99) * 1000, "shed": len(shed) / max(len(results), 1),
            "retry_after": all(r[2] for r in shed), "other_errors": sum(r[0] not in (200, 503) for r in results),
            "codes": sorted({r[0] for r in results if r[0] not in (200, 503)})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each rate's run")
    p.add_argument("--max-requests", type=int, default=600, help="requests per rate at most")
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--queued", type=int, default=32, help="the replica's max_queued_requests")
    args = p.parse_args()
    import ray
    from ray import serve
    from serve.app import GanServer
    torch.manual_seed(0)
    net = ResnetGenerator(args.ngf, args.blocks).eval()
    bodies = uploads(np.random.default_rng(0))
    print(f"uploads: {len(bodies[0]) / 1e3:.0f} KB photo, {len(bodies[1]) / 1e6:.1f} and {len(bodies[2]) / 1e6:.1f} MB "
          f"large ones; replica: ngf {args.ngf}, {args.blocks} blocks, {args.threads} threads, max_batch_size "
          f"{args.batch}, max_queued_requests {args.queued}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "g.pt"
        ckpt.write_bytes(to_bytes(generator_checkpoint("cyclegan", CycleGANConfig(ngf=args.ngf, n_blocks=args.blocks),
                                                       net)))
        ray.init(address="local", num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = {"checkpoint": str(ckpt), "max_batch_size": args.batch, "batch_wait_timeout_s": 0.01,
                  "torch_threads": args.threads, "max_queued_requests": args.queued, "retry_after_s": 1}
        serve.run(GanServer.options(user_config=config, ray_actor_options={"num_cpus": args.threads}).bind(),
                  name="gan", route_prefix="/")
        url = f"http://127.0.0.1:{port}/stylize"
        capacity(url, bodies[0], 2, 3)  # warm-up
        cap = capacity(url, bodies[0], args.batch * 2, max(5.0, args.seconds / 2))
        print(f"capacity (closed loop, {args.batch * 2} clients, 256 px photos): {cap:.2f} requests/s")
        print("| load | rate req/s | sent | accepted req/s | p50 ms | p99 ms | shed 503 | Retry-After | other errors "
              "| replica peak RSS MiB | peak in progress |\n|---|---|---|---|---|---|---|---|---|---|---|")
        for factor in (1, 2, 4):
            r = open_loop(url, bodies, cap * factor, args.seconds, args.max_requests)
            stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats").read())
            print(f"| {factor}x | {cap * factor:.2f} | {r['sent']} | {r['accepted_per_s']:.2f} | {r['p50_ms']:.0f} | "
                  f"{r['p99_ms']:.0f} | {r['shed']:.1%} | {'yes' if r['retry_after'] else 'NO'} | "
                  f"{r['other_errors']}{' ' + str(r['codes']) if r['codes'] else ''} | {stats['peak_rss_mib']:.0f} | "
                  f"{stats['peak_in_progress']} |", flush=True)
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
