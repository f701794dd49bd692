"""Reading untrusted torch files: ``torch.load(weights_only=True)`` and one clear error.

Weights files, finetune checkpoints and compressed checkpoints all come from users, so every
reader goes through :func:`safe_torch_load`: nothing is ever unpickled beyond tensors and plain
values, and every failure (a pickle payload, a truncated zip, a text file) becomes one
:class:`~core.errors.UnsafeCheckpointError` line instead of a traceback.

``torch.save`` writes a zip archive with a CRC-32 checksum per record, but ``torch.load`` never
checks them: a file with flipped bytes loads silently, with damaged tensors. So before loading,
every record of the archive is read and checked against its checksum (:func:`check_archive`); a
damaged file is refused, naming the record that fails.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
import zipfile
import zlib
from typing import Any, BinaryIO

import torch

from core.errors import UnsafeCheckpointError

__all__ = ["safe_torch_load", "check_archive"]


def safe_torch_load(handle: BinaryIO, name: str, *, advice: str = "") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear error.

    Args:
        handle: an open binary file or buffer.
        name: how to name the source in messages (e.g. "weights model.pt").
        advice: appended to the refusal of an unsafe file, e.g. how to save it safely.

    Raises:
        UnsafeCheckpointError: the data would need unsafe unpickling, is not a torch file, or is
            damaged (a record fails its checksum).
    """
    check_archive(handle, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": reported below
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(exc))
        detail = found.group(1) if found else " ".join(str(exc).split())[:200]
        raise UnsafeCheckpointError(
            f"refused to load {name}: it is not a plain tensor checkpoint and would need unsafe "
            f"unpickling ({detail}){'; ' + advice if advice else ''}"
        ) from exc
    except Exception as exc:  # torch.load raises RuntimeError, EOFError, KeyError, ... on junk
        message = " ".join(str(exc).split()).split(". This is an internal")[0] or "empty file"
        raise UnsafeCheckpointError(
            f"{name} is not a readable torch checkpoint ({type(exc).__name__}: {message[:200]})"
        ) from exc


def check_archive(handle: BinaryIO, name: str) -> None:
    """Verify the CRC-32 of every record of a zip-format torch file; leave ``handle`` where it was.

    A legacy (non-zip) torch file has no checksums and is left to ``torch.load``; so is a stream
    that cannot seek.

    Raises:
        UnsafeCheckpointError: the archive is damaged: a record fails its checksum, or the
            archive's directory cannot be read.
    """
    try:
        start = handle.tell()
        handle.seek(start)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    try:
        if not zipfile.is_zipfile(handle):
            return
        handle.seek(start)
        with zipfile.ZipFile(handle) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UnsafeCheckpointError(
            f"{name} is damaged: its zip archive cannot be read ({detail}); copy or download it "
            "again"
        ) from exc
    finally:
        handle.seek(start)
    if damaged is not None:
        raise UnsafeCheckpointError(
            f"{name} is damaged: its record {damaged!r} fails its CRC checksum (corrupted on "
            "disk or in transfer); copy or download it again"
        )
