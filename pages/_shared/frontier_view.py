"""The three methods' frontiers as the Budget page draws them, computed once per table content.

x is the predicted speed-up of the whole network (``core.speed.predict_speed`` on each point's
solution, the one speed model of DESIGN.md), y the predicted quality: the original's measured value plus the
solution's ΣΔ (accuracy for a classifier, ε-loss for a diffusion UNet), one scale for every
method. Where the tables record no original value, y is ΣΔ itself, and where they record no Δ at
all, the objective (the chart then says so). The slider reads each method's lowest feasible
budget from here, so a slider move only picks off cached arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from core.dp import FrontierPoint, list_methods, objective_scale
from core.families import family_for
from core.solution import Solution
from core.speed import overhead_scale, predict_speed, speedup_from_totals
from pages._shared import state
from pages._shared.figures import TOP_METHOD
from pages._shared.tables_in_use import TablesInUse, budget_ms, frontiers

__all__ = ["Curve", "FrontierView", "frontier_view", "lowest_percent", "TOP_METHOD"]

PICK_SLACK = 1e-9  # relative, as core.dp.pick: a budget admits latencies up to budget·(1 + slack)
TWIN_TOLERANCE = 1e-9  # relative: two methods' points this close are the same solution's point


@dataclass(frozen=True, eq=False)
class Curve:
    """One method's frontier: its points by increasing latency, with the chart's x and y."""

    method: str
    points: tuple[FrontierPoint, ...]
    latency_ms: np.ndarray  # (n,)
    speedup: np.ndarray  # (n,) predicted, of the whole network
    value: np.ndarray  # (n,) what the y axis shows (see FrontierView.value_kind)
    lowest_percent: int | None  # the lowest integer budget % with a solution; None: none ≤ 100%

    def index_of(self, solution: Solution) -> int:
        """The index of the point whose solution ``solution`` is (nearest latency)."""
        return int(np.argmin(np.abs(self.latency_ms - solution.latency_ms)))

    def twin(self, latency_ms: float, value: float) -> int | None:
        """The index of this curve's point at the same latency and value, if it has one."""
        if not len(self.points):
            return None
        index = int(np.argmin(np.abs(self.latency_ms - latency_ms)))
        scale = max(abs(latency_ms), abs(value), 1.0)
        same_ms = abs(self.latency_ms[index] - latency_ms) <= TWIN_TOLERANCE * scale
        same_value = abs(self.value[index] - value) <= TWIN_TOLERANCE * scale
        return index if same_ms and same_value else None


@dataclass(frozen=True, eq=False)
class FrontierView:
    """Every method's curve on one pair of tables, with how to read the y axis."""

    curves: dict[str, Curve]  # in list_methods() order
    original_ms: float  # the keep-everything table sum (the base of budget percentages)
    network_ms: float | None  # the whole original network, measured (meta.json)
    quality: str  # the family's quality figure: "accuracy", "ε-loss"
    higher_is_better: bool
    value_kind: str  # "predicted" (original + ΣΔ), "delta" (ΣΔ only), "distortion" or "objective"
    unit: str  # "%" for accuracy, "" otherwise
    meta: dict = field(default_factory=dict)  # the tables' meta.json: what the speed model reads

    @property
    def methods(self) -> list[str]:
        return list(self.curves)

    @property
    def value_label(self) -> str:
        """What the y axis shows, in words."""
        better = "higher" if self.higher_is_better else "lower"
        unit = f" ({self.unit})" if self.unit else ""
        if self.value_kind == "predicted":
            return f"{self.quality}{unit}: lines predicted, markers measured; {better} is better"
        if self.value_kind == "delta":
            return f"predicted ΣΔ {self.quality} over segments{unit}, signed: higher is better"
        if self.value_kind == "distortion":
            return (
                "−Σ distortion of the logits over segments (data-light importance: no "
                f"{self.quality} measured, none predicted); higher is better"
            )
        return "objective (sum over segments; no Δ recorded in these tables)"

    @property
    def value_name(self) -> str:
        """What one y value is called beside a solution (a metric label, a column name)."""
        if self.value_kind == "predicted":
            return f"predicted {self.quality}"
        if self.value_kind == "delta":
            return f"predicted ΣΔ {self.quality}"
        if self.value_kind == "distortion":
            return "−Σ distortion"
        return "objective"

    @property
    def slider_min(self) -> int:
        """Where the slider starts: the lowest budget % at which some method is feasible."""
        lowest = [c.lowest_percent for c in self.curves.values() if c.lowest_percent is not None]
        return min(min(lowest, default=99), 99)  # a slider needs min < max (100)

    def speedup(self, latency_ms: float) -> float:
        """The predicted speed-up at a table latency with no solution behind it (a budget line):
        the speed model from sums, without the structure a solution would change."""
        return speedup_from_totals(
            latency_ms, self.original_ms, self.network_ms, overhead_scale(self.meta)
        )

    def speedup_of(self, solution: Solution) -> float:
        """The predicted speed-up of ``solution``'s whole network (``core.speed``)."""
        return predict_speed(self.meta, solution).speedup

    def value_of(self, solution: Solution) -> float:
        """The y value of ``solution`` (its predicted quality, as the curves show it)."""
        if self.value_kind == "predicted" and solution.predicted is not None:
            return float(solution.predicted)
        return float(solution.importance)

    def default_percent(self, method: str) -> int:
        """A sensible budget for ``method``: the default, raised to where the method is feasible."""
        curve = self.curves.get(method)
        lowest = curve.lowest_percent if curve is not None else None
        return max(state.DEFAULT_BUDGET_PERCENT, lowest or self.slider_min, self.slider_min)

    def format_value(self, value: float | None) -> str:
        """A y value as the page writes it ("not measured" when there is none)."""
        if value is None or not math.isfinite(value):
            return "not measured"
        return f"{value:.2f}{self.unit}" if self.unit else f"{value:.4g}"


