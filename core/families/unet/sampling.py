"""Few-step DDIM sampling from a diffusion UNet, a display grid, and sampling wall time.

The paper samples its DDPM with 100-step DDIM (η = 0) for FID (LAYERMERGE.md §5.2); the digits
demo needs far fewer steps, and a CPU preview must answer in seconds, so the default is 20.
Sampling is a pure function of (model, count, steps, seed, η): the initial noise is drawn for all
``count`` images at once from a seeded generator, and each DDIM step updates all of them together,
so the images do not depend on ``batch_size`` (which only bounds the UNet's batch).

Example:
    >>> from core.families.unet.unet import build_unet
    >>> images = ddim_sample(build_unet("digits_unet").model, 16, steps=20, seed=0)
    >>> grid = sample_grid(images, nrow=4)  # (H, W) uint8, for st.image
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import LayerMergeError
from core.families.unet.loss import eval_mode, make_train_scheduler

__all__ = [
    "DEFAULT_SAMPLING_STEPS",
    "make_sampling_scheduler",
    "ddim_sample",
    "sample_grid",
    "time_sampling",
]

DEFAULT_SAMPLING_STEPS = 20  # enough for recognisable 16x16 digits; the paper uses 100 for CIFAR


def make_sampling_scheduler() -> Any:
    """A DDIM scheduler on the training schedule (diffusers), clipping predicted x0 to [-1, 1]."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(make_train_scheduler().config)


@torch.no_grad()
def ddim_sample(
    unet: nn.Module,
    count: int,
    *,
    steps: int = DEFAULT_SAMPLING_STEPS,
    seed: int = 0,
    batch_size: int = 64,
    eta: float = 0.0,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Draw ``count`` images with DDIM.

    Args:
        unet: a UNet2DModel (or one with replaced blocks) with ``config.in_channels`` and
            ``config.sample_size``, called as ``unet(x, t).sample``; run in eval mode, and its
            training flag is restored after.
        count: images to draw.
        steps: DDIM steps (UNet evaluations per image).
        seed: seeds the initial noise (and, for η > 0, the noise of each step).
        batch_size: images per UNet call; the result does not depend on it.
        eta: DDIM's η; 0 is deterministic given the initial noise.
        progress: called as ``progress(done_steps, steps)`` after each step.

    Returns:
        (count, C, S, S) float32 images on the CPU, clamped to [-1, 1].

    Raises:
        LayerMergeError: a count, steps or batch size below 1, η < 0, or a UNet without a config.
    """
    for name, value in (("count", count), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LayerMergeError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(eta, int | float) or eta < 0:
        raise LayerMergeError(f"eta must be a non-negative number, got {eta!r}")
    channels, height, width = _sample_shape(unet)
    device = _device_of(unet)
    scheduler = make_sampling_scheduler()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((count, channels, height, width), generator=generator)  # (N, C, H, W)
    with eval_mode(unet):
        for done, timestep in enumerate(scheduler.timesteps, start=1):
            predicted = torch.empty_like(images)
            for start in range(0, count, batch_size):
                batch = images[start : start + batch_size].to(device)
                t = torch.full((len(batch),), int(timestep), dtype=torch.long, device=device)
                predicted[start : start + batch_size] = unet(batch, t).sample.float().cpu()
            step_generator = generator if eta > 0 else None
            images = scheduler.step(
                predicted, timestep, images, eta=float(eta), generator=step_generator
            ).prev_sample
            if progress is not None:
                progress(done, len(scheduler.timesteps))
    return images.clamp_(-1.0, 1.0)


def sample_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """A greyscale grid of images in [-1, 1] as a (H, W) uint8 array (0 black, 255 white).

    Multi-channel images are averaged to grey; the grid has a 1-pixel black border.
    """
    from torchvision.utils import make_grid

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise LayerMergeError("sample_grid takes a non-empty (N, C, H, W) tensor")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise LayerMergeError(f"nrow must be a positive integer, got {nrow!r}")
    grey = images.detach().float().cpu().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    unit = ((grey.clamp(-1.0, 1.0) + 1.0) / 2.0).clamp(0.0, 1.0)
    grid = make_grid(unit, nrow=nrow, padding=1, pad_value=0.0)  # (3, H', W'), channels equal
    return (grid[0] * 255.0).round().to(torch.uint8).numpy()


def time_sampling(
    unet: nn.Module, *, count: int, steps: int, repeats: int = 3, seed: int = 0
) -> float:
    """Median wall time, in seconds, of drawing ``count`` images with ``steps`` DDIM steps.

    One short warm-up call (one step) runs first, so lazy initialisation is not timed. Compare
    two UNets by timing both in the same process, one after the other.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise LayerMergeError(f"repeats must be a positive integer, got {repeats!r}")
    ddim_sample(unet, count, steps=1, seed=seed, batch_size=count)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ddim_sample(unet, count, steps=steps, seed=seed, batch_size=count)
        if torch.cuda.is_available() and _device_of(unet).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sample_shape(unet: nn.Module) -> tuple[int, int, int]:
    config = getattr(unet, "config", None)
    if config is None:
        raise LayerMergeError(
            f"{type(unet).__name__} has no diffusers config (in_channels, sample_size) to sample "
            "from"
        )
    channels = int(getattr(config, "in_channels", None) or config["in_channels"])
    size = getattr(config, "sample_size", None)
    if size is None:
        size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return channels, int(height), int(width)


def _device_of(module: nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
