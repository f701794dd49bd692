"""Layout pieces every family shares: frontier picks, the solution summary, table listings."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import streamlit as st

from core.benchmark import predicted_speedup
from core.chain import Chain
from core.dp import FrontierPoint, pick
from core.solution import Solution
from core.surgery import activation_plan
from core.tables import Tables
from pages._shared import state
from pages._shared.chain_figure import chain_figure
from pages._shared.numbers import NOT_MEASURED, ms
from pages._shared.tables_in_use import TablesInUse, frontiers, tables_in_use

__all__ = [
    "forget_pick",
    "take_pick",
    "point_from_selection",
    "chosen_solution",
    "solution_rows",
    "solution_summary",
    "entries_frame",
    "ENTRY_FORMATS",
    "cells",
    "export_header",
]


def forget_pick() -> None:
    """Slider or method moved: the budget decides again, not a clicked frontier point."""
    st.session_state.pop("picked", None)


def point_from_selection(
    points: Sequence[Mapping[str, Any]], fronts: Mapping[str, Sequence[FrontierPoint]]
) -> tuple[str, int] | None:
    """The (method, index) of the first clicked frontier point, or None (e.g. the star)."""
    for point in points:
        data = point.get("customdata")
        if not isinstance(data, list | tuple) or len(data) != 2:
            continue
        method, index = data
        try:
            index = int(index)
        except (TypeError, ValueError):
            continue
        if method in fronts and 0 <= index < len(fronts[method]):
            return str(method), index
    return None


def take_pick() -> None:
    """on_select of the frontier chart: select the clicked point and move the slider to it."""
    event = st.session_state.get("frontier_chart")
    used = tables_in_use()
    if not event or used is None:
        return
    fronts = frontiers(used)
    picked = point_from_selection(event["selection"]["points"], fronts)
    if picked is None:
        return
    method, index = picked
    st.session_state.picked = (used.tables.digest, method, index)
    st.session_state.method = method
    share = fronts[method][index].latency_ms / used.original_ms * 100
    st.session_state.budget = int(min(100, max(5, math.ceil(share - 1e-9))))


def chosen_solution(
    fronts: Mapping[str, Sequence[FrontierPoint]], method: str, budget_ms: float
) -> Solution:
    """The clicked frontier point if there is one, else the best solution within the budget.

    Raises:
        InfeasibleBudgetError: no solution of ``method`` fits ``budget_ms``.
    """
    picked = st.session_state.get("picked")
    used = tables_in_use()
    if picked and used is not None and picked[0] == used.tables.digest:
        _, picked_method, index = picked
        if picked_method in fronts and index < len(fronts[picked_method]):
            return fronts[picked_method][index].solution()
    return pick(fronts[method], budget_ms)


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


def solution_summary(
    solution: Solution,
    chain: Chain,
    used: TablesInUse,
    *,
    rows: pd.DataFrame,
) -> None:
    """Metrics, kept/removed activations, pruned convs, the merged layers and the chain picture.

    ``rows`` are the merged layers as the model's panel lists them (:func:`solution_rows`, or a
    UNet's, which names its activations its own way).
    """
    positions = range(1, chain.last_position + 1)
    acting = [p for p in positions if chain.activations[p] is not None]  # linear ones have none
    removed_acts = [p for p in acting if p not in solution.kept_activations]
    kept_acts = [p for p in acting if p in solution.kept_activations]
    linear = [p for p in positions if chain.activations[p] is None]
    pruned = [c for c in range(1, chain.last_position + 1) if c not in solution.kept_convs]
    merged_depth = sum(1 for s in solution.segments if s.kernel) + 1  # + the stem conv 0
    original_ms = used.original_ms
    network_ms = used.tables.meta.get("network_latency_ms")
    speedup = predicted_speedup(
        solution.latency_ms,
        original_ms,
        network_latency_ms=float(network_ms) if network_ms else None,
    )
    cols = st.columns(4)
    cols[0].metric(
        "Predicted latency",
        f"{solution.latency_ms:.4g} ms",
        f"{solution.latency_ms / original_ms - 1:+.0%} vs original" if original_ms else None,
        delta_color="inverse",
    )
    cols[1].metric(
        "Predicted speed-up",
        f"{speedup:.2f}×" if math.isfinite(speedup) else "—",
        help="of the whole network: the layers outside the table (pooling, classifier) are "
        "counted as unchanged, using the measured network latency in meta.json",
    )
    cols[2].metric("Importance", f"{solution.importance:.4g}")
    cols[3].metric(
        "Depth (main-path convs)",
        f"{merged_depth}",
        f"{merged_depth - len(chain.convs)}",
        delta_color="off",
    )
    st.markdown(
        f"**{solution.method}** · {len(solution.segments)} segments · "
        f"kept activations after positions {_listing(kept_acts)} · "
        f"removed activations at {_listing(removed_acts)} · pruned convs {_listing(pruned)}"
        + (f" · no activation in the original at {_listing(linear)}" if linear else "")
    )
    st.plotly_chart(chain_figure(chain, solution, height=260), key="solution_chain")
    st.dataframe(
        rows,
        hide_index=True,
        key="solution_table",
        column_config={
            "latency ms": st.column_config.NumberColumn(format="%.4f"),
            "importance": st.column_config.NumberColumn(format="%.4f"),
        },
    )


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