def frontier_view(used: TablesInUse) -> FrontierView:
    """The view of the tables in use, built once per table content and family (cached)."""
    task = family_for(state.choice().name).task
    return _view(used.key, task.quality, task.higher_is_better, used)


def lowest_percent(fastest_ms: float, used: TablesInUse) -> int | None:
    """The lowest integer budget % whose budget admits ``fastest_ms``, or None above 100%.

    Uses the page's own ``budget_ms`` and core.dp.pick's slack, so the slider's answer at that
    percentage is never "infeasible".
    """
    if used.original_ms <= 0 or not math.isfinite(fastest_ms):
        return None
    start = max(1, math.floor(fastest_ms / used.original_ms * 100) - 1)
    for percent in range(start, 101):
        if fastest_ms <= budget_ms(used, percent) * (1 + PICK_SLACK):
            return percent
    return None


@st.cache_resource(show_spinner=False, max_entries=16)
def _view(key: str, quality: str, higher_is_better: bool, _used: TablesInUse) -> FrontierView:
    fronts = frontiers(_used)
    meta = _used.tables.meta
    network_ms = float(meta["network_latency_ms"]) if meta.get("network_latency_ms") else None
    all_points = [p for points in fronts.values() for p in points]
    if objective_scale(_used.tables).metric == "distortion":
        kind = "distortion"
    elif all_points and all(p.predicted is not None for p in all_points):
        kind = "predicted"
    elif all_points and all(p.objective == "additive" for p in all_points):
        kind = "delta"
    else:
        kind = "objective"
    view = FrontierView(
        curves={},
        original_ms=_used.original_ms,
        network_ms=network_ms,
        meta=dict(meta),
        quality=quality,
        higher_is_better=higher_is_better,
        value_kind=kind,
        unit="%" if quality == "accuracy" and kind in ("predicted", "delta") else "",
    )
    for method in list_methods():
        view.curves[method] = _curve(method, fronts.get(method, []), view, _used)
    return view


def _curve(
    method: str, points: Sequence[FrontierPoint], view: FrontierView, used: TablesInUse
) -> Curve:
    latency = np.array([p.latency_ms for p in points], dtype=float)
    if view.value_kind == "predicted":
        value = np.array([p.predicted for p in points], dtype=float)
    else:
        value = np.array([p.importance for p in points], dtype=float)
    return Curve(
        method=method,
        points=tuple(points),
        latency_ms=latency,
        speedup=np.array([view.speedup_of(p.solution()) for p in points], dtype=float),
        value=value,
        lowest_percent=lowest_percent(float(latency[0]), used) if len(points) else None,
    )
