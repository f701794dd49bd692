"""The Learn page's pictures, each computed from the user's model, chain, tables and solution."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn

from core.chain import Chain
from core.merge import compose, fold_bn
from core.segments import find_segments, is_valid_segment
from core.solution import Solution
from core.tables import Tables
from pages._shared.figures import METHOD_COLORS

__all__ = ["first_pair", "merge_pair_figure", "growth_figure", "pruning_figure", "dp_grid_figure"]


def first_pair(chain: Chain) -> int | None:
    """The first conv p whose pair (p, p+1) can merge, preferring two spatial (k > 1) convs."""
    pairs = [p for p in range(1, chain.last_position) if is_valid_segment(chain, p - 1, p + 1)]
    spatial = [p for p in pairs if chain.convs[p].kernel > 1 and chain.convs[p + 1].kernel > 1]
    return (spatial or pairs or [None])[0]


def merge_pair_figure(model: nn.Module, chain: Chain, position: int) -> go.Figure:
    """Conv p, conv p+1, their merged kernel, and how many paths reach each input pixel.

    Kernels are the model's own (BN folded, composed exactly as core.merge does); each panel shows
    the mean absolute weight per tap over all channels.
    """
    modules = dict(model.named_modules())
    first, second = chain.convs[position], chain.convs[position + 1]
    kernels = [fold_bn(modules[c.name], modules[c.bn] if c.bn else None) for c in (first, second)]
    merged = compose(kernels[0], kernels[1])
    paths = np.convolve(np.ones(first.kernel), np.ones(second.kernel))
    panels = [
        (f"conv {position}: {first.kernel}×{first.kernel}", _taps(kernels[0].weight)),
        (f"conv {position + 1}: {second.kernel}×{second.kernel}", _taps(kernels[1].weight)),
        (f"merged: {merged.size}×{merged.size}", _taps(merged.weight)),
        ("paths from each input pixel", np.outer(paths, paths)),
    ]
    figure = make_subplots(rows=1, cols=4, subplot_titles=[title for title, _ in panels])
    for column, (_, grid) in enumerate(panels, start=1):
        figure.add_trace(
            go.Heatmap(
                z=grid,
                colorscale="Blues",
                showscale=False,
                texttemplate="%{z:.2g}",
                hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra></extra>",
            ),
            row=1,
            col=column,
        )
        figure.update_xaxes(
            visible=False, scaleanchor=f"y{column if column > 1 else ''}", row=1, col=column
        )
        figure.update_yaxes(visible=False, autorange="reversed", row=1, col=column)
    figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def growth_figure(chain: Chain, tables: Tables | None = None) -> go.Figure:
    """Merged kernel size against segment length: all convs kept (Kim23) vs pruning (LayerMerge).

    With tables, each point's hover also gives that merged conv's measured latency.
    """
    latency = {}
    if tables is not None:
        latency = {(e.start, e.end, e.kernel, e.depthwise): e.latency_ms for e in tables.entries}
    series: dict[str, list[tuple[int, int, str]]] = {"kept": [], "pruned": []}
    for segment in find_segments(chain):
        length, label = segment.end - segment.start, f"({segment.start}, {segment.end}]"
        full = segment.full_option
        small = min((o for o in segment.options if not o.is_removal), key=lambda o: o.kernel)
        for key, option in (("kept", full), ("pruned", small)):
            ms = latency.get((segment.start, segment.end, option.kernel, option.depthwise))
            timing = f"<br>{ms:.4g} ms in the latency table" if ms is not None else ""
            series[key].append((length, option.kernel, f"segment {label}{timing}"))
    figure = go.Figure()
    for key, name, color, offset in (
        ("kept", "every conv kept (Kim23)", METHOD_COLORS["depth"], -0.08),
        ("pruned", "smallest with pruned convs (LayerMerge)", METHOD_COLORS["layermerge"], 0.08),
    ):
        points = series[key]
        figure.add_trace(
            go.Scatter(
                x=[length + offset for length, _, _ in points],
                y=[kernel for _, kernel, _ in points],
                mode="markers",
                name=name,
                marker={"color": color, "size": 9, "opacity": 0.7},
                text=[text for _, _, text in points],
                hovertemplate="%{text}<br>kernel %{y}×%{y}<extra>" + name + "</extra>",
            )
        )
    figure.update_layout(
        height=340,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "convs merged into one (segment length)", "dtick": 1},
        yaxis={"title": "merged kernel size K"},
        legend={"orientation": "h", "y": 1.12},
    )
    return figure


def pruning_figure(chain: Chain, solution: Solution) -> go.Figure:
    """For each segment of the solution: its kernel if nothing were pruned, and the chosen one."""
    full = {(s.start, s.end): s.full_option.kernel for s in find_segments(chain)}
    merged = [s for s in solution.segments if s.end - s.start > 1 or s.kernel == 0]
    labels = [f"({s.start}, {s.end}]" for s in merged]
    figure = go.Figure(
        [
            go.Bar(
                x=labels,
                y=[full[(s.start, s.end)] for s in merged],
                name="every conv kept",
                marker_color=METHOD_COLORS["depth"],
            ),
            go.Bar(
                x=labels,
                y=[s.kernel for s in merged],
                name="with the solution's pruned convs",
                marker_color=METHOD_COLORS["layermerge"],
                text=[
                    f"prunes {', '.join(str(c) for c in range(s.start + 1, s.end + 1) if c not in s.kept_convs) or 'none'}"
                    for s in merged
                ],
            ),
        ]
    )
    figure.update_layout(
        barmode="group",
        height=320,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "merged segments of the current solution"},
        yaxis={"title": "kernel size K"},
        legend={"orientation": "h", "y": 1.12},
    )
    return figure


def dp_grid_figure(
    states: Sequence[tuple[int, float, float]],
    solution: Solution | None,
    *,
    budget_ms: float | None,
    original_ms: float,
) -> go.Figure:
    """The DP's (position, latency) grid: every Pareto state, and the chosen path through it.

    ``states`` are (position j, latency of a best path from 0 to j, its importance).
    """
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[j for j, _, _ in states],
            y=[t for _, t, _ in states],
            mode="markers",
            marker={
                "color": [i for _, _, i in states],
                "colorscale": "Viridis",
                "size": 7,
                "colorbar": {"title": {"text": "importance"}},
                "opacity": 0.8,
            },
            name="Pareto states (j, latency)",
            hovertemplate="position %{x}<br>%{y:.4g} ms so far<extra></extra>",
        )
    )
    if solution is not None:
        xs, ys, total = [0], [0.0], 0.0
        for seg in solution.segments:
            total += seg.latency_ms
            xs.append(seg.end)
            ys.append(total)
        figure.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"chosen path ({solution.method})",
                line={"color": METHOD_COLORS.get(solution.method, "#e4572e"), "width": 3},
            )
        )
    if budget_ms is not None:
        figure.add_hline(
            y=budget_ms,
            line={"dash": "dash", "color": "#333"},
            annotation_text="budget",
            annotation_position="top left",
        )
    figure.add_hline(
        y=original_ms,
        line={"dash": "dot", "color": "#999"},
        annotation_text="keep everything",
        annotation_position="bottom right",
    )
    figure.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "position j (end of the last segment)", "dtick": 1},
        yaxis={"title": "latency of the path so far (ms)"},
        legend={"orientation": "h", "y": 1.12},
    )
    return figure


def _taps(weight: object) -> np.ndarray:
    array = np.abs(weight.detach().double().numpy())  # (Cout, Cin, K, K)
    return array.mean(axis=(0, 1))
