"""Layout pieces every family shares: a solution's merged layers, table listings.

The Budget page's own pieces (frontier picks, the solution's headline and details) live in
``budget_state`` and ``budget_views``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from core.chain import Chain
from core.solution import Solution
from core.surgery import activation_plan
from core.tables import Tables

__all__ = ["solution_rows", "entries_frame", "pair_or_blanks"]


def solution_rows(solution: Solution, chain: Chain) -> pd.DataFrame:
    """The merged network's layers: one row per segment of the solution."""
    plan = activation_plan(chain, solution)
    rows = []
    for seg in solution.segments:
        inside = list(range(seg.start + 1, seg.end + 1))
        pruned = [c for c in inside if c not in seg.kept_convs]
        rows.append(
            {
                "segment": f"({seg.start}, {seg.end}]",
                "original convs": ", ".join(map(str, inside)),
                "pruned": ", ".join(map(str, pruned)) or "—",
                "kernel": "removed" if seg.kernel == 0 else f"{seg.kernel}×{seg.kernel}",
                "depthwise": seg.depthwise,
                "stride": seg.stride,
                "channels": f"{chain.convs[seg.start + 1].in_channels}→{chain.convs[seg.end].out_channels}",
                "activation after": plan.get(seg.end, "— (removed)"),
                "latency ms": seg.latency_ms,
                "importance": seg.importance,
            }
        )
    return pd.DataFrame(rows)


def entries_frame(tables: Tables) -> pd.DataFrame:
    """Every table entry as a sortable frame (the Tables page's full listing)."""
    return pd.DataFrame(
        [
            {
                "start": e.start,
                "end": e.end,
                "kernel": e.kernel,
                "removal": e.kernel == 0,
                "depthwise": e.depthwise,
                "stride": e.stride,
                "kept convs": str(list(e.kept_convs)),
                "latency ms": e.latency_ms,
                "spread ms": e.latency_spread_ms,
                "importance": e.importance,
                "Δacc (pp)": e.delta_acc,
                "Δloss": e.delta_loss,
            }
            for e in tables.entries
        ]
    )


def pair_or_blanks(stored: Mapping[str, Any] | None, first: str, second: str) -> tuple[Any, Any]:
    """Two fields of a measurement or result, or two blanks when there is none (table cells)."""
    return (stored[first], stored[second]) if stored else (None, None)
