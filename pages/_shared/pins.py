"""Pinned solutions: several frontier points kept side by side, each exportable.

A pin remembers its tables, method and frontier index, so it belongs to one model's tables: the
table lists the pins of the tables in use (switching back to a model brings its pins back).
Every cell is either a prediction (the column says so) or a measurement of this session, and
"not measured" where there is none yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.solution import Solution
from pages._shared import budget_state, jobs_surgery, measured, state
from pages._shared.frontier_view import FrontierView
from pages._shared.panels import Panel
from pages._shared.tables_in_use import TablesInUse

__all__ = ["Pin", "pins_of", "pin", "unpin", "rows", "section", "merged_depth", "NOT_MEASURED"]

PINS = "pins"  # session key: list[Pin]
EXPORT_PAGE = "pages/export.py"
NOT_MEASURED = "not measured"
TESTING = "testing…"


@dataclass(frozen=True)
class Pin:
    """A pinned frontier point of one pair of tables."""

    tables_key: str
    method: str
    index: int
    solution: Solution

    def label(self, view: FrontierView, number: int) -> str:
        speedup = view.speedup_of(self.solution)
        value = view.format_value(view.value_of(self.solution))
        return f"#{number} {self.method} · {speedup:.2f}× · {value}"


def pins_of(used: TablesInUse) -> list[Pin]:
    """The session's pins on the tables in use, in pinning order."""
    return [p for p in st.session_state.get(PINS, []) if p.tables_key == used.key]


def pin(used: TablesInUse, method: str, index: int, solution: Solution) -> None:
    """Pin a frontier point (a button's callback); pinning it again does nothing."""
    pins = st.session_state.setdefault(PINS, [])
    if not any(p.tables_key == used.key and (p.method, p.index) == (method, index) for p in pins):
        pins.append(Pin(used.key, method, index, solution))


def unpin(target: Pin) -> None:
    st.session_state[PINS] = [p for p in st.session_state.get(PINS, []) if p != target]


def merged_depth(solution: Solution) -> int:
    """Main-path convs of the merged network: one per segment that keeps a conv, plus the stem."""
    return sum(1 for s in solution.segments if s.kernel) + 1


def rows(view: FrontierView, panel: Panel, pins: list[Pin]) -> pd.DataFrame:
    """One row per pin, every cell text: predictions say so, measurements say when they lack."""
    quality = view.quality
    table = []
    for number, item in enumerate(pins, start=1):
        solution = item.solution
        speed = measured.speed_of(solution, panel)
        surgery = jobs_surgery.result_of(solution)
        after = measured.finetuned_of(solution, panel)
        table.append(
            {
                "pin": f"#{number}",
                "method": item.method,
                "share": f"{solution.latency_ms / view.original_ms:.0%}",
                "ms predicted": f"{solution.latency_ms:.4g}",
                "ms measured": _or_missing(speed and speed.get("merged_ms"), "{:.4g}"),
                "speed-up predicted": f"{view.speedup_of(solution):.2f}×",
                "speed-up measured": _or_missing(
                    speed and speed.get("measured_speedup"), "{:.2f}×"
                ),
                "depth": str(merged_depth(solution)),
                "parameters": _surgery_cell(surgery, "params", "{:,}"),
                view.value_name: view.format_value(view.value_of(solution)),
                f"{quality} after surgery": _surgery_cell(surgery, "quality", None, view),
                f"{quality} after finetune": view.format_value(after),
            }
        )
    return pd.DataFrame(table)


def section(
    view: FrontierView, used: TablesInUse, panel: Panel, current: Solution, point: tuple[str, int]
) -> None:
    """The pin button, the pinned solutions side by side, and what a pinned row can do."""
    pins = pins_of(used)
    st.button(
        "Pin this solution",
        key="pin",
        icon=":material/push_pin:",
        on_click=pin,
        args=(used, point[0], point[1], current),
        help="keep it in the table below to compare with others and export it later",
    )
    if not pins:
        st.caption("Pin solutions to compare them side by side here.")
        return
    st.dataframe(rows(view, panel, pins), hide_index=True, key="pins_table")
    labels = {i: item.label(view, i + 1) for i, item in enumerate(pins)}
    cols = st.columns([3, 1, 1, 1], vertical_alignment="bottom")
    chosen = cols[0].selectbox(
        "Pinned solution", list(labels), format_func=labels.get, key="pin_choice"
    )
    chosen = chosen if chosen in labels else 0
    target = pins[chosen]
    cols[1].button(
        "Select it",
        key="pin_show",
        on_click=budget_state.show_point,
        args=(used, view, target.method, target.index),
    )
    if cols[2].button(
        "Export it",
        key="pin_export",
        type="primary",
        on_click=_to_export,
        args=(used, view, target),
        help="makes it the current solution and opens the Export page",
    ):
        st.switch_page(EXPORT_PAGE)
    cols[3].button("Unpin", key="pin_remove", on_click=unpin, args=(target,))


def _to_export(used: TablesInUse, view: FrontierView, target: Pin) -> None:
    budget_state.show_point(used, view, target.method, target.index)
    state.set_solution(target.solution)


def _or_missing(value: float | None, spec: str) -> str:
    return NOT_MEASURED if value is None else spec.format(value)


def _surgery_cell(
    stored: dict | None, field: str, spec: str | None, view: FrontierView | None = None
) -> str:
    if stored is None:
        return TESTING
    if "error" in stored:
        return f"failed: {stored['error']}"
    if view is not None:
        return view.format_value(stored.get(field))
    return _or_missing(stored.get(field), spec or "{}")
