"""The compressed checkpoint of a UNet: config + structure + state_dict, read back safely.

A compressed UNet is its diffusers config (JSON), the structure that says which ResnetBlock2Ds are
merged and which upsample convs are identity (``core.families.unet.surgery``), and a state_dict of
plain tensors, so ``torch.load(weights_only=True)`` reads it and :func:`load_unet_checkpoint`
(or ``core.export.load``, which dispatches here on the format) rebuilds the merged UNet: the
original architecture from the config, the structure applied, the weights loaded strictly.
Nothing in the file is ever executed or unpickled beyond tensors and plain values.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.families.unet.merge import merged_shell
from core.families.unet.surgery import apply_structure
from core.families.unet.unet import unet_from_config
from core.files import atomic_torch_save, jsonable, library_versions, read_untrusted_checkpoint
from core.solution import Solution

__all__ = [
    "UNET_CHECKPOINT_FORMAT",
    "build_unet_checkpoint",
    "save_unet",
    "load_unet_checkpoint",
    "unet_from_checkpoint",
    "count_convs",
]

UNET_CHECKPOINT_FORMAT = "layermerge-unet-compressed"
UNET_FORMAT_VERSION = 1
_REQUIRED = {"config": dict, "structure": dict, "state_dict": dict, "model": dict, "metrics": dict}


def count_convs(network: nn.Module) -> int:
    """Conv2d modules in ``network`` (what merging reduces)."""
    return sum(isinstance(m, nn.Conv2d) for m in network.modules())


def build_unet_checkpoint(
    network: nn.Module,
    *,
    config: Mapping[str, Any],
    structure: Mapping[str, Any],
    solution: Solution | Mapping[str, Any] | None = None,
    model_name: str = "",
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of a merged (``structure["merged"]``) or training-form UNet."""
    solution_dict = solution.to_dict() if isinstance(solution, Solution) else solution
    params = sum(p.numel() for p in network.parameters())
    return {
        "format": UNET_CHECKPOINT_FORMAT,
        "format_version": UNET_FORMAT_VERSION,
        "config": jsonable(dict(config), what="the UNet config"),
        "structure": jsonable(dict(structure), what="the UNet structure"),
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
        "solution": None if solution_dict is None else jsonable(solution_dict, what="solution"),
        "model": {"name": model_name, "kind": "diffusion"},
        "metrics": {
            **jsonable(dict(metrics or {}), what="metrics"),
            "params": params,
            "convs": count_convs(network),
        },
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def save_unet(network: nn.Module, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`build_unet_checkpoint` atomically to ``path``."""
    return atomic_torch_save(build_unet_checkpoint(network, **kwargs), path)


def load_unet_checkpoint(source: str | Path | bytes) -> nn.Module:
    """Rebuild the UNet of a compressed checkpoint file (or its bytes), in eval mode, on the CPU.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe, of another format, or tensors that do not fit.
    """
    loaded, name = read_untrusted_checkpoint(source)
    return unet_from_checkpoint(loaded, name=name)


def unet_from_checkpoint(loaded: Any, *, name: str = "checkpoint") -> nn.Module:
    """The UNet a loaded (untrusted) checkpoint dict describes, checked step by step."""
    if not isinstance(loaded, dict) or loaded.get("format") != UNET_CHECKPOINT_FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise UnsafeCheckpointError(
            f"{name} is not a compressed UNet checkpoint (format {found!r}, expected "
            f"{UNET_CHECKPOINT_FORMAT!r})"
        )
    if loaded.get("format_version") != UNET_FORMAT_VERSION:
        raise UnsafeCheckpointError(
            f"{name}: format_version {loaded.get('format_version')!r} is not supported "
            f"(this version reads {UNET_FORMAT_VERSION})"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(loaded.get(key), kind):
            raise UnsafeCheckpointError(f"{name}: {key!r} is missing or not a {kind.__name__}")
    state = loaded["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UnsafeCheckpointError(f"{name}: the state_dict holds something other than tensors")
    try:
        network = apply_structure(
            unet_from_config(loaded["config"]), loaded["structure"], merged_block=merged_shell
        )
    except (LayerMergeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnsafeCheckpointError(f"{name}: its config or structure is invalid ({exc})") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        message = " ".join(str(exc).split())[:300]
        raise UnsafeCheckpointError(f"{name}: weights do not fit the structure: {message}") from exc
    return network.eval()
