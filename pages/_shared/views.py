"""Layout pieces every family shares: a solution's merged layers, table listings.

The Budget page's own pieces (frontier picks, the solution's headline and details) live in
``budget_state`` and ``budget_views``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from core.chain import Chain
from core.solution import Solution
from core.surgery import activation_plan
from core.tables import Tables

__all__ = ["solution_rows", "entries_frame", "pair_or_blanks"]
from pages._shared import state
from pages._shared.numbers import NOT_MEASURED, ms

__all__ = [
    "solution_rows",
    "entries_frame",
    "ENTRY_FORMATS",
    "cells",
    "export_header",
]


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
                "activation after": _activation_after(chain, plan, seg.end),
                "latency ms": seg.latency_ms,
                "importance": seg.importance,
            }
        )
    return pd.DataFrame(rows)


ENTRY_FORMATS = {  # the Tables page's listing: sensible digits per column
    "latency ms": "%.3f",
    "spread ms": "%.3f",
    "importance": "%.4f",
    "Δacc (pp)": "%.2f",
    "Δloss": "%.4f",
}


def entries_frame(tables: Tables) -> pd.DataFrame:
    """Every table entry as a sortable frame (the Tables page's full listing).

    A column the tables do not record at all (Δacc of a UNet's ε-loss tables) is left out, so
    that no cell reads "None".
    """
    frame = pd.DataFrame(
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
    return frame.dropna(axis="columns", how="all").fillna("not recorded")


def pair_or_blanks(stored: Mapping[str, Any] | None, first: str, second: str) -> tuple[Any, Any]:
    """Two fields of a measurement or result, or two blanks when there is none (table cells)."""
    return (stored[first], stored[second]) if stored else (None, None)


def cells(
    stored: Mapping[str, Any] | None, first: str, second: str, write: Callable[[Any], str]
) -> tuple[str, str]:
    """Two fields of a measurement or result as table text, or "not measured" twice."""
    if not stored:
        return NOT_MEASURED, NOT_MEASURED
    return write(stored.get(first)), write(stored.get(second))


def export_header(solution: Solution, form: str) -> None:
    """What the Export page's files hold, named in full: model, solution, and how it was made."""
    st.subheader(state.choice().label)
    st.markdown(
        f"**{solution.method}** at {ms(solution.latency_ms)} predicted "
        f"({len(solution.segments)} segments) · {form}"
    )


def _activation_after(chain: Chain, plan: Mapping[int, str], position: int) -> str:
    """What runs after ``position``: kept, added (a linear position ending a merge), or nothing."""
    original = chain.activations[position]
    if position in plan:
        return plan[position] if original is not None else f"{plan[position]} (added)"
    return "— (removed)" if original is not None else "— (none in the original)"


def _listing(values: Sequence[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"
