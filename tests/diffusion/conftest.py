"""Shared settings of the diffusion tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_tiny_unets():
    """The test UNets are tiny: on a shared 2-core machine one intra-op thread is ~10x faster
    than two fighting other work for the cores (measured: 9 s against 90 s for the table fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
