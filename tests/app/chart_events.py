"""Plotly charts in AppTest: read a chart's figure, and deliver a click as the browser would.

AppTest shows ``st.plotly_chart`` as an UnknownElement and has no way to select on it
(STREAMLIT.md §3.1). The element's proto still carries the figure (``spec``, plotly JSON) and,
with ``on_select``, the widget id, so a click can be sent the way the frontend sends it: one more
widget state, the selection serialised as JSON, for the next script run. Streamlit then calls the
chart's ``on_select`` callback before the script, exactly as in a browser.
"""

from __future__ import annotations

import json
from typing import Any

from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest


def chart(at: AppTest, key: str) -> Any:
    """The plotly chart element whose widget key is ``key``."""
    for element in at.get("plotly_chart"):
        if element.key == key:
            return element
    raise AssertionError(f"no plotly chart with key {key!r}")


def figure(at: AppTest, key: str) -> dict[str, Any]:
    """The chart's figure as plotly JSON (``data`` and ``layout``)."""
    return json.loads(chart(at, key).proto.spec)


def trace(at: AppTest, key: str, name: str) -> dict[str, Any]:
    """The chart's trace called ``name``."""
    for found in figure(at, key)["data"]:
        if found.get("name") == name:
            return found
    names = [t.get("name") for t in figure(at, key)["data"]]
    raise AssertionError(f"no trace {name!r} in {key!r}; traces: {names}")


def click(at: AppTest, key: str, trace_name: str, index: int) -> AppTest:
    """Click point ``index`` of trace ``trace_name`` and run the script (a selection event)."""
    data = figure(at, key)["data"]
    curve = next(i for i, t in enumerate(data) if t.get("name") == trace_name)
    chosen = data[curve]
    point = {
        "curve_number": curve,
        "point_number": index,
        "point_index": index,
        "x": chosen["x"][index],
        "y": chosen["y"][index],
    }
    if "customdata" in chosen:
        point["customdata"] = chosen["customdata"][index]
    selection = {"selection": {"points": [point], "point_indices": [index], "box": [], "lasso": []}}
    states = at._tree.get_widget_states()
    states.widgets.append(
        WidgetState(id=chart(at, key).proto.id, string_value=json.dumps(selection))
    )
    return at._run(states)
