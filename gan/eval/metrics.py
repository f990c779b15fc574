"""FID and MiFID on feature vectors, as the Kaggle competitions compute them.

MiFID (Kaggle's evaluator, first used for Generative Dog Images):
  FID between generated and real features;
  d = mean over generated images of min over training images of (1 - |cos|), all-zero rows dropped;
  d is kept if d < eps (0.1), else replaced by 1;  MiFID = FID / (d + 1e-14).
torchmetrics' MiFID module takes the minimum the other way round (per real image over the generated
ones) and uses one set for FID and memorization; we call its helper with the arguments in the
competition's order (generated first) and keep the training set separate.
"""
from __future__ import annotations

import numpy as np
import torch

# torchmetrics (with scipy) is imported by the two functions that use it, not here: it costs ~1.5 s, and this
# module is imported by every training worker and job driver, most of which never compute a score.

EPSILON = 0.1


class MetricsUnavailableError(ValueError):
    """Scoring was asked for where torchmetrics (the `metrics` extra) is not installed: the same on every retry."""


def require_metrics() -> None:
    """Fail before any work, in one line, where a score could not be computed at the end (found, not imported)."""
    import importlib.util
    if importlib.util.find_spec("torchmetrics") is None:
        raise MetricsUnavailableError("FID and MiFID need torchmetrics: pip install 'gan-art[metrics]' (or "
                                      "torchmetrics and scipy); to train without the in-training score, "
                                      "--eval-photos 0")


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance in float64."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows, got shape {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    from torchmetrics.image.fid import _compute_fid
    return float(_compute_fid(mu1, sigma1, mu2, sigma2).clamp_min(0))


def fid(generated: np.ndarray, real: np.ndarray) -> float:
    return fid_from_stats(*gaussian_stats(generated), *gaussian_stats(real))


def memorization_distance(generated: np.ndarray, train: np.ndarray) -> float:
    """Raw d: mean over generated rows of the min over training rows of 1 - |cosine similarity|."""
    from torchmetrics.image.mifid import _compute_cosine_distance
    g = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(train), dtype=torch.float64)
    return float(_compute_cosine_distance(g, t, cosine_distance_eps=float("inf")))


def kid(generated: np.ndarray, real: np.ndarray) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased estimate of the squared MMD between the two
    sets under the kernel k(x, y) = (x.y / dim + 1)^3, over all of both sets (sizes may differ: 1,500 generated
    images against 240 paintings). Unbiased at any size, unlike FID, which falls as the sets grow."""
    x = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) < 2 or len(y) < 2:
        raise ValueError(f"need at least 2 feature rows each, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    kernel = lambda a, b: (a @ b.T / x.shape[1] + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within = ((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1)) +
              (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1)))  # i != j only: what makes it unbiased
    return float(within - 2 * kernel(x, y).mean())


def mifid(generated: np.ndarray, real: np.ndarray, train: np.ndarray | None = None, eps: float = EPSILON) -> dict:
    """{"fid", "distance" (raw d), "distance_used" (d or 1), "memorization_penalized", "mifid", "kid"}."""
    train = real if train is None else train
    f = fid(generated, real)
    d = memorization_distance(generated, train)
    used = d if d < eps else 1.0
    return {"fid": f, "distance": d, "distance_used": used, "memorization_penalized": used < 1.0,
            "epsilon": eps, "mifid": f / (used + 1e-14), "kid": kid(generated, real)}
