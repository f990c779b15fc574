"""Reading a zip's images back from an S3 server: what one driver process spends per GET, and whether processes help.

python bench/s3_zip_reads.py [--count 3000] [--modes get,zip,processes] [--repeat 2] [--s3rver PATH]
`count` copies of one 256x256 JPEG are put on a moto server on 127.0.0.1 (in this process, as in bench/scale.py; or
s3rver, its own process, with --s3rver: see bench/s3_server.py), then read back by a separate client process per
mode, alternated `repeat` times: `get` (16 GETs in flight, no check: boto3 alone), `zip` (`checked_images` with
S3Storage.read_ahead: what `assemble` does below 20,000 images), `processes` (`checked_images` in 2 processes:
chunks of 128 keys, S3Storage.process_read_ahead GETs in flight in each: what `assemble` does from 20,000). Per
mode: images/s and the client's CPU per image (its own and its children's; the processes' imports included). On
moto the server is the limit; the CPU per image says where one driver process would stop on S3.
"""
from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan.batch.submission import checked_images  # noqa: E402
from gan.io.storage import open_storage  # noqa: E402

BUCKET, PREFIX = "zip-reads", "out"


def cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def client(mode: str, count: int) -> None:
    storage = open_storage(f"s3://{BUCKET}/{PREFIX}")
    keys = [f"{i:06d}.jpg" for i in range(count)]
    storage.read(keys[0])  # the client built, its first connection made, before the clock starts
    cpu, start = cpu_s(), time.monotonic()
    if mode == "get":
        with ThreadPoolExecutor(storage.read_ahead) as pool:
            n = sum(1 for _ in pool.map(storage.read, keys))
    elif mode == "zip":
        n = sum(1 for _ in checked_images(storage, keys, storage.read_ahead))
    elif mode == "processes":
        n = sum(1 for _ in checked_images(storage, keys, processes=2))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    wall, cpu = time.monotonic() - start, cpu_s() - cpu
    print(f"{mode:10s} {n:6d} images  {wall:7.2f} s  {n / wall:6.0f} images/s  client CPU {1000 * cpu / n:5.2f} ms "
          "per image", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--modes", default="get,zip,processes")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--s3rver", help="s3rver's executable (npm install s3rver@3.7.1): serve with it, not moto")
    args = p.parse_args()

    import boto3
    import numpy as np
    from PIL import Image

    from bench.s3_server import start_s3_server
    server, _ = start_s3_server(BUCKET, args.s3rver)
    s3 = boto3.client("s3")
    pixels = (np.random.default_rng(0).random((256, 256, 3)) * 60 + 100).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{i:06d}.jpg", Body=buf.getvalue()),
                      range(args.count)))
    print(f"{args.count} objects of {len(buf.getvalue())} bytes on {'s3rver' if args.s3rver else 'moto'}; "
          "one client process per mode", flush=True)
    try:
        for _ in range(args.repeat):
            for mode in args.modes.split(","):
                subprocess.run([sys.executable, __file__, "--client", mode, str(args.count)], check=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
