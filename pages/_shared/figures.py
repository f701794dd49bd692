"""Plotly figures of chains, tables, frontiers and the pictures of the Learn page.

Every function takes core's frozen dataclasses (Chain, Tables, Solution, FrontierPoint) and returns
a new ``go.Figure``; none imports Streamlit, so each can be tried in a notebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from core.chain import Chain
from core.dp import FrontierPoint
from core.solution import Solution
from core.tables import Tables

__all__ = [
    "METHOD_COLORS",
    "chain_figure",
    "frontier_figure",
    "table_heatmap",
]

METHOD_COLORS = {"layermerge": "#e4572e", "depth": "#4c72b0", "layer": "#55a868"}
KEPT, REMOVED, PRUNABLE, FIXED = "#2a9d8f", "#bbbbbb", "#f4a261", "#8d99ae"
_BOX_HALF = 0.36  # half-width of a conv box, in positions


def chain_figure(chain: Chain, solution: Solution | None = None, *, height: int = 300) -> go.Figure:
    """The chain: convs as boxes with kernel sizes, activation slots, residual arcs and breaks.

    Without a solution, reducible (prunable) convs are orange and every activation is drawn as in
    the original network. With one, pruned convs are grey, removed activations are hollow, and
    each merged segment is a shaded band labelled with its merged kernel size.
    """
    figure = go.Figure()
    kept = set(solution.kept_convs) if solution is not None else None
    acts = set(solution.kept_activations) if solution is not None else None
    if solution is not None:  # shaded bands: one per merged segment
        for seg in solution.segments:
            figure.add_shape(
                type="rect",
                x0=seg.start + 0.5,
                x1=seg.end + 0.5,
                y0=-0.55,
                y1=1.55,
                fillcolor="rgba(228,87,46,0.08)",
                line={"color": "rgba(228,87,46,0.5)", "dash": "dot"},
                layer="below",
            )
            label = "removed" if seg.kernel == 0 else f"→ {seg.kernel}×{seg.kernel}"
            figure.add_annotation(
                x=(seg.start + seg.end) / 2 + 0.5,
                y=-0.85,
                text=label,
                showarrow=False,
                font={"size": 11, "color": METHOD_COLORS["layermerge"]},
            )
    xs, ys, hover, colors, texts = [], [], [], [], []
    for conv in chain.convs:
        pruned = kept is not None and conv.index not in kept
        if pruned:
            color = REMOVED
        elif kept is None and conv.index > 0 and conv.reducible:
            color = PRUNABLE
        else:
            color = KEPT
        figure.add_shape(
            type="rect",
            x0=conv.index - _BOX_HALF,
            x1=conv.index + _BOX_HALF,
            y0=0,
            y1=1,
            fillcolor=color,
            line={"color": "#333", "width": 1, "dash": "dot" if pruned else "solid"},
            layer="below",
        )
        label = f"{conv.kernel}×{conv.kernel}"
        if conv.depthwise:
            label += "<br>dw"
        if conv.stride > 1:
            label += f"<br>/{conv.stride}"
        xs.append(conv.index)
        ys.append(0.5)
        texts.append(label)
        colors.append(color)
        hover.append(
            f"conv {conv.index}: {conv.name}<br>{conv.kernel}×{conv.kernel}, stride {conv.stride}, "
            f"groups {conv.groups}<br>{conv.in_channels} → {conv.out_channels} channels, input "
            f"{'×'.join(map(str, conv.input_shape))}<br>"
            + (
                "prunable (same channels, stride 1)"
                if conv.reducible and conv.index
                else "kept always"
            )
            + (" · pruned in this solution" if pruned else "")
        )
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="text",
            text=texts,
            textfont={"size": 11},
            hovertext=hover,
            hoverinfo="text",
            showlegend=False,
        )
    )
    _activation_markers(figure, chain, acts)
    _residual_arcs(figure, chain)
    for position in sorted(chain.breaks):
        if 0 < position < chain.last_position:
            figure.add_vline(x=position + 0.5, line={"color": "#888", "dash": "dash", "width": 1})
    head = " → ".join(op.kind.replace("adaptive_", "").replace("2d", "") for op in chain.head)
    last = chain.last_position
    figure.add_shape(
        type="rect",
        x0=last + 0.7,
        x1=last + 1.7,
        y0=0.1,
        y1=0.9,
        fillcolor=FIXED,
        line={"color": "#333", "width": 1},
        layer="below",
    )
    figure.add_annotation(x=last + 1.2, y=0.5, text="head", showarrow=False, hovertext=head)
    for name, color in (("kept conv", KEPT), ("prunable conv", PRUNABLE), ("pruned conv", REMOVED)):
        if name == "pruned conv" and kept is None or name == "prunable conv" and kept is not None:
            continue
        figure.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker={"symbol": "square", "size": 12, "color": color},
            )
        )
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={
            "title": "position (conv index)",
            "range": [-0.8, last + 1.9],
            "dtick": 1,
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={"visible": False, "range": [-1.1, 2.9]},
        legend={"orientation": "h", "y": 1.12, "x": 0},
        plot_bgcolor="white",
    )
    return figure


def _activation_markers(figure: go.Figure, chain: Chain, acts: set[int] | None) -> None:
    xs, symbols, colors, hover = [], [], [], []
    for position, kind in enumerate(chain.activations):
        removed = acts is not None and position not in acts
        xs.append(position + 0.5)
        if removed:
            symbols.append("circle-open")
            colors.append(REMOVED)
            hover.append(f"position {position}: {kind or 'linear'} removed (identity)")
        elif kind is None:
            symbols.append("diamond-open")
            colors.append("#333")
            hover.append(f"position {position}: no activation in the original (linear)")
        else:
            symbols.append("circle")
            colors.append("#264653")
            hover.append(f"position {position}: {kind} kept")
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=[0.5] * len(xs),
            mode="markers",
            hovertext=hover,
            hoverinfo="text",
            marker={
                "symbol": symbols,
                "size": 10,
                "color": colors,
                "line": {"width": 2, "color": colors},
            },
            name="activation (hollow: removed)",
        )
    )


def _residual_arcs(figure: go.Figure, chain: Chain) -> None:
    for number, span in enumerate(chain.residuals):
        left, right = span.start + 0.5, span.end + 0.5
        t = np.linspace(0, math.pi, 40)
        xs = (left + right) / 2 - (right - left) / 2 * np.cos(t)
        ys = 1.1 + 0.9 * np.sin(t) * min(1.0, 0.35 + 0.2 * (span.end - span.start))
        skip = "1×1 shortcut conv" if span.shortcut else "identity skip"
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "#6c757d", "width": 1.5},
                hoverinfo="text",
                hovertext=f"residual ({span.start}, {span.end}]: {skip}",
                name="residual span",
                legendgroup="residual",
                showlegend=number == 0,
            )
        )


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
    figure = go.Figure()
    for method, points in fronts.items():
        latency = [p.latency_ms for p in points]
        figure.add_trace(
            go.Scatter(
                x=latency,
                y=[p.importance for p in points],
                mode="lines+markers",
                name=method,
                line={"shape": "hv", "color": METHOD_COLORS.get(method), "width": 1.5},
                marker={"size": 6},
                customdata=[[method, i] for i in range(len(points))],
                hovertemplate=(
                    f"<b>{method}</b><br>%{{x:.4g}} ms (%{{text}} of original)<br>importance "
                    "%{y:.4g}<extra>click to select</extra>"
                ),
                text=[f"{v / original_ms:.0%}" if original_ms > 0 else "" for v in latency],
            )
        )
    if budget_ms is not None:
        figure.add_vline(
            x=budget_ms,
            line={"color": "#333", "dash": "dash", "width": 1},
            annotation_text="budget",
            annotation_position="top left",
        )
    if current is not None:
        figure.add_trace(
            go.Scatter(
                x=[current.latency_ms],
                y=[current.importance],
                mode="markers",
                name="current",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "#ffd166",
                    "line": {"color": "#111", "width": 1.5},
                },
                hoverinfo="skip",
            )
        )
    figure.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "predicted latency (ms, table sum)"},
        yaxis={"title": "importance (sum over segments)"},
        legend={"orientation": "h", "y": 1.1, "x": 0},
        clickmode="event+select",
    )
    return figure


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
