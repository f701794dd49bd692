"""The LayerMerge flow for a UNet in one call: tables and a budget in, a merged UNet out.

The counterpart of ``core.flow.compress`` (which it shares the DP with): trace the UNet, solve the
DP on its tables, build the training form, merge it. Never touches the UNet it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.dp import solve
from core.errors import TableMismatchError
from core.families.unet.chain import UNetChain, trace_unet
from core.families.unet.merge import merge_unet
from core.families.unet.surgery import build_unet_training_network
from core.solution import Solution
from core.tables import Tables

__all__ = ["UNetCompression", "compress_unet", "apply_unet_solution"]


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


def compress_unet(
    unet: nn.Module,
    tables: Tables,
    *,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    method: str = "layermerge",
) -> UNetCompression:
    """Solve the DP on ``tables`` for the budget and apply the answer to ``unet``.

    Raises:
        TableMismatchError: the tables were made for another UNet structure.
        InfeasibleBudgetError: no solution of ``method`` fits the budget.
    """
    uchain = trace_unet(unet)
    digest = tables.meta.get("chain_digest")
    if digest and digest != uchain.digest():
        raise TableMismatchError(
            f"these tables were measured for another UNet (chain {digest}, this one "
            f"{uchain.digest()})"
        )
    solution = solve(tables, budget_ms=budget_ms, budget_fraction=budget_fraction, method=method)
    return apply_unet_solution(unet, uchain, solution)


def apply_unet_solution(unet: nn.Module, uchain: UNetChain, solution: Solution) -> UNetCompression:
    """The training form and the merged UNet of ``solution`` (validated against ``uchain``)."""
    training, structure = build_unet_training_network(unet, uchain, solution)
    return UNetCompression(solution, uchain, structure, training, merge_unet(training))
