"""The one helper that sets torch's intra-op thread count for a block and restores it after.

Timings, table jobs and benchmarks all depend on the thread count, and a shared 2-core machine
punishes a wrong one by an order of magnitude, so every place that sets it goes through here
and leaves the caller's setting as it found it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave the setting alone).

    ``torch.set_num_threads`` is only called when the count really changes: each call rebuilds
    the OpenMP pool, which costs more than a small conv.
    """
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
