"""The ε-prediction loss of a diffusion UNet (LAYERMERGE.md §4.2), for evaluation and training.

A DDPM UNet predicts the noise ε that was added to an image at timestep t. LayerMerge measures a
modified UNet by how much worse it predicts that noise on held-out images:
``Σ_pixels (ε − ε̂)²``, averaged over images, with antithetic timesteps (half the images at t,
half at T−1−t, which lowers the variance of the estimate across the whole noise range).
The reference code draws fresh, unseeded noise for every evaluation, so two evaluations of the
same model differ; :func:`epsilon_loss` seeds it, so importance differences are differences of
models, not of noise draws.

Only ``unet(noisy, timesteps).sample`` is relied on: UNets with ResnetBlock2Ds replaced by the
training-form or merged blocks of ``core.families.unet`` are evaluated the same way.

Example:
    >>> from core.families.unet.unet import build_unet
    >>> from core.families.unet.data import load_diffusion_digits
    >>> loss = epsilon_loss(build_unet("digits_unet").model, load_diffusion_digits().holdout)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import LayerMergeError

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "make_train_scheduler",
    "epsilon_loss",
    "training_loss",
    "antithetic_timesteps",
    "eval_mode",
]

NUM_TRAIN_TIMESTEPS = 1000  # DDPM's T (Ho et al. 2020; the CIFAR-10 DDPM LayerMerge compresses)


def make_train_scheduler() -> Any:
    """DDPM's noise schedule: T = 1000, linear betas 1e-4..0.02, ε prediction (diffusers)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for a block and restore its training flag after.

    Evaluation inside a finetuning loop must not leave the model in eval mode, and evaluation of a
    model the caller keeps in eval mode must not switch it to training.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def antithetic_timesteps(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` timesteps: a random half t, then T−1−t for the other half (int64, CPU)."""
    half = torch.randint(0, NUM_TRAIN_TIMESTEPS, (count // 2 + 1,), generator=generator)
    return torch.cat([half, NUM_TRAIN_TIMESTEPS - 1 - half])[:count]


@torch.no_grad()
def epsilon_loss(
    unet: nn.Module,
    images: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 128,
    scheduler: Any | None = None,
) -> float:
    """Mean over images of Σ_pixels (ε − ε̂)², with seeded noise and antithetic timesteps.

    Noise and timesteps are drawn for all images at once from a generator seeded by ``seed``, so
    the value depends on neither ``batch_size`` nor the global RNG, and the same call twice gives
    the same float.

    Args:
        unet: called as ``unet(noisy, timesteps).sample``; evaluated in eval mode, and its
            training flag is restored after.
        images: (N, C, H, W) clean images in [-1, 1].
        seed: seeds the noise and timesteps.
        batch_size: images per forward pass.
        scheduler: the noise schedule; :func:`make_train_scheduler` when None.

    Returns:
        The loss (a sum over pixels, so a 1x16x16 image's loss is 256 times its per-pixel MSE).

    Raises:
        LayerMergeError: no images, not a 4-D tensor, or a batch size below 1.
    """
    _check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LayerMergeError(f"batch_size must be a positive integer, got {batch_size!r}")
    scheduler = scheduler if scheduler is not None else make_train_scheduler()
    device = _device_of(unet)
    generator = torch.Generator().manual_seed(seed)
    count = len(images)
    noise = torch.randn(images.shape, generator=generator)  # (N, C, H, W)
    timesteps = antithetic_timesteps(count, generator)  # (N,)
    total = 0.0
    with eval_mode(unet):
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            clean = images[start:stop].to(device=device, dtype=torch.float32)
            eps = noise[start:stop].to(device)
            t = timesteps[start:stop].to(device)
            noisy = scheduler.add_noise(clean, eps, t)
            predicted = unet(noisy, t).sample
            total += float((eps - predicted.float()).pow(2).sum(dtype=torch.float64))
    return total / count


def training_loss(
    unet: nn.Module,
    images: torch.Tensor,
    generator: torch.Generator,
    scheduler: Any,
) -> torch.Tensor:
    """DDPM's simple training loss: per-pixel MSE of the predicted noise, with grad.

    Timesteps are uniform in [0, T) and the noise Gaussian, both from ``generator`` (a CPU
    generator), so a seeded finetune is reproducible. The mean over pixels rather than the sum
    only rescales the gradient, which Adam ignores.

    Args:
        unet: called as ``unet(noisy, timesteps).sample``, in whatever mode the caller set.
        images: (B, C, H, W) clean images in [-1, 1], on the UNet's device.
        generator: a CPU ``torch.Generator``.
        scheduler: a diffusers DDPM-style scheduler with ``add_noise``.

    Returns:
        A scalar tensor to call ``backward`` on.
    """
    count = len(images)
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (count,), generator=generator)
    timesteps = timesteps.to(images.device)
    noisy = scheduler.add_noise(images, noise, timesteps)
    predicted = unet(noisy, timesteps).sample
    return F.mse_loss(predicted.float(), noise)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise LayerMergeError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if len(images) == 0:
        raise LayerMergeError("no images to evaluate the ε-prediction loss on")


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
