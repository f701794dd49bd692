"""Budget: a latency budget in, the DP's answer out, beside the three methods' frontiers."""

from __future__ import annotations

import math

import streamlit as st

from core.dp import list_methods
from core.errors import InfeasibleBudgetError
from pages._shared import caches, figures, frame, panels, state, views
from pages._shared.tables_in_use import budget_ms, frontiers, tables_in_use

frame.frame_guard()

st.title("Latency budget")
used = frame.require(
    tables_in_use(),
    "No latency and importance tables for this model yet: compute them on the Tables page, or "
    "choose a model with shipped tables (digits_resnet, digits_mobilenet, digits_unet) on the "
    "Model page.",
)
panel = panels.current()
fronts = frontiers(used)
original_ms = used.original_ms

left, right = st.columns([3, 1])
percent = left.slider(
    "Latency budget, % of the original network's table latency",
    min_value=5,
    max_value=100,
    value=state.DEFAULT_BUDGET_PERCENT,
    step=1,
    format="%d%%",
    key="budget",
    on_change=views.forget_pick,
    persist_state="session",
)
method = right.radio(
    "Method", list_methods(), key="method", on_change=views.forget_pick, persist_state="session"
)
budget = budget_ms(used, percent)
left.caption(f"Budget {budget:.4g} ms of the original {original_ms:.4g} ms (table sums).")

try:
    current = views.chosen_solution(fronts, method, budget)
except InfeasibleBudgetError as exc:
    state.set_solution(None)
    fastest = min(points[0].latency_ms for points in fronts.values() if points)
    needed = math.ceil(fronts[method][0].latency_ms / original_ms * 100 - 1e-6)
    st.error(
        f"Impossible budget: {exc}. Raise the budget to at least {needed}% for {method} "
        f"(the fastest solution of any method needs {fastest:.4g} ms)."
    )
    current = None
else:
    state.set_solution(current)
    views.solution_summary(current, caches.chain(), used, rows=panel.solution_rows(current))

st.subheader("Frontiers")
st.caption(
    "Every Pareto-optimal solution of each method on these tables (exact DP). Click a point to "
    "select it; the star is the solution shown above. Importance is a sum over a solution's "
    "segments, so it compares solutions of one method; the methods count different numbers "
    "of segments (layer always keeps one per conv), and only finetuned quality compares them."
)
st.plotly_chart(
    figures.frontier_figure(fronts, original_ms=original_ms, budget_ms=budget, current=current),
    key="frontier_chart",
    on_select=views.take_pick,
    selection_mode="points",
)
if current is not None:
    panel.quality_section(current, used)
