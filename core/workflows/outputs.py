"""Writing a workflow's files: an output folder made once, and write errors as one clear line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from core.errors import LayerMergeError

__all__ = ["output_dir", "written"]

T = TypeVar("T")


def output_dir(path: str | Path) -> Path:
    """``path`` as a folder, created with its parents when missing.

    Raises:
        LayerMergeError: it is a file, or it cannot be created.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LayerMergeError(f"output folder {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerMergeError(f"cannot create {out}: {exc.strerror or exc}") from exc
    return out


def written(action: Callable[[], T], target: str | Path) -> T:
    """Run ``action`` (a write of ``target``); a full disk or a read-only folder is bad input.

    Raises:
        LayerMergeError: ``cannot write TARGET: why``.
    """
    try:
        return action()
    except OSError as exc:
        raise LayerMergeError(f"cannot write {target}: {exc.strerror or exc}") from exc
