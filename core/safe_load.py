"""Reading untrusted torch files: ``torch.load(weights_only=True)`` and one clear error.

Weights files, finetune checkpoints and compressed checkpoints all come from users, so every
reader goes through :func:`safe_torch_load`: nothing is ever unpickled beyond tensors and plain
values, and every failure (a pickle payload, a truncated zip, a text file) becomes one
:class:`~core.errors.UnsafeCheckpointError` line instead of a traceback.
"""

from __future__ import annotations

import pickle
import re
import warnings
from typing import Any, BinaryIO

import torch

from core.errors import UnsafeCheckpointError

__all__ = ["safe_torch_load"]


def safe_torch_load(handle: BinaryIO, name: str, *, advice: str = "") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear error.

    Args:
        handle: an open binary file or buffer.
        name: how to name the source in messages (e.g. "weights model.pt").
        advice: appended to the refusal of an unsafe file, e.g. how to save it safely.

    Raises:
        UnsafeCheckpointError: the data would need unsafe unpickling, or is not a torch file.
    """
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
