"""Assembling the submission zip from object storage: reads one at a time vs read ahead in threads, side by side.

python bench/zip_read_ahead.py [--count 1000] [--latency-ms 0,10,30]
The same `count` 256x256 JPEGs are zipped by `gan.batch.submission.assemble` with S3Storage.read_ahead reads in
flight and with one read at a time (the peer: what assemble did before, and still does for a local folder), from
a folder whose every read first waits `latency` ms, as an S3 GET waits for its first byte (tens of ms from a
cluster; a moto server on 127.0.0.1 has none, it is CPU-bound instead). Both zips must come out byte-identical.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gan.batch.submission import assemble  # noqa: E402
from gan.io.images import encode_jpeg  # noqa: E402
from gan.io.storage import LocalStorage, S3Storage  # noqa: E402


class SlowReads(LocalStorage):
    """A folder whose reads wait `latency` seconds first, as a GET waits for its first byte; `read_ahead` as given
    (S3Storage's, or 0: one read at a time, the peer)."""

    def __init__(self, root: str, latency: float, read_ahead: int):
        super().__init__(root)
        self.latency, self.read_ahead = latency, read_ahead

    def read(self, key: str) -> bytes:
        time.sleep(self.latency)
        return super().read(key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--latency-ms", default="0,10,30")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zip-bench-"))
    rng = np.random.default_rng(0)
    folder = work / "images"
    folder.mkdir()
    for i in range(args.count):  # smooth noise, about the size of a stylized photo's JPEG
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (folder / f"{i:06d}.jpg").write_bytes(encode_jpeg(np.kron(small, np.ones((8, 8, 1), np.uint8))))
    print("| read latency | one at a time | read ahead | ratio |\n|---|---|---|---|")
    for ms in (float(m) for m in args.latency_ms.split(",")):
        t0 = time.perf_counter()
        assemble(SlowReads(str(folder), ms / 1000, 0), str(work / "serial.zip"), min_images=1, max_images=args.count)
        t1 = time.perf_counter()
        assemble(SlowReads(str(folder), ms / 1000, S3Storage.read_ahead), str(work / "ahead.zip"), min_images=1,
                 max_images=args.count)
        t2 = time.perf_counter()
        assert (work / "serial.zip").read_bytes() == (work / "ahead.zip").read_bytes(), "the zips differ"
        print(f"| {ms:g} ms | {args.count / (t1 - t0):,.0f} images/s | {args.count / (t2 - t1):,.0f} images/s | "
              f"{(t1 - t0) / (t2 - t1):.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
