"""Images for diffusion UNets: the bundled digits, upscaled, in [-1, 1], with the classifier's splits.

A diffusion model learns the image distribution itself, so it gets no labels, no normalisation and
no augmentation: scikit-learn's 8x8 digits are upscaled to ``size`` (bilinear) and mapped from
[0, 1] to [-1, 1], the range DDPM samplers clip to. The three splits reuse the classification
path's seeded split indices (``core.data``), so the test split no demo model ever trained on, the
classifier that measures sample quality (``core.families.unet.quality``) included, is the diffusion
test split too.

Example:
    >>> data = load_diffusion_digits()
    >>> data.train.shape[1:], float(data.train.min()), float(data.train.max())
    (torch.Size([1, 16, 16]), -1.0, 1.0)
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.data import _split_indices, digits_arrays
from core.errors import DataError

__all__ = [
    "DIFFUSION_DIGITS_SIZE",
    "DIFFUSION_DATA_VERSION",
    "DiffusionData",
    "load_diffusion_digits",
    "load_diffusion_data",
    "diffusion_data_problem",
]

DIFFUSION_DIGITS_SIZE = 16  # 8x8 digits upscaled twice: a UNet with two resolutions fits
DIFFUSION_DATA_VERSION = 1  # bump when the recipe changes: it changes the digest


@dataclass(frozen=True)
class DiffusionData:
    """Three disjoint splits of images for a diffusion UNet.

    ``train`` is what finetuning and importance estimation train on, ``holdout`` what importance
    is evaluated on, ``test`` what sample quality is measured against. Each is a float32 tensor of
    shape (N, 1, size, size) in [-1, 1].
    """

    name: str
    train: torch.Tensor
    holdout: torch.Tensor
    test: torch.Tensor
    digest: str  # content digest of spec, seed, size and split sizes: part of table cache keys
    size: int


@functools.lru_cache(maxsize=4)
def load_diffusion_digits(size: int = DIFFUSION_DIGITS_SIZE, seed: int = 0) -> DiffusionData:
    """The bundled digits as diffusion training images, split as the classifiers split them.

    Cached: the app's pages, importance workers and tests all ask for the same tensors; callers
    must not modify them in place.

    Args:
        size: side of the upscaled images (at least 8).
        seed: the split seed (``core.data``'s; 0 is the split the demo models use).

    Returns:
        The train (the classifier's finetune indices), holdout and test splits.

    Raises:
        DataError: a size below 8 or a negative seed.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise DataError(f"diffusion image size must be an integer of at least 8, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    images, _labels = digits_arrays()  # (1797, 8, 8) in [0, 1]
    train_idx, holdout_idx, test_idx = _split_indices(len(images), seed)
    splits = {
        name: _to_diffusion_range(images[idx], size)
        for name, idx in (("train", train_idx), ("holdout", holdout_idx), ("test", test_idx))
    }
    recipe = {
        "version": DIFFUSION_DATA_VERSION,
        "spec": "digits",
        "seed": seed,
        "size": size,
        "sizes": [len(train_idx), len(holdout_idx), len(test_idx)],
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return DiffusionData(name="digits", digest=digest, size=size, **splits)


def load_diffusion_data(
    spec: str = "digits", size: int = DIFFUSION_DIGITS_SIZE, seed: int = 0
) -> DiffusionData:
    """Diffusion images by ``--data`` spec; only the bundled digits so far.

    Raises:
        DataError: any spec other than ``digits``.
    """
    problem = _spec_problem(spec)
    if problem is not None:
        raise DataError(problem)
    return load_diffusion_digits(size, seed)


def _spec_problem(spec: object) -> str | None:
    """Why ``spec`` names no diffusion data (only the bundled digits so far), or None."""
    if isinstance(spec, str) and spec.strip().lower() == "digits":
        return None
    return (
        f"data spec {spec!r}: only the bundled digits ('digits') are supported for diffusion "
        "models so far"
    )


def diffusion_data_problem(spec: str, in_channels: int, *, name: str = "the UNet") -> str | None:
    """Why the data ``spec`` cannot train UNet ``name`` of ``in_channels``-channel images, or None.

    The only diffusion data so far is the bundled digits (1 channel, :func:`load_diffusion_data`):
    a UNet of RGB images could be timed, but not trained or scored on them.
    """
    problem = _spec_problem(spec)
    if problem is not None or in_channels == 1:
        return problem
    return (
        f"{name} takes {in_channels}-channel images, and the only diffusion data so far is the "
        "bundled digits (1 channel): importance and finetuning need images it can learn from"
    )


def _to_diffusion_range(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] -> (N, 1, size, size) float32 in [-1, 1]."""
    source = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    upscaled = F.interpolate(source, size=(size, size), mode="bilinear", align_corners=False)
    # Bilinear interpolation stays within its inputs' range; the clamp only guards rounding.
    return (upscaled * 2.0 - 1.0).clamp_(-1.0, 1.0).contiguous()
