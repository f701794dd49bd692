"""File plumbing every family shares: atomic writes, safe reads, JSON-able values, versions.

Checkpoints, tables and run states are all written through :func:`atomic_torch_save` (readers
never see half a file) and read through :func:`read_untrusted_checkpoint` (``weights_only=True``:
nothing is unpickled). :func:`library_versions` is the one record of what wrote a file, used by
checkpoints and tables alike (meta.json's ``versions``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.safe_load import safe_torch_load

__all__ = ["read_untrusted_checkpoint", "library_versions", "jsonable", "atomic_torch_save"]


def read_untrusted_checkpoint(source: str | Path | bytes) -> tuple[Any, str]:
    """``torch.load(weights_only=True)`` of a file or its bytes, and how to name it in errors.

    Raises:
        UnsafeCheckpointError: missing, unreadable, or it would need unsafe unpickling.
    """
    name = "the given bytes" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        return safe_torch_load(io.BytesIO(bytes(source)), name), name
    path = Path(source)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UnsafeCheckpointError(f"checkpoint {path} {what}")
    try:
        with path.open("rb") as handle:
            return safe_torch_load(handle, name), name
    except OSError as exc:
        raise UnsafeCheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a checkpoint or a measurement."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for module in ("numpy", "torchvision", "onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            versions[module] = str(__import__(module).__version__)
    versions["layermerge_studio"] = "0.1.0"
    return versions


def jsonable(value: Any, *, what: str = "value") -> Any:
    """``value`` as plain JSON types (tuples become lists), so ``weights_only`` can read it.

    Raises:
        LayerMergeError: ``value`` holds something JSON cannot express.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise LayerMergeError(f"{what} is not JSON-able: {exc}") from exc


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
