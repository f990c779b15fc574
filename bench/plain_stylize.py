"""The honest peer of `jobs.stylize`: the plain PyTorch script a user would write for one machine.

python bench/plain_stylize.py --checkpoint G.pt --input photos/ --output out/ [--batch 32] [--workers 8]
DataLoader workers decode (Pillow), pinned memory, non-blocking copies, bf16 autocast + channels_last on CUDA,
a thread pool encoding and writing the JPEGs while the GPU runs the next batch. No manifest, no resume, no
reject report: only the work. Prints one JSON line: images, seconds (from the start of the process), images/s.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gan.checkpoint import from_bytes  # noqa: E402


class Photos(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as im:
            pixels = np.asarray(im.convert("RGB").resize((256, 256), Image.BICUBIC))
        return torch.from_numpy(pixels.copy()), self.files[i].stem  # (256, 256, 3) uint8


def save(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, quality=95)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--encoders", type=int, default=8)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    net = from_bytes(Path(args.checkpoint).read_bytes()).build(device).eval().to(memory_format=torch.channels_last)
    files = sorted(f for f in Path(args.input).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(Photos(files), batch_size=args.batch, num_workers=args.workers,
                                         pin_memory=cuda, persistent_workers=False)
    pending = []
    with ThreadPoolExecutor(args.encoders) as pool, torch.inference_mode(), \
            torch.autocast(device.type, torch.bfloat16, enabled=cuda):
        for pixels, names in loader:
            x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)  # (B, 3, H, W)
            y = net(x).float().clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
            y = y.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            pending += [pool.submit(save, img, out / f"{name}.jpg") for img, name in zip(y, names)]
        for f in pending:
            f.result()
    seconds = time.perf_counter() - START
    print(json.dumps({"images": len(files), "seconds": round(seconds, 3), "images_per_s": round(len(files) / seconds, 2)}))


if __name__ == "__main__":
    main()
