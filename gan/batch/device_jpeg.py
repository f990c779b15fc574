"""JPEG decoding and encoding on the model's device (nvJPEG through `torchvision.io` on CUDA), Pillow for the rest.

With it the CPU only reads bytes: a batch of compressed photos (~25 KB each) goes to the GPU instead of decoded
pixels (196 KB each), and the results come back as JPEG bytes. Only what nvJPEG decodes to the image policy's
pixels goes that way: a whole (ends with EOI) baseline 3-channel JPEG that is already the model's size, so no
mode conversion, crop or resize is needed. PNG, greyscale, CMYK, progressive, other sizes, and anything the
device decoder refuses take the Pillow path (`gan.io.images.decode_image`), with its checks and reject reasons.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image

from gan.io.images import MAX_BYTES, BadImageError, decode_image


def fits_device_decode(data: bytes, size: int) -> bool:
    """Whether `data` is a JPEG that the device decoder turns into exactly what the Pillow path would give (up to
    the decoders' rounding): read from the header only, nothing is decoded here."""
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\0").endswith(b"\xff\xd9")) or len(data) > MAX_BYTES:
        return False  # not a JPEG, or truncated (the Pillow path names it)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # parses the markers, decodes no pixel
                return (img.format == "JPEG" and img.mode == "RGB" and img.size == (size, size)
                        and not img.info.get("progressive") and not img.info.get("progression"))
    except Exception:  # noqa: BLE001 - anything odd about the header: the Pillow path judges it
        return False


def decode_to_device(datas: list[bytes], names: list[str], size: int,
                     device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """Images as (B, 3, size, size) uint8 on `device` and one error per image ("" when it decoded).

    Device-decodable JPEGs are decoded there in one batched call; the others, and any the device decoder
    refuses, by Pillow on the host and copied over. An image that neither decodes is zeros with its error.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    out = torch.zeros((len(datas), 3, size, size), dtype=torch.uint8, device=device)
    errors = [""] * len(datas)
    fast = [i for i, d in enumerate(datas) if fits_device_decode(d, size)]
    decoded: dict[int, torch.Tensor] = {}
    if fast:
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in fast]
        try:
            decoded = dict(zip(fast, decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)))
        except RuntimeError:  # one bad image fails the batched call: decode them one by one
            for i, t in zip(fast, tensors):
                try:
                    decoded[i] = decode_jpeg(t, mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    pass  # left to Pillow, which names what is wrong
    for i, data in enumerate(datas):
        image = decoded.get(i)
        if image is not None and image.shape == (3, size, size):
            out[i] = image
            continue
        try:
            pixels = decode_image(data, names[i], size)  # (size, size, 3) uint8
            out[i] = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).to(device)  # (a writable copy)
        except BadImageError as e:
            errors[i] = str(e)
    return out, errors


def encode_on_device(images: torch.Tensor, quality: int = 95) -> list[bytes]:
    """(B, 3, H, W) uint8 on any device -> one JPEG each, encoded where the images are (nvJPEG on CUDA)."""
    from torchvision.io import encode_jpeg
    if len(images) == 0:
        return []
    encoded = encode_jpeg(list(images), quality=quality)
    return [np.asarray(e.cpu()).tobytes() for e in encoded]
