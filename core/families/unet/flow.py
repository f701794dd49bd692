"""A UNet's training form and merged form of one solution, with the structure that rebuilds them.

The flow itself is written once for every family (``core.flow.compress`` and
``core.flow.apply_solution``); this module only keeps the UNet-shaped result that the pages'
finetune job, ``bench/bench_unet.py`` and ``tests/diffusion/test_unet_tables.py`` still use,
which adds the JSON structure a UNet checkpoint stores. New code calls
``core.flow.apply_solution``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.families.unet.chain import UNetChain
from core.families.unet.merge import merge_unet
from core.families.unet.surgery import build_unet_training_network
from core.solution import Solution

__all__ = ["UNetCompression", "apply_unet_solution"]


@dataclass(frozen=True)
class UNetCompression:
    """A solution with the two UNets it defines and the structure that rebuilds them."""

    solution: Solution
    uchain: UNetChain
    structure: dict[str, Any]  # training form; the merged form is the same with "merged": True
    training_network: nn.Module
    merged_network: nn.Module

    @property
    def merged_structure(self) -> dict[str, Any]:
        return {**self.structure, "merged": True}


def apply_unet_solution(unet: nn.Module, uchain: UNetChain, solution: Solution) -> UNetCompression:
    """The training form and the merged UNet of ``solution`` (validated against ``uchain``)."""
    training, structure = build_unet_training_network(unet, uchain, solution)
    return UNetCompression(solution, uchain, structure, training, merge_unet(training))
