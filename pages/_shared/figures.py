"""Plotly figures of frontiers and tables (the chain and the finetune curves have their own).

Every function takes core's frozen dataclasses or plain records and returns a new ``go.Figure``;
none imports Streamlit, so each can be tried in a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from core.dp import FrontierPoint
from core.solution import Solution
from core.tables import Tables

__all__ = [
    "METHOD_COLORS",
    "frontier_figure",
    "table_heatmap",
]

METHOD_COLORS = {"layermerge": "#e4572e", "depth": "#4c72b0", "layer": "#55a868"}
_CURVE_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}


def frontier_figure(
    fronts: Mapping[str, Sequence[FrontierPoint]],
    *,
    original_ms: float,
    budget_ms: float | None = None,
    current: Solution | None = None,
    height: int = 380,
) -> go.Figure:
    """The three methods' frontiers (latency vs importance); clicking a point selects it.

    Each point carries ``customdata = [method, index]`` into its method's frontier list.
    """
    traces: list[dict] = []
    for method, points in fronts.items():
        latency = [p.latency_ms for p in points]
        traces.append(
            {
                "type": "scatter",
                "x": latency,
                "y": [p.importance for p in points],
                "mode": "lines+markers",
                "name": method,
                "marker": {"size": 6},
                "line": {"shape": "hv", "color": METHOD_COLORS.get(method), "width": 1.5},
                "customdata": [[method, i] for i in range(len(points))],
                "text": [f"{v / original_ms:.0%}" if original_ms > 0 else "" for v in latency],
                "hovertemplate": f"<b>{method}</b><br>%{{x:.4g}} ms (%{{text}} of original)<br>"
                "importance %{y:.4g}<extra>click to select</extra>",
            }
        )
    if current is not None:
        traces.append(
            {
                "type": "scatter",
                "x": [current.latency_ms],
                "y": [current.importance],
                "mode": "markers",
                "name": "current",
                "hoverinfo": "skip",
                "marker": {
                    "symbol": "star",
                    "size": 18,
                    "color": "#ffd166",
                    "line": {"color": "#111", "width": 1.5},
                },
            }
        )
    shapes, annotations = [], []
    if budget_ms is not None:
        shapes.append(
            {
                "type": "line",
                "x0": budget_ms,
                "x1": budget_ms,
                "y0": 0,
                "y1": 1,
                "yref": "paper",
                "line": {"color": "#333", "dash": "dash", "width": 1},
            }
        )
        annotations.append(
            {
                "x": budget_ms,
                "y": 1,
                "yref": "paper",
                "text": "budget",
                "showarrow": False,
                "xanchor": "right",
                "yanchor": "bottom",
            }
        )
    layout = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "xaxis": {"title": {"text": "predicted latency (ms, table sum)"}},
        "yaxis": {"title": {"text": "importance (sum over segments)"}},
        "legend": {"orientation": "h", "y": 1.1, "x": 0},
        "clickmode": "event+select",
        "shapes": shapes,
        "annotations": annotations,
    }
    return go.Figure({"data": traces, "layout": layout})


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
