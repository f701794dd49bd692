"""Finetune curves: loss above, quality below, on one step axis, beside the original's quality.

Each takes a job's plain records (the worker's history and its interim evaluations) and returns a
new ``go.Figure``; none imports Streamlit. Loss and quality sit in two panels with their own
titled axes, so they are never confused, and every axis has round ticks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["accuracy_curves", "eps_loss_curves", "step_tick"]

LOSS, TRAIN, TEST, ORIGINAL = "#4c72b0", "#9ab0d6", "#e4572e", "#333333"
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def step_tick(last_step: int) -> int:
    """A round step between x ticks (1, 2, 5, 10, 20, 50, ...) giving at most about 8 ticks."""
    rough = max(1.0, last_step / 8)
    power = 10 ** math.floor(math.log10(rough))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= rough))


def accuracy_curves(
    history: Sequence[Mapping[str, Any]],
    tests: Sequence[tuple[int, float]],
    *,
    reference: float | None,
    total_steps: int,
    test_images: int | None = None,
) -> go.Figure:
    """A classifier finetune: training loss; training and test accuracy, the original's as a line.

    ``tests`` are (step, test accuracy %) pairs (step 0: merged before finetuning); ``reference``
    is the original network's test accuracy.
    """
    figure = _two_panels("training loss (cross-entropy)", "accuracy (%)")
    steps = [row["step"] for row in history]
    figure.add_trace(
        go.Scatter(x=steps, y=[r["loss"] for r in history], name="training loss", line_color=LOSS),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=steps,
            y=[r["accuracy"] for r in history],
            name="training-batch accuracy",
            line={"color": TRAIN, "width": 1},
        ),
        row=2,
        col=1,
    )
    held_out = "test accuracy" + (f" ({test_images:,} held-out images)" if test_images else "")
    figure.add_trace(
        go.Scatter(
            x=[step for step, _ in tests],
            y=[value for _, value in tests],
            name=held_out,
            mode="lines+markers",
            line={"color": TEST, "width": 2.5},
            hovertemplate="step %{x}: %{y:.2f}%<extra>test</extra>",
        ),
        row=2,
        col=1,
    )
    if reference is not None:
        _reference(figure, reference, f"original: {reference:.2f}%")
    figure.update_yaxes(ticksuffix="%", tickformat=".0f", row=2, col=1)
    return _finish(figure, total_steps)


def eps_loss_curves(
    history: Sequence[Mapping[str, Any]], *, reference: float | None, total_steps: int
) -> go.Figure:
    """A diffusion finetune: training ε-loss; holdout ε-loss where measured, the original's too."""
    figure = _two_panels("training ε-loss (MSE per pixel)", "holdout ε-loss (sum over pixels)")
    figure.add_trace(
        go.Scatter(
            x=[r["step"] for r in history],
            y=[r["loss"] for r in history],
            name="training ε-loss",
            line_color=LOSS,
        ),
        row=1,
        col=1,
    )
    marks = [r for r in history if r.get("holdout") is not None]
    figure.add_trace(
        go.Scatter(
            x=[r["step"] for r in marks],
            y=[r["holdout"] for r in marks],
            name="holdout ε-loss (lower is better)",
            mode="lines+markers",
            line={"color": TEST, "width": 2.5},
        ),
        row=2,
        col=1,
    )
    if reference is not None:
        _reference(figure, reference, f"original: {reference:.4g}")
    return _finish(figure, total_steps)


def _two_panels(top: str, bottom: str) -> go.Figure:
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    figure.update_yaxes(title_text=top, tickformat="~g", nticks=5, row=1, col=1)
    figure.update_yaxes(title_text=bottom, nticks=6, row=2, col=1)
    return figure


def _reference(figure: go.Figure, value: float, text: str) -> None:
    figure.add_hline(
        y=value,
        line={"dash": "dash", "color": ORIGINAL, "width": 1.5},
        annotation_text=text,
        annotation_position="bottom right",
        row=2,
        col=1,
    )
    figure.add_trace(  # the dashed line's legend entry
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            name="original network",
            line={"dash": "dash", "color": ORIGINAL},
        ),
        row=2,
        col=1,
    )


def _finish(figure: go.Figure, total_steps: int) -> go.Figure:
    tick = step_tick(total_steps)
    figure.update_xaxes(range=[0, max(total_steps, 1) * 1.01], dtick=tick, tickformat="d")
    figure.update_xaxes(title_text="optimizer step", row=2, col=1)
    figure.update_layout(
        height=440,
        margin=_MARGIN,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        hovermode="x unified",
    )
    return figure
