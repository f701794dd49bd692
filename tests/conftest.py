"""Fixtures every test folder may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test: on a shared 2-core machine two OpenMP threads under load
    run far slower than one (up to ~100x), and the finetune and export tests train real models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
