"""Sample quality of digit UNets: a Fréchet distance in the features of our own digits classifier.

This is NOT the Inception FID the paper reports (LAYERMERGE.md §5.2: 50K samples against CIFAR-10
training statistics, in Inception-v3 pool features). Inception needs downloaded weights and 299x299
natural images; 16x16 digits need neither. The recipe is FID's: fit a Gaussian (mean, covariance)
to each set's features and take the Fréchet distance between the two Gaussians,

    FD = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½),

but the features are the 64-d penultimate activations of the shipped ``digits_resnet`` classifier
(98% test accuracy, trained on the classification path's finetune split only). Numbers are
comparable with each other, on this task, and with nothing else. The floor, what two sets of real
digits score, is ``digits_fd(holdout, test)``; the samples of a good model come near it, noise
scores far above.

Example:
    >>> from core.families.unet.sampling import ddim_sample
    >>> from core.families.unet.unet import build_unet
    >>> fd = digits_fd(ddim_sample(build_unet("digits_unet").model, 256))  # vs the test split
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import LayerMergeError
from core.families.unet.data import load_diffusion_digits

__all__ = [
    "FEATURE_MODEL",
    "FEATURE_INPUT_SIZE",
    "digits_features",
    "frechet_distance",
    "digits_fd",
]

FEATURE_MODEL = "digits_resnet"  # the shipped demo classifier whose features FD is measured in
FEATURE_INPUT_SIZE = 32  # the resolution it was trained at


@torch.no_grad()
def digits_features(images: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """The classifier's penultimate features (its final Linear's input) of digit images.

    Args:
        images: (N, 1, S, S) images in [-1, 1], as ``core.families.unet.data`` and the samplers give.
        batch_size: images per forward pass.

    Returns:
        (N, D) float64 features.

    Raises:
        LayerMergeError: not a (N, 1, S, S) tensor.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise LayerMergeError(f"digits features take (N, 1, S, S) images, got {shape}")
    model, head, mean, std = _feature_model()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].detach().float().cpu()
            unit = (batch.clamp(-1.0, 1.0) + 1.0) / 2.0  # (B, 1, S, S) in [0, 1]
            size = (FEATURE_INPUT_SIZE, FEATURE_INPUT_SIZE)
            upscaled = F.interpolate(unit, size=size, mode="bilinear", align_corners=False)
            normalised = ((upscaled - mean) / std).expand(-1, 3, -1, -1)  # (B, 3, 32, 32)
            model(normalised)
    finally:
        hook.remove()
    if not captured:
        return np.zeros((0, head.in_features), dtype=np.float64)
    return torch.cat(captured).flatten(1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    Raises:
        LayerMergeError: fewer than 2 samples in a set, or feature sizes that differ.
    """
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise LayerMergeError(
            f"Fréchet distance needs two (N, D) feature sets of one D, got {a.shape} and {b.shape}"
        )
    if len(a) < 2 or len(b) < 2:
        raise LayerMergeError(
            f"Fréchet distance needs at least 2 samples per set (a covariance), got {len(a)} "
            f"and {len(b)}"
        )
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))  # (D, D)
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # A singular product (e.g. constant images) is expected, and handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            # Fewer samples than dimensions: regularise as pytorch-fid does.
            offset = np.eye(len(cov_a)) * 1e-6
            root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)  # numerical error leaves a tiny imaginary part
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root)
    return float(max(distance, 0.0))


def digits_fd(generated: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Fréchet distance of ``generated`` digits to ``reference`` ones (default: the test split).

    Both are (N, 1, S, S) in [-1, 1]. Use a few hundred images on each side: with fewer, the
    covariance estimate adds a bias that grows as the sample count shrinks, so compare FDs only
    at equal counts.
    """
    if reference is None:
        reference = load_diffusion_digits().test
    return frechet_distance(digits_features(generated), digits_features(reference))


@functools.lru_cache(maxsize=1)
def _feature_model() -> tuple[nn.Module, nn.Linear, float, float]:
    """The shipped classifier, its final Linear, and the mean/std its inputs were normalised by."""
    from core.data import load_data
    from core.models import build_model

    bundle = build_model(FEATURE_MODEL)
    if bundle.weights_source != "shipped":
        raise LayerMergeError(
            f"digits FD needs the shipped trained weights of {FEATURE_MODEL}, which are missing "
            "(python -m core.demo_models train writes them)"
        )
    linears = [m for m in bundle.model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LayerMergeError(f"{FEATURE_MODEL} has no final Linear layer to take features from")
    splits = load_data("digits", input_size=FEATURE_INPUT_SIZE)
    return bundle.model.eval(), linears[-1], float(splits.mean[0]), float(splits.std[0])
