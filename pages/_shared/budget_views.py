"""Layout pieces of the Budget page: the headline numbers, an impossible budget, the details.

Every number here is a prediction that says so, or a measurement of this session beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.chain import Chain
from core.solution import Solution
from pages._shared import budget_state, jobs_surgery, measured, state
from pages._shared.chain_figure import chain_figure
from pages._shared.frontier_view import FrontierView
from pages._shared.panels import Panel
from pages._shared.pins import NOT_MEASURED, merged_depth
from pages._shared.tables_in_use import TablesInUse, budget_ms

__all__ = ["headline", "infeasible", "details", "title_case"]


def title_case(text: str) -> str:
    """``text`` with a capital first letter when it is a Latin one ("ε-loss" stays)."""
    return text[:1].upper() + text[1:] if text[:1].isascii() else text


def headline(
    view: FrontierView,
    current: Solution,
    panel: Panel,
    *,
    original_depth: int,
    wanted: Sequence[Solution],
) -> None:
    """The current solution in two rows of numbers: its speed, then its quality.

    Each row puts the prediction first and this session's measurements beside it. ``wanted``
    are the solutions to test after surgery, the current one first (the pins follow).
    """
    quality = view.quality
    speed = measured.speed_of(current, panel)
    predicted_speedup = view.speedup_of(current)
    depth = merged_depth(current)
    cols = st.columns(3)
    cols[0].metric(
        "Predicted latency",
        f"{current.latency_ms:.4g} ms",
        f"{current.latency_ms / view.original_ms - 1:+.0%} vs original"
        if view.original_ms
        else None,
        delta_color="inverse",
        help="the table sum of the solution's segments (a prediction)",
    )
    cols[1].metric(
        "Predicted speed-up",
        f"{predicted_speedup:.2f}×" if math.isfinite(predicted_speedup) else "—",
        f"measured {speed['measured_speedup']:.2f}×" if speed else "not measured",
        delta_color="off",
        delta_arrow="off",
        help="of the whole network: the layers outside the table are counted as unchanged, "
        "using the measured network latency in meta.json; measure it at the bottom of the page",
    )
    cols[2].metric(
        "Depth (main-path convs)",
        str(depth),
        f"{depth - original_depth:+d} vs original",
        delta_color="off",
        delta_arrow="off",
        help="convs on the merged network's main path: one per segment that keeps a conv, plus "
        "the stem",
    )
    cols = st.columns(3)
    cols[0].metric(
        title_case(view.value_name),
        view.format_value(view.value_of(current)),
        "a prediction",
        delta_color="off",
        delta_arrow="off",
        help="the original's value plus the sum of the segments' Δ from the importance table; "
        "each Δ was measured after a brief finetune, so this predicts the finetuned network",
    )
    _surgery_metric(cols[1], view, current, wanted)
    after = measured.finetuned_of(current, panel)
    cols[2].metric(
        f"{title_case(quality)} after finetune",
        view.format_value(after) if after is not None else NOT_MEASURED,
        "measured" if after is not None else "finetune it on the Finetune page",
        delta_color="off",
        delta_arrow="off",
        help="measured by this session's finetune job of this solution (Finetune page)",
    )


def infeasible(view: FrontierView, used: TablesInUse, method: str, percent: int) -> None:
    """No solution of ``method`` fits: say each method's lowest budget, offer to go to it."""
    curve = view.curves[method]
    lowest = ", ".join(
        f"{name} {c.lowest_percent}%" if c.lowest_percent is not None else f"{name} none"
        for name, c in view.curves.items()
    )
    fastest = f"{curve.latency_ms[0]:.4g} ms" if len(curve.points) else "no solution"
    st.error(
        f"Impossible budget for {method}: {percent}% is {budget_ms(used, percent):.4g} ms, and "
        f"its fastest solution needs {fastest}. Lowest feasible budget per method: {lowest}."
    )
    if curve.lowest_percent is not None:
        st.button(
            f"Go to {curve.lowest_percent}%, the lowest feasible budget for {method}",
            key="go_lowest",
            type="primary",
            on_click=budget_state.go_to,
            args=(curve.lowest_percent,),
        )


def details(solution: Solution, chain: Chain, rows: pd.DataFrame) -> None:
    """Kept and removed activations, pruned convs, the chain picture and the merged layers.

    ``rows`` are the merged layers as the model's panel lists them.
    """
    positions = range(1, chain.last_position + 1)
    had = [p for p in positions if chain.activations[p] is not None]  # linear positions had none
    removed = [p for p in had if p not in solution.kept_activations]
    kept = [p for p in had if p in solution.kept_activations]
    linear = [p for p in positions if chain.activations[p] is None]
    pruned = [c for c in positions if c not in solution.kept_convs]
    st.markdown(
        f"**{solution.method}** · {len(solution.segments)} segments · "
        f"kept activations after positions {_listing(kept)} · "
        f"removed activations at {_listing(removed)} · pruned convs {_listing(pruned)}"
        + (f" · no activation in the original at {_listing(linear)}" if linear else "")
    )
    picture = _chain_picture(state.choice().key, state.solution_key(solution), chain, solution)
    st.plotly_chart(picture, key="solution_chain")
    st.dataframe(
        rows,
        hide_index=True,
        key="solution_table",
        column_config={
            "latency ms": st.column_config.NumberColumn(format="%.4f"),
            "importance": st.column_config.NumberColumn(format="%.4f"),
        },
    )


def _surgery_metric(
    column: DeltaGenerator,
    view: FrontierView,
    current: Solution,
    wanted: Sequence[Solution],
) -> None:
    """The measured quality after surgery, from the session's background surgery jobs.

    While a solution waits for its test, a fragment polls once a second (starting the job when
    the solution has settled); a new result redraws the whole page (the chart and the pins too).
    """
    label = f"{title_case(view.quality)} after surgery"
    jobs_surgery.tend(wanted)
    known = jobs_surgery.count()

    @st.fragment(run_every=1.0 if jobs_surgery.untested(wanted) else None)
    def poll() -> None:
        jobs_surgery.tend(wanted)
        if jobs_surgery.count() != known:
            st.rerun(scope="app")
        stored = jobs_surgery.result_of(current)
        original = jobs_surgery.original_quality()
        help_text = (
            "measured: the merged network straight from the original weights, no finetuning, "
            "tested in the background by the model family's evaluation (a classifier's test "
            "split, a UNet's holdout ε-loss)"
        )
        if stored is None:
            value, delta = "testing…", "in the background"
        elif "error" in stored:
            value, delta = "failed", stored["error"][:60]
        else:
            value = view.format_value(stored["quality"])
            delta = f"measured; the original {view.format_value(original)}"
        st.metric(label, value, delta, delta_color="off", delta_arrow="off", help=help_text)

    with column:
        poll()


@st.cache_resource(show_spinner=False, max_entries=64)
def _chain_picture(
    model_key: tuple, solution_key: str, _chain: Chain, _solution: Solution
) -> go.Figure:
    """The chain picture of a solution, drawn once per model and solution (shared: read only)."""
    return chain_figure(_chain, _solution, height=260)


def _listing(values: Sequence[int]) -> str:
    return ", ".join(map(str, values)) if values else "none"
