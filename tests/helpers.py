"""Files that tests feed to readers: good images in every odd mode, and broken ones."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (256, 256), fmt: str = "JPEG", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    else:
        img = rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG that claims a huge size: Pillow's guard must refuse it before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD_ODD = {  # valid but odd: must be converted, never rejected
    "gray.png": lambda: image_bytes("L", fmt="PNG"),
    "rgba.png": lambda: image_bytes("RGBA", fmt="PNG"),
    "cmyk.jpg": lambda: image_bytes("CMYK"),
    "sixteen.png": lambda: image_bytes("I;16", fmt="PNG"),
    "large.jpg": lambda: image_bytes(size=(600, 600)),
    "small.png": lambda: image_bytes(size=(40, 40), fmt="PNG"),
    "wide.jpg": lambda: image_bytes(size=(400, 200)),
    "palette.gif": lambda: image_bytes("P", fmt="GIF"),
}

BROKEN = {  # must be rejected with a reason
    "empty.jpg": lambda: b"",
    "notes.jpg": lambda: b"this is not an image at all\n" * 10,
    "truncated.jpg": lambda: image_bytes()[:2000],
    "corrupt.png": lambda: image_bytes(fmt="PNG")[:60] + b"\x00" * 500,
    "bomb.png": bomb_png,
}


def write_files(folder: Path, files: dict) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, make in files.items():
        out[name] = make()
        (folder / name).write_bytes(out[name])
    return out


def floats(losses: dict) -> dict[str, float]:
    """A trainer step's losses (0-dim tensors, left on the device) as numbers."""
    return {k: float(v) for k, v in losses.items()}
