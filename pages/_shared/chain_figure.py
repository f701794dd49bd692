"""The chain picture: main-path convs as boxes, activation slots, residual arcs and breaks.

Takes core's frozen Chain (and optionally a Solution) and returns a new ``go.Figure``; it imports
no Streamlit, so it can be tried in a notebook. Every family's chain draws the same way.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from core.chain import Chain
from core.solution import Solution
from pages._shared.figures import METHOD_COLORS

__all__ = ["chain_figure"]

KEPT, REMOVED, PRUNABLE, FIXED = "#2a9d8f", "#bbbbbb", "#f4a261", "#5c677d"
ACTIVE = "#264653"  # an activation the network keeps
_BOX_HALF = 0.36  # half-width of a conv box, in positions
_HEAD_WORDS = {"avgpool": "pool", "maxpool": "pool", "linear": "fc", "flatten": "", "dropout": ""}


def chain_figure(chain: Chain, solution: Solution | None = None, *, height: int = 300) -> go.Figure:
    """The chain: convs as boxes with kernel sizes, activation slots, residual arcs and breaks.

    Without a solution, reducible (prunable) convs are orange and every activation is drawn as in
    the original network. With one, pruned convs are grey, removed activations are hollow, and
    each merged segment is a shaded band labelled with its merged kernel size. Shapes and traces
    are collected first and handed to plotly once (one ``add_shape`` per box costs milliseconds).
    """
    kept = set(solution.kept_convs) if solution is not None else None
    acts = set(solution.kept_activations) if solution is not None else None
    shapes: list[dict] = []
    annotations: list[dict] = []
    if solution is not None:  # shaded bands: one per merged segment
        for seg in solution.segments:
            shapes.append(
                {
                    "type": "rect",
                    "x0": seg.start + 0.5,
                    "x1": seg.end + 0.5,
                    "y0": -0.55,
                    "y1": 1.55,
                    "fillcolor": "rgba(228,87,46,0.08)",
                    "layer": "below",
                    "line": {"color": "rgba(228,87,46,0.5)", "dash": "dot"},
                }
            )
            annotations.append(
                {
                    "x": (seg.start + seg.end) / 2 + 0.5,
                    "y": -0.85,
                    "showarrow": False,
                    "text": "removed" if seg.kernel == 0 else f"→ {seg.kernel}×{seg.kernel}",
                    "font": {"size": 11, "color": METHOD_COLORS["layermerge"]},
                }
            )
    xs, texts, hover, ink = [], [], [], []
    for conv in chain.convs:
        pruned = kept is not None and conv.index not in kept
        if pruned:
            color = REMOVED
        elif kept is None and conv.index > 0 and conv.reducible:
            color = PRUNABLE
        else:
            color = KEPT
        shapes.append(
            {
                "type": "rect",
                "x0": conv.index - _BOX_HALF,
                "x1": conv.index + _BOX_HALF,
                "y0": 0,
                "y1": 1,
                "fillcolor": color,
                "layer": "below",
                "line": {"color": "#333", "width": 1, "dash": "dot" if pruned else "solid"},
            }
        )
        label = f"{conv.kernel}×{conv.kernel}"
        if conv.depthwise:
            label += "<br>dw"
        if conv.stride > 1:
            label += f"<br>/{conv.stride}"
        xs.append(conv.index)
        texts.append(label)
        ink.append("white" if color == KEPT else "#222")
        role = (
            "prunable (same channels, stride 1)" if conv.reducible and conv.index else "kept always"
        )
        hover.append(
            f"conv {conv.index}: {conv.name}<br>{conv.kernel}×{conv.kernel}, stride {conv.stride}, "
            f"groups {conv.groups}<br>{conv.in_channels} → {conv.out_channels} channels, input "
            f"{'×'.join(map(str, conv.input_shape))}<br>{role}"
            + (" · pruned in this solution" if pruned else "")
        )
    last = chain.last_position
    for position in sorted(chain.breaks):
        if 0 < position < last:
            shapes.append(
                {
                    "type": "line",
                    "x0": position + 0.5,
                    "x1": position + 0.5,
                    "y0": 0,
                    "y1": 1,
                    "yref": "paper",
                    "line": {"color": "#888", "dash": "dash", "width": 1},
                }
            )
    head = [op.kind.replace("adaptive_", "").replace("2d", "") for op in chain.head]
    shown = [_HEAD_WORDS.get(kind, kind) for kind in head if _HEAD_WORDS.get(kind, kind)]
    if head:  # the layers after the last conv, which no solution changes
        shapes.append(
            {
                "type": "rect",
                "x0": last + 0.6,
                "x1": last + 1.8,
                "y0": 0,
                "y1": 1,
                "fillcolor": FIXED,
                "line": {"color": "#333", "width": 1},
                "layer": "below",
            }
        )
        annotations.append(
            {
                "x": last + 1.2,
                "y": 0.5,
                "text": "<b>head</b><br>" + ", ".join(shown),
                "showarrow": False,
                "font": {"size": 10, "color": "white"},
                "hovertext": "kept as it is: " + " → ".join(head),
            }
        )
    traces = [
        {
            "type": "scatter",
            "x": xs,
            "y": [0.5] * len(xs),
            "mode": "text",
            "text": texts,
            "textfont": {"size": 11, "color": ink},
            "hovertext": hover,
            "hoverinfo": "text",
            "showlegend": False,
        },
        *_legend(solution, has_head=bool(head)),
        *_activation_markers(chain, acts),
        *_residual_arcs(chain),
        *_break_legend(chain),
    ]
    layout = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 70, "b": 10},
        "xaxis": {
            "title": {"text": "position (conv index)"},
            "range": [-0.8, last + 1.9],
            "tickvals": list(range(last + 1)),
            "showgrid": False,
            "zeroline": False,
        },
        "yaxis": {"visible": False, "range": [-1.1, 2.9]},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        "plot_bgcolor": "white",
        "shapes": shapes,
        "annotations": annotations,
    }
    return go.Figure({"data": traces, "layout": layout})


def _activation_markers(chain: Chain, acts: set[int] | None) -> list[dict]:
    """The activation slots, one legend entry per kind of marker the picture draws."""
    kinds: dict[str, tuple[str, str, list[int], list[str]]] = {
        "kept": ("circle", ACTIVE, [], []),
        "removed": ("circle-open", REMOVED, [], []),
        "linear": ("diamond-open", "#333", [], []),
    }
    for position, kind in enumerate(chain.activations):
        if kind is None:
            key, text = "linear", f"position {position}: no activation in the original (linear)"
        elif acts is not None and position not in acts:
            key, text = "removed", f"position {position}: {kind} removed (identity)"
        else:
            key, text = "kept", f"position {position}: {kind}" + (" kept" if acts else "")
        kinds[key][2].append(position)
        kinds[key][3].append(text)
    names = {
        "kept": "activation (ReLU, SiLU, …)" if acts is None else "kept activation",
        "removed": "removed activation (identity)",
        "linear": "no activation in the original (linear, e.g. a bottleneck's output)",
    }
    return [
        {
            "type": "scatter",
            "x": [p + 0.5 for p in positions],
            "y": [0.5] * len(positions),
            "mode": "markers",
            "hovertext": hover,
            "hoverinfo": "text",
            "marker": {"symbol": symbol, "size": 10, "color": color, "line": {"width": 2}},
            "name": names[key],
        }
        for key, (symbol, color, positions, hover) in kinds.items()
        if positions
    ]


def _legend(solution: Solution | None, *, has_head: bool) -> list[dict]:
    """Legend-only entries for what the picture draws as shapes: boxes, bands, breaks, head."""
    squares = [("kept conv", KEPT)]
    squares.append(("prunable conv", PRUNABLE) if solution is None else ("pruned conv", REMOVED))
    if solution is not None:
        squares.append(("merged segment (→ its kernel)", "rgba(228,87,46,0.25)"))
    if has_head:
        squares.append(("head (unchanged)", FIXED))
    return [
        {
            "type": "scatter",
            "x": [None],
            "y": [None],
            "mode": "markers",
            "name": name,
            "marker": {"symbol": "square", "size": 12, "color": color},
        }
        for name, color in squares
    ]


def _break_legend(chain: Chain) -> list[dict]:
    """The legend entry of the dashed break lines, when the picture draws any."""
    if not any(0 < p < chain.last_position for p in chain.breaks):
        return []
    return [
        {
            "type": "scatter",
            "x": [None],
            "y": [None],
            "mode": "lines",
            "name": "break (no merged segment crosses it)",
            "line": {"color": "#888", "dash": "dash", "width": 1},
        }
    ]


def _residual_arcs(chain: Chain) -> list[dict]:
    """All residual spans as one line trace of arcs (None between arcs breaks the line)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    hover: list[str | None] = []
    angles = np.linspace(0, math.pi, 24)
    for span in chain.residuals:
        left, right = span.start + 0.5, span.end + 0.5
        rise = 0.9 * min(1.0, 0.35 + 0.2 * (span.end - span.start))
        skip = "1×1 shortcut conv" if span.shortcut else "identity skip"
        xs.extend(((left + right) / 2 - (right - left) / 2 * np.cos(angles)).tolist() + [None])
        ys.extend((1.1 + rise * np.sin(angles)).tolist() + [None])
        hover.extend([f"residual ({span.start}, {span.end}]: {skip}"] * len(angles) + [None])
    if not xs:
        return []
    return [
        {
            "type": "scatter",
            "x": xs,
            "y": ys,
            "mode": "lines",
            "hovertext": hover,
            "hoverinfo": "text",
            "line": {"color": "#6c757d", "width": 1.5},
            "name": "residual span",
        }
    ]
