"""Sample grids of a diffusion model: drawn from a fixed seed, cached, shown with square pixels.

Every grid starts from the same noise (:data:`SAMPLE_SEED`), so the original and a compressed
network compare image by image. Grids are ``st.cache_data`` keyed by the weights digest (and the
solution); the finetune job draws its own with the same settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st
from torch import nn

from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS, ddim_sample, sample_grid
from core.solution import Solution
from pages._shared import caches, state
from pages._shared.state import ModelChoice

__all__ = [
    "SAMPLES",
    "GRID_ROWS",
    "SAMPLE_SEED",
    "grid_caption",
    "original_grid",
    "merged_grid",
    "show_grid",
]

SAMPLES = 16  # images in a preview grid
GRID_ROWS = 4
SAMPLE_SEED = 0  # every grid starts from this noise: original and compressed compare image by image
GRID_WIDTH_PX = 280  # a grid is scaled up (nearest neighbour) to about this width


@st.cache_data(show_spinner="Sampling 16 images (DDIM)…", max_entries=64)
def _grid(key: str, steps: int, _network: nn.Module) -> np.ndarray:
    return sample_grid(ddim_sample(_network, SAMPLES, steps=steps, seed=SAMPLE_SEED), GRID_ROWS)


def original_grid(which: ModelChoice | None = None) -> np.ndarray:
    """16 DDIM samples of the session's model (cached by its weights digest)."""
    bundle = caches.bundle(which)
    return _grid(f"original:{bundle.weights_digest}", DEFAULT_SAMPLING_STEPS, bundle.model)


def merged_grid(solution: Solution) -> np.ndarray:
    """The same 16 samples (same noise) from the merged, not finetuned, network of ``solution``."""
    key = f"merged:{caches.bundle().weights_digest}:{state.solution_key(solution)}"
    return _grid(key, DEFAULT_SAMPLING_STEPS, caches.merged(solution))


def show_grid(grid: np.ndarray, caption: str, *, where: Any = st) -> None:
    """Draw a greyscale grid, scaled up with square pixels so the digits stay sharp."""
    scale = max(1, round(GRID_WIDTH_PX / grid.shape[1]))
    scaled = np.kron(grid, np.ones((scale, scale), dtype=np.uint8))  # (H * scale, W * scale)
    where.image(scaled, caption=caption, width=int(scaled.shape[1]))


def grid_caption(what: str, steps: int = DEFAULT_SAMPLING_STEPS) -> str:
    return f"{what}: {SAMPLES} samples, {steps} DDIM steps, seed {SAMPLE_SEED}"
