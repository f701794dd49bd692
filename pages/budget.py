"""Budget: how much quality for how much speed, for every method, with the DP's answer at a budget."""

from __future__ import annotations

import streamlit as st

from core.errors import LayerMergeError
from pages._shared import budget_state, budget_views, caches, figures, frame, panels, pins, state
from pages._shared.frontier_view import frontier_view
from pages._shared.measured import calibration_points, session_points
from pages._shared.tables_in_use import budget_ms, tables_in_use

frame.frame_guard()

st.title("Latency budget")
used = frame.require(
    tables_in_use(),
    "No latency and importance tables for this model yet: compute them on the Tables page, or "
    "choose a model with shipped tables (digits_resnet, digits_mobilenet, digits_unet) on the "
    "Model page.",
)
panel = panels.current()
view = frontier_view(used)
budget_state.settle(used, view)

left, right = st.columns([3, 1])
percent = left.slider(
    "Latency budget, % of the original network's table latency",
    min_value=view.slider_min,
    max_value=100,
    step=1,
    format="%d%%",
    key=budget_state.BUDGET,
    on_change=budget_state.forget_pick,
    persist_state="session",
)
method = right.radio(
    "Method",
    view.methods,
    key=budget_state.METHOD,
    on_change=budget_state.forget_pick,
    persist_state="session",
    help="layermerge: merge and prune (this project's search contains both baselines); "
    "depth: remove activations only (Kim23); layer: prune convs only",
)
budget_state.write_url(method, percent)
budget = budget_ms(used, percent)
left.caption(
    f"Budget {budget:.4g} ms of the original {used.original_ms:.4g} ms (table sums); the "
    f"slider starts at {view.slider_min}%, the fastest any method reaches."
)
note = budget_state.pop_note()
if note:
    st.info(note)

point = budget_state.chosen_point(used, view, method, budget)
current = None
if point is None:
    state.set_solution(None)
    budget_views.infeasible(view, used, method, percent)
else:
    current = view.curves[point[0]].points[point[1]].solution(budget)
    state.set_solution(current)
    wanted = [current, *(p.solution for p in pins.pins_of(used))]
    budget_views.headline(
        view, current, panel, original_depth=len(caches.chain().convs), wanted=wanted
    )

st.subheader(f"Speed-up against {view.quality}, every method")
shown = []
if view.value_kind == "predicted":  # measurements share the axis only with predicted values
    try:
        shown = calibration_points(view, used)
    except LayerMergeError as exc:
        st.error(f"The shipped calibration results are not shown: {exc}")
    shown += session_points(view, used, panel)
chart = figures.frontier_figure(
    view,
    method=method,
    current=(view.speedup_of(current), view.value_of(current)) if current else None,
    budget=(view.speedup(budget), f"budget {percent}%"),
    measured=shown,
)
st.plotly_chart(
    chart,
    key=budget_state.CHART,
    on_select=budget_state.take_pick,
    selection_mode="points",
)
st.caption(
    f"Each line is a method's exact frontier (DP) on these tables: x is the whole network's "
    f"predicted speed-up, y its predicted {view.quality} (original + ΣΔ over its segments), "
    "one scale for every method. Each Δ was measured after a brief finetune, so the lines "
    "predict a finetuned network. Click a point to select it; the star is the solution above. "
    "Markers are measurements: ✕ after surgery alone (no finetune), ▲ after finetuning (filled: "
    "this session; open: the shipped calibration run), at the measured speed-up where one was "
    "timed."
)
if current is not None:
    st.subheader("Pinned solutions")
    pins.section(view, used, panel, current, point)
    st.subheader("The solution")
    budget_views.details(current, caches.chain(), panel.solution_rows(current))
    panel.quality_section(current, used)
