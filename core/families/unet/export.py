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
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.families.unet.merge import merged_shell
from core.families.unet.surgery import apply_structure
from core.families.unet.unet import unet_from_config
from core.files import (
    atomic_torch_save,
    check_tensors,
    jsonable,
    library_versions,
    read_untrusted_checkpoint,
)
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
    """The UNet a loaded (untrusted) checkpoint dict describes, checked step by step.

    The config's sizes are bounded first, then the UNet is built on the meta device (nothing
    allocated) and its tensors' names, shapes and dtypes compared with the state_dict's; only a
    checkpoint whose tensors fit is built for real, so a config asking for a huge network costs
    nothing (the memory of the real build is that of the tensors already read).

    Raises:
        UnsafeCheckpointError: of another format or version, a config or structure that is
            invalid or too large, tensors that do not fit, or tensors holding NaN or infinity.
    """
    if not isinstance(loaded, dict) or loaded.get("format") != UNET_CHECKPOINT_FORMAT:
        found = loaded.get("format") if isinstance(loaded, dict) else type(loaded).__name__
        raise UnsafeCheckpointError(
            f"{name} is not a compressed UNet checkpoint (format {found!r}, expected "
            f"{UNET_CHECKPOINT_FORMAT!r})"
        )
    version = loaded.get("format_version")
    if version != UNET_FORMAT_VERSION or isinstance(version, bool):
        raise UnsafeCheckpointError(
            f"{name}: format_version {version!r} is not supported "
            f"(this version reads {UNET_FORMAT_VERSION})"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(loaded.get(key), kind):
            raise UnsafeCheckpointError(f"{name}: {key!r} is missing or not a {kind.__name__}")
    state = loaded["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UnsafeCheckpointError(f"{name}: the state_dict holds something other than tensors")
    _check_config_size(loaded["config"], name)
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = _build(loaded, name)
    check_tensors(skeleton.state_dict(), state, name, what="structure")
    network = _build(loaded, name)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        message = " ".join(str(exc).split())[:300]
        raise UnsafeCheckpointError(f"{name}: weights do not fit the structure: {message}") from exc
    return network.eval()


# Bounds on what an untrusted config may ask for: generous for real UNets (DDPM's CIFAR-10 and
# LSUN models use 4-6 levels, 2 blocks each, 128-512 channels), but a file cannot make even the
# meta-device build run for hours.
_MAX_CONFIG_INT = 1 << 16
_MAX_CONFIG_LIST = 16
_MAX_LAYERS_PER_BLOCK = 64
_MAX_SAMPLE_SIZE = 8192


def _check_config_size(config: dict[str, Any], name: str) -> None:
    """Every number in the config bounded, every list short, before anything is built."""

    def walk(value: Any, where: str, depth: int = 0) -> None:
        if depth > 4:
            raise UnsafeCheckpointError(f"{name}: the UNet config is nested too deeply at {where}")
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int):
            if not -_MAX_CONFIG_INT <= value <= _MAX_CONFIG_INT:
                raise UnsafeCheckpointError(
                    f"{name}: the UNet config's {where} is {value}, beyond {_MAX_CONFIG_INT}"
                )
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                raise UnsafeCheckpointError(f"{name}: the UNet config's {where} is {value}")
            return
        if isinstance(value, list | tuple):
            if len(value) > _MAX_CONFIG_LIST:
                raise UnsafeCheckpointError(
                    f"{name}: the UNet config's {where} lists {len(value)} items, more than "
                    f"{_MAX_CONFIG_LIST}"
                )
            for item in value:
                walk(item, where, depth + 1)
            return
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}", depth + 1)
            return
        raise UnsafeCheckpointError(f"{name}: the UNet config's {where} is a {type(value)}")

    for key, value in config.items():
        walk(value, str(key))
    for key, limit in (
        ("layers_per_block", _MAX_LAYERS_PER_BLOCK),
        ("sample_size", _MAX_SAMPLE_SIZE),
    ):
        values = config.get(key)
        values = values if isinstance(values, list | tuple) else [values]
        if any(isinstance(v, int) and not isinstance(v, bool) and v > limit for v in values):
            raise UnsafeCheckpointError(
                f"{name}: the UNet config's {key} is {config.get(key)}, beyond {limit}"
            )


def _build(loaded: dict[str, Any], name: str) -> nn.Module:
    try:
        return apply_structure(
            unet_from_config(loaded["config"]), loaded["structure"], merged_block=merged_shell
        )
    except (LayerMergeError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise UnsafeCheckpointError(
            f"{name}: its config or structure is invalid ({message})"
        ) from exc
