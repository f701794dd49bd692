"""Compressed checkpoints of every family: save, load back safely, export to ONNX.

A compressed checkpoint (DESIGN.md, "Contracts") is a dict of plain tensors and JSON-able values,
written with ``torch.save`` and read back only with ``torch.load(weights_only=True)``. Each model
family writes its own kind (its ``format`` field names it: a classifier's StepNetwork,
``core.families.classifier.checkpoint``; a diffusion UNet's structure and config,
``core.families.unet.export``); :func:`load` reads any of them, asks the family registry which
family wrote it, and lets that family validate and rebuild it. Nothing is ever unpickled.
:func:`export_onnx` (from :mod:`core.onnx_export`) writes a one-input network as ONNX.

Example:
    >>> save(merged, "c.pt", solution=solution, model_name="digits_resnet")  # doctest: +SKIP
    >>> network = load("c.pt")  # an ordinary nn.Module, in eval mode  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UnsafeCheckpointError
from core.families import checkpoint_formats, family_for_checkpoint
from core.families.classifier.checkpoint import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    build_checkpoint,
    build_network,
    check_network_state,
    load_checkpoint_dict,
    network_from_checkpoint,
    network_metrics,
    validate_network_spec,
)
from core.files import atomic_torch_save, jsonable, library_versions, read_untrusted_checkpoint
from core.network import StepNetwork
from core.onnx_export import ONNX_INPUT_NAME, ONNX_OUTPUT_NAME, export_onnx
from core.safe_load import safe_torch_load
from core.solution import Solution

__all__ = [
    "CHECKPOINT_FORMAT",
    "FORMAT_VERSION",
    "build_checkpoint",
    "save",
    "load",
    "load_checkpoint_dict",
    "read_untrusted_checkpoint",
    "network_from_checkpoint",
    "build_network",
    "check_network_state",
    "safe_torch_load",
    "atomic_torch_save",
    "network_metrics",
    "validate_network_spec",
    "export_onnx",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAME",
    "library_versions",
    "jsonable",
]


def save(
    network: StepNetwork,
    path: str | Path,
    *,
    solution: Solution | Mapping[str, Any] | None = None,
    model_name: str = "",
    width: float = 1.0,
    input_size: int | None = None,
    num_classes: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write the compressed checkpoint of ``network`` to ``path`` atomically.

    A crash mid-write never leaves half a checkpoint: the file is written next to ``path`` and
    renamed. Arguments are those of :func:`build_checkpoint`.

    Returns:
        The path written.
    """
    checkpoint = build_checkpoint(
        network,
        solution=solution,
        model_name=model_name,
        width=width,
        input_size=input_size,
        num_classes=num_classes,
        metrics=metrics,
    )
    return atomic_torch_save(checkpoint, path)


def load(source: str | Path | bytes) -> nn.Module:
    """Rebuild the merged network of a compressed checkpoint of any family, safely.

    Args:
        source: a file path, or the file's bytes.

    Returns:
        The network (an ``nn.Module``) in eval mode on the CPU.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe, of no registered family's format, or invalid
            for the family that claims it.
    """
    loaded, name = read_untrusted_checkpoint(source)
    if not isinstance(loaded, dict):
        raise UnsafeCheckpointError(
            f"{name} holds a {type(loaded).__name__}, not a compressed checkpoint dict"
        )
    family = family_for_checkpoint(loaded.get("format"))
    if family is None:
        plain = bool(loaded) and all(isinstance(v, torch.Tensor) for v in loaded.values())
        hint = " (a plain state_dict? pass it as --weights instead)" if plain else ""
        raise UnsafeCheckpointError(
            f"{name} is not a LayerMerge compressed checkpoint: format is "
            f"{loaded.get('format')!r}, expected one of {', '.join(map(repr, checkpoint_formats()))}"
            f"{hint}"
        )
    return family.from_checkpoint(loaded, name=name)
