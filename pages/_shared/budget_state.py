"""The Budget page's state: its slider and method, what the URL keeps of them, clicked points.

The budget is a whole percentage of the original table latency. It belongs to the tables it was
chosen on: on other tables (another model, or new tables) it starts again at a sensible value
(:meth:`FrontierView.default_percent`); a new session's first visit takes it, and the method,
from the URL it started with. A click on the frontier chart selects that point of the trace under
the cursor; when the point is also the current method's (LayerMerge's extended search contains
the baselines' solutions, so their points often coincide) the method stays, and only a click on
another method's own point switches the method, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from pages._shared import url_state
from pages._shared.frontier_view import (
    PICK_SLACK,
    TOP_METHOD,
    FrontierView,
    frontier_view,
    lowest_percent,
)
from pages._shared.tables_in_use import TablesInUse, tables_in_use

__all__ = [
    "BUDGET",
    "METHOD",
    "BUDGET_TABLES",
    "CHART",
    "Click",
    "settle",
    "write_url",
    "forget_pick",
    "take_pick",
    "clicked_point",
    "chosen_point",
    "go_to",
    "show_point",
    "pop_note",
]

BUDGET, METHOD, CHART = "budget", "method", "frontier_chart"  # widget keys (and URL names)
PICKED = "picked"  # (tables key, method, index) of the clicked frontier point
BUDGET_TABLES = "budget_tables"  # the tables key the budget was chosen on
NOTE = "budget_note"  # a message for the next run (a click switched the method)


@dataclass(frozen=True)
class Click:
    """A clicked frontier point: its method and index, and whether it changes the method."""

    method: str
    index: int
    switched: bool


def settle(used: TablesInUse, view: FrontierView) -> None:
    """Before the widgets: a budget and method that fit these tables (see the module docstring)."""
    values = st.session_state
    first_visit = BUDGET_TABLES not in values
    if values.get(BUDGET_TABLES) != used.key:
        started = url_state.at_start(METHOD) if first_visit else None
        if started in view.curves:
            values[METHOD] = started
        if values.get(METHOD) not in view.curves:
            values[METHOD] = TOP_METHOD if TOP_METHOD in view.curves else view.methods[0]
        percent = _whole(url_state.at_start(BUDGET)) if first_visit else None
        values[BUDGET] = view.default_percent(values[METHOD]) if percent is None else percent
        values[BUDGET_TABLES] = used.key
        values.pop(PICKED, None)
    elif values.get(METHOD) not in view.curves:
        values[METHOD] = view.methods[0]
    current = _whole(values.get(BUDGET))
    wanted = view.default_percent(values[METHOD]) if current is None else current
    wanted = min(100, max(view.slider_min, wanted))
    if values.get(BUDGET) != wanted:
        values[BUDGET] = wanted


def write_url(method: str, percent: int) -> None:
    """Keep the method and budget in the URL (a reload comes back to them)."""
    for name, value in ((METHOD, method), (BUDGET, str(percent))):
        if st.query_params.get(name) != value:
            st.query_params[name] = value


def forget_pick() -> None:
    """Slider or method moved: the budget decides again, not a clicked frontier point."""
    st.session_state.pop(PICKED, None)
    st.session_state.pop(NOTE, None)


def pop_note() -> str | None:
    """The message a click left for this run, if any (shown once)."""
    return st.session_state.pop(NOTE, None)


def clicked_point(
    points: Sequence[Mapping[str, Any]], view: FrontierView, method: str | None
) -> Click | None:
    """The frontier point a selection event names, preferring the current method's.

    Points without ``customdata = [method, index]`` (the star, measured markers) are ignored. A
    point of another method that coincides with one of ``method``'s selects that one instead.
    """
    clicked: list[tuple[str, int]] = []
    for point in points:
        data = point.get("customdata")
        if not isinstance(data, list | tuple) or len(data) != 2:
            continue
        name, index = data
        try:
            index = int(index)
        except (TypeError, ValueError):
            continue
        if name in view.curves and 0 <= index < len(view.curves[name].points):
            clicked.append((str(name), index))
    if not clicked:
        return None
    for name, index in clicked:
        if name == method:
            return Click(name, index, switched=False)
    name, index = clicked[0]
    if method in view.curves:
        other = view.curves[name]
        twin = view.curves[method].twin(float(other.latency_ms[index]), float(other.value[index]))
        if twin is not None:
            return Click(method, twin, switched=False)
    return Click(name, index, switched=method is not None)


def take_pick() -> None:
    """on_select of the frontier chart: select the clicked point and move the slider to it."""
    event = st.session_state.get(CHART)
    used = tables_in_use()
    if not event or used is None:
        return
    view = frontier_view(used)
    before = st.session_state.get(METHOD)
    click = clicked_point(event["selection"]["points"], view, before)
    if click is None:
        return
    if click.switched:
        st.session_state[NOTE] = (
            f"The method is now {click.method}: the point you clicked is {click.method}'s, and "
            f"no {before} solution lies there."
        )
    show_point(used, view, click.method, click.index)


def show_point(used: TablesInUse, view: FrontierView, method: str, index: int) -> None:
    """Select a frontier point (a callback): method, budget and the point itself."""
    values = st.session_state
    values[PICKED] = (used.key, method, index)
    values[METHOD] = method
    latency = float(view.curves[method].latency_ms[index])
    values[BUDGET] = min(100, max(view.slider_min, lowest_percent(latency, used) or 100))
    values[BUDGET_TABLES] = used.key


def chosen_point(
    used: TablesInUse, view: FrontierView, method: str, budget_ms: float
) -> tuple[str, int] | None:
    """The clicked point if there is one, else ``method``'s best point within the budget.

    Returns:
        (method, index into its curve), or None when no solution of ``method`` fits.
    """
    picked = st.session_state.get(PICKED)
    if picked and picked[0] == used.key and picked[1] in view.curves:
        if 0 <= picked[2] < len(view.curves[picked[1]].points):
            return picked[1], picked[2]
    curve = view.curves[method]
    position = int(np.searchsorted(curve.latency_ms, budget_ms * (1 + PICK_SLACK), side="right"))
    return (method, position - 1) if position else None


def go_to(percent: int) -> None:
    """A button's callback: move the budget to ``percent``."""
    forget_pick()
    st.session_state[BUDGET] = int(percent)


def _whole(value: Any) -> int | None:
    """``value`` as a whole percentage in [1, 100], or None (absent or malformed)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(min(100, max(1, round(number))))
