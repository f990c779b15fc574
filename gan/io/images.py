"""Decoding untrusted image bytes into model-ready pixels, and encoding results as JPEG.

Size policy: any mode is converted to 8-bit RGB (alpha composited over white, 16-bit scaled down);
a non-square image is centre-cropped to its shorter side; then it is resized (Lanczos) to the model size.
Pillow's decompression-bomb guard stays on and its warning is treated as an error.
"""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image, ImageFile

if TYPE_CHECKING:  # torch loads only where tensors are made: decode, read and write tasks and the zip's processes
    import torch   # import this module without it (~1.5 s of CPU and ~200 MB per process)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
MAX_BYTES = 50 * 1024 * 1024             # one input file; larger ones are refused before decoding
IMAGE_SIZE = 256                         # Kaggle's images and submission; what batch jobs and Serve read and write


class BadImageError(ValueError):
    """An input that is not a usable image; the message names the file and what is wrong."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def open_image(data: bytes, name: str, draft: tuple[int, int] | None = None,
               header: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Fully decode `data` as an image, raising BadImageError for anything broken or dangerous.

    `draft` (w, h): a JPEG is decoded at the smallest DCT scale (1/2 to 1/8) that still covers that size. Every byte
    of its stream is still read and entropy-decoded, so a truncated or damaged file fails as at full size, for about
    half the cost; the image returned is the reduced one. `header` is called with the image as opened, before it is
    decoded (its format, size and mode as stored), and may raise its own error."""
    img = open_header(data, name)
    if header is not None:
        header(img)
    with _decoding(name):
        if draft is not None:
            img.draft("RGB", draft)  # JPEG only; other formats ignore it
        img.load()
    if img.width < 1 or img.height < 1:
        raise BadImageError(name, f"image has no pixels ({img.width}x{img.height})")
    return img


def open_header(data: bytes, name: str) -> Image.Image:
    """`data` opened, not decoded: its format, size and mode as stored (BadImageError for what cannot be opened)."""
    if len(data) == 0:
        raise BadImageError(name, "file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise BadImageError(name, f"file is {len(data)} bytes, over the {MAX_BYTES}-byte limit")
    with _decoding(name):
        return Image.open(io.BytesIO(data))


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Pillow's errors while opening or decoding `name`, as one BadImageError; the decompression-bomb guard on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(name, f"refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(name, "not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImageError(name, f"corrupt or truncated image ({e})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to size x size."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    return img


def decode_image(data: bytes, name: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bytes of any image -> (size, size, 3) uint8 RGB, or BadImageError naming `name`."""
    img = open_image(data, name)
    try:
        return np.asarray(fit_square(to_rgb(img), size), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise BadImageError(name, f"cannot convert image of mode {img.mode} ({e})") from None


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    import torch
    t = torch.from_numpy(np.array(pixels, dtype=np.float32)).div_(127.5).sub_(1.0)
    return t.movedim(-1, -3)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> the same shape in float [-1, 1], where the images are (the values of `to_tensor`)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [-1, 1] -> the same shape in uint8, where the images are."""
    import torch
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    return to_uint8(images).movedim(-3, -1).cpu().numpy()
