"""The files the Export page offers: the compressed checkpoint of any family, and their names.

The checkpoint is written by the model's family (``ModelFamily.checkpoint``: plain tensors and
JSON-able values that ``torch.load(weights_only=True)`` reads and ``core.export.load`` rebuilds),
so the Export page has one download for every family.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.solution import Solution
from pages._shared import caches
from pages._shared.state import ModelChoice

__all__ = ["checkpoint_download", "file_stem"]


def checkpoint_download(
    which: ModelChoice, network: nn.Module, solution: Solution, metrics: dict[str, Any]
) -> Callable[[], bytes]:
    """A zero-argument function writing the checkpoint of ``network`` as bytes.

    What it needs is read from the session now: the download button runs it on click, in a
    thread that has no session.
    """
    family, bundle, traced = caches.family(which), caches.bundle(which), caches.traced(which)

    def write() -> bytes:
        buffer = io.BytesIO()
        torch.save(family.checkpoint(network, bundle, traced, solution, metrics=metrics), buffer)
        return buffer.getvalue()

    return write


def file_stem(which: ModelChoice, solution: Solution) -> str:
    """A file name for the compressed model: model, method and predicted latency."""
    name = Path(which.name).name.replace(":", "-")  # a diffusers:PATH model names its folder
    return f"{name}-{solution.method}-{solution.latency_ms:.3g}ms"
