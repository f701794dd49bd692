"""Plotly figures of frontiers, tables and finetune curves (the chain has its own module).

Every function takes core's frozen dataclasses or plain records and returns a new ``go.Figure``;
none imports Streamlit, so each can be tried in a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.tables import Tables

if TYPE_CHECKING:  # the types only: this module never imports Streamlit
    from pages._shared.frontier_view import FrontierView
    from pages._shared.measured import Measured

__all__ = [
    "METHOD_COLORS",
    "frontier_figure",
    "table_heatmap",
    "accuracy_curves",
    "eps_loss_curves",
]

METHOD_COLORS = {"layermerge": "#e4572e", "depth": "#4c72b0", "layer": "#55a868"}
METHOD_SYMBOLS = {"layermerge": "circle", "depth": "diamond-open", "layer": "square-open"}
TOP_METHOD = "layermerge"  # drawn last, on top of the baselines
MEASURED_SYMBOLS = {"surgery": "x", "finetuned": "triangle-up", "original": "circle"}
MEASURED_NAMES = {
    "surgery": "after surgery, measured",
    "finetuned": "after finetune, measured",
    "original": "original, measured",
}
_CURVE_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}


def frontier_figure(
    view: FrontierView,
    *,
    method: str,
    current: tuple[float, float] | None = None,
    budget: tuple[float, str] | None = None,
    measured: Sequence[Measured] = (),
    height: int = 440,
) -> go.Figure:
    """Every method's frontier as predicted speed-up against predicted quality, LayerMerge on top.

    Each frontier point carries ``customdata = [method, index]`` into its method's curve (clicks
    select it); the current solution (a star at ``current`` = (speed-up, value)) and the measured
    markers carry none. ``budget`` is (speed-up at the budget, label): the budget line, with the
    solutions within budget to its right.
    """
    traces: list[dict] = []
    order = [m for m in view.curves if m != TOP_METHOD] + [
        m for m in view.curves if m == TOP_METHOD
    ]
    for name in order:
        curve = view.curves[name]
        if not len(curve.points):
            continue
        top = name == TOP_METHOD
        indices = list(range(len(curve.points)))[::-1]  # by increasing speed-up
        share = [curve.latency_ms[i] / view.original_ms for i in indices]
        traces.append(
            {
                "type": "scatter",
                "x": [float(curve.speedup[i]) for i in indices],
                "y": [float(curve.value[i]) for i in indices],
                "mode": "lines+markers",
                "name": f"{name} (predicted)",
                "marker": {
                    "size": 8 if top else 12,
                    "symbol": METHOD_SYMBOLS.get(name, "circle-open"),
                    "color": METHOD_COLORS.get(name),
                    "line": {"width": 2 if not top else 0, "color": METHOD_COLORS.get(name)},
                },
                "line": {
                    "shape": "vh",
                    "color": METHOD_COLORS.get(name),
                    "width": 3 if name == method else 1.5,
                    "dash": "solid" if top else "dot",
                },
                "customdata": [[name, i] for i in indices],
                "text": [
                    f"{curve.latency_ms[i]:.4g} ms table latency ({s:.0%} of the original)"
                    for i, s in zip(indices, share, strict=True)
                ],
                "hovertemplate": f"<b>{name}</b>, predicted<br>speed-up %{{x:.2f}}×<br>"
                f"{view.quality} %{{y:.4g}}{view.unit}<br>%{{text}}<extra>click to select</extra>",
            }
        )
    traces.extend(_measured_traces(view, measured))
    if current is not None:
        traces.append(
            {
                "type": "scatter",
                "x": [current[0]],
                "y": [current[1]],
                "mode": "markers",
                "name": "current solution",
                "hoverinfo": "skip",
                "marker": {
                    "symbol": "star",
                    "size": 20,
                    "color": "#ffd166",
                    "line": {"color": "#111", "width": 1.5},
                },
            }
        )
    shapes, annotations = [], []
    if budget is not None:
        x, label = budget
        right = max([x, *(value for trace in traces for value in trace["x"])]) * 1.05
        line = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "yref": "paper"}
        shapes.append({**line, "line": {"color": "#333", "dash": "dash", "width": 1}})
        shapes.append(
            {
                "type": "rect",
                "x0": x,
                "x1": right,
                "y0": 0,
                "y1": 1,
                "yref": "paper",
                "fillcolor": "rgba(0, 0, 0, 0.04)",
                "line": {"width": 0},
                "layer": "below",
            }
        )
        annotations.append(
            {
                "x": x,
                "y": 0,
                "yref": "paper",
                "text": f" {label} → within budget",
                "showarrow": False,
                "xanchor": "left",
                "yanchor": "bottom",
            }
        )
    layout = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "xaxis": {
            "title": {
                "text": "speed-up of the whole network (×): lines predicted from the latency "
                "table; measured markers where timed"
            }
        },
        "yaxis": {"title": {"text": view.value_label}},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "hovermode": "closest",
        "clickmode": "event+select",
        "shapes": shapes,
        "annotations": annotations,
    }
    return go.Figure({"data": traces, "layout": layout})


def _measured_traces(view: FrontierView, measured: Sequence[Measured]) -> list[dict]:
    """One trace per (stage, source) of measured points, coloured by method; never clickable."""
    traces = []
    for stage, symbol in MEASURED_SYMBOLS.items():
        for source in sorted({m.source for m in measured}):
            group = [m for m in measured if m.stage == stage and m.source == source]
            if not group:
                continue
            open_ = "-open" if source != "this session" else ""
            traces.append(
                {
                    "type": "scatter",
                    "x": [m.speedup for m in group],
                    "y": [m.value for m in group],
                    "mode": "markers",
                    "name": f"{MEASURED_NAMES[stage]} ({source})",
                    "marker": {
                        "symbol": symbol + open_,
                        "size": 13,
                        "color": [METHOD_COLORS.get(m.method, "#111") for m in group],
                        "line": {
                            "width": 2,
                            "color": [METHOD_COLORS.get(m.method, "#111") for m in group],
                        },
                    },
                    "text": [_measured_hover(view, m) for m in group],
                    "hovertemplate": "%{text}<extra></extra>",
                }
            )
    return traces


def _measured_hover(view: FrontierView, point: Measured) -> str:
    speed = "measured" if point.speedup_measured else "predicted"
    predicted = (
        f"<br>predicted {view.format_value(point.predicted)}" if point.predicted is not None else ""
    )
    return (
        f"<b>{point.method}</b>, {MEASURED_NAMES[point.stage]} ({point.source})<br>"
        f"measured {view.quality} {view.format_value(point.value)}{predicted}<br>"
        f"speed-up {point.speedup:.2f}× ({speed})"
    )


def table_heatmap(
    tables: Tables, column: str, kernel: int, depthwise: bool, *, title: str, height: int = 340
) -> go.Figure:
    """One table column over (start i, end j) for one kernel option: cell (i, j) is segment (i, j]."""
    last = tables.last_position
    grid = np.full((last + 1, last + 1), np.nan)
    kept = np.empty((last + 1, last + 1), dtype=object)
    for entry in tables.entries:
        if entry.kernel == kernel and entry.depthwise == depthwise:
            grid[entry.start, entry.end] = getattr(entry, column)
            kept[entry.start, entry.end] = str(list(entry.kept_convs))
    figure = go.Figure(
        go.Heatmap(
            z=grid,
            x=list(range(last + 1)),
            y=list(range(last + 1)),
            customdata=kept,
            colorscale="Viridis" if column == "latency_ms" else "Cividis",
            hovertemplate="segment (%{y}, %{x}]<br>" + column + " %{z:.4g}<br>keeps %{customdata}"
            "<extra></extra>",
            colorbar={"title": {"text": "ms" if column == "latency_ms" else ""}},
        )
    )
    figure.update_layout(
        title=title,
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        xaxis={"title": "end j", "dtick": 1 if last <= 20 else 5},
        yaxis={"title": "start i", "autorange": "reversed", "dtick": 1 if last <= 20 else 5},
    )
    return figure


def accuracy_curves(history: Sequence[Mapping[str, Any]]) -> go.Figure:
    """A classifier finetune so far: training loss and training accuracy per step."""
    frame = pd.DataFrame(history)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(x=frame.step, y=frame.loss, name="loss"), secondary_y=False)
    figure.add_trace(
        go.Scatter(x=frame.step, y=frame.accuracy, name="train accuracy %"), secondary_y=True
    )
    figure.update_layout(
        height=300,
        margin=_CURVE_MARGIN,
        xaxis_title="step",
        legend={"orientation": "h", "y": 1.15},
    )
    return figure


def eps_loss_curves(history: Sequence[Mapping[str, Any]]) -> go.Figure:
    """A diffusion finetune so far: training ε-loss per step, holdout ε-loss where measured."""
    frame = pd.DataFrame(history)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=frame.step, y=frame.loss, name="training ε-loss (MSE)"))
    marks = frame.dropna(subset=["holdout"])
    if len(marks):
        figure.add_trace(
            go.Scatter(
                x=marks.step,
                y=marks.holdout,
                name="holdout ε-loss (sum over pixels)",
                mode="lines+markers",
                yaxis="y2",
            )
        )
    figure.update_layout(
        height=300,
        margin=_CURVE_MARGIN,
        xaxis_title="step",
        yaxis={"title": "training"},
        yaxis2={"title": "holdout", "overlaying": "y", "side": "right"},
        legend={"orientation": "h", "y": 1.15},
    )
    return figure
