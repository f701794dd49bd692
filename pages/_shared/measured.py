"""Measured points for the Budget page: shipped calibration results and this session's own.

Three sources, each a measurement the chart overlays on the predicted frontiers:

- ``calibration.json`` beside the tables (``cached_tables/<model>/calibration.json``), written by
  the calibration benchmark (docs/calibration.md): a JSON list of objects with ``method``,
  ``budget`` (a fraction of the original table latency), ``latency_ms`` (the solution's table
  latency), ``predicted`` (its predicted quality), ``surgery`` and ``finetuned`` (its measured
  quality after surgery alone and after the standard finetune; null when not measured), and
  optionally ``measured_speedup`` and ``objective`` (``additive`` when absent).
- The session's surgery jobs (:mod:`pages._shared.jobs_surgery`).
- The session's finetune jobs: their quality before and after finetuning, read by the panel.

x is the measured speed-up where one was timed, else the predicted one (the hover says which).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import LayerMergeError
from core.solution import Solution
from pages._shared import state
from pages._shared.frontier_view import FrontierView
from pages._shared.jobs import registry
from pages._shared.jobs_surgery import SURGERY, original_quality
from pages._shared.panels import Panel
from pages._shared.tables_in_use import TablesInUse

__all__ = [
    "CALIBRATION_FILE",
    "Measured",
    "read_calibration",
    "calibration_points",
    "session_points",
    "finetuned_of",
    "speed_of",
]

CALIBRATION_FILE = "calibration.json"
SHIPPED, SESSION = "shipped calibration", "this session"
STAGES = ("surgery", "finetuned", "original")


@dataclass(frozen=True)
class Measured:
    """One measured point: a solution's quality after a stage, where the chart puts it."""

    method: str  # a DP method, or "original"
    stage: str  # "surgery", "finetuned" or "original"
    value: float  # the measured quality
    speedup: float  # x: measured when ``speedup_measured``, else predicted
    speedup_measured: bool
    predicted: float | None  # the solution's predicted quality, for the hover
    source: str  # SHIPPED or SESSION


def read_calibration(directory: Path) -> list[dict[str, Any]]:
    """The calibration rows beside the tables in ``directory``; [] when there is no file.

    Raises:
        LayerMergeError: the file is not the documented schema (the message names the row).
    """
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        return []
    return list(_read(str(path), path.stat().st_mtime_ns))


def calibration_points(view: FrontierView, used: TablesInUse) -> list[Measured]:
    """The shipped calibration's measured points, for the frontier's objective only."""
    points: list[Measured] = []
    objective = _objective(view)
    for row in read_calibration(used.directory):
        if row.get("objective", "additive") != objective or row["method"] not in view.curves:
            continue
        measured = _number(row.get("measured_speedup"))
        speedup = measured if measured is not None else view.speedup(row["latency_ms"])
        for stage in ("surgery", "finetuned"):
            value = _number(row.get(stage))
            if value is not None:
                points.append(
                    Measured(
                        row["method"], stage, value, speedup, measured is not None,
                        _number(row.get("predicted")), SHIPPED,
                    )
                )  # fmt: skip
    return points


def session_points(view: FrontierView, used: TablesInUse, panel: Panel) -> list[Measured]:
    """This session's measured points on these tables: surgery jobs, finetune jobs, the original."""
    points: list[Measured] = []
    seen: set[str] = set()
    for key, stored in st.session_state.get("measurements", {}).items():
        solution = stored.get("solution") if key.startswith(f"{SURGERY}:") else None
        if solution is None or stored.get("quality") is None:
            continue
        if solution.tables_digest == used.tables.digest:
            points.append(_point(view, panel, solution, "surgery", stored["quality"]))
            seen.add(state.solution_key(solution))
    for solution, result in _finetuned(used):
        before, after = panel.finetune_quality(result)
        if before is not None and state.solution_key(solution) not in seen:
            points.append(_point(view, panel, solution, "surgery", before))
        if after is not None:
            points.append(_point(view, panel, solution, "finetuned", after))
    original = original_quality()
    if original is not None:
        points.append(Measured("original", "original", original, 1.0, True, None, SESSION))
    return points


def finetuned_of(solution: Solution, panel: Panel) -> float | None:
    """The quality after finetuning of ``solution`` in this session's latest finetune of it."""
    key = state.solution_key(solution)
    found = None
    for done, result in _finetuned(None):
        if state.solution_key(done) == key:
            found = panel.finetune_quality(result)[1]
    return found


def speed_of(solution: Solution, panel: Panel) -> dict[str, Any] | None:
    """The session's timing of ``solution``'s merged network (``merged_ms``, measured speed-up)."""
    return state.measurement(panel.speed_measurement, solution)


def _point(
    view: FrontierView, panel: Panel, solution: Solution, stage: str, value: float
) -> Measured:
    speed = speed_of(solution, panel)
    measured = _number(speed.get("measured_speedup")) if speed else None
    speedup = measured if measured is not None else view.speedup_of(solution)
    return Measured(
        solution.method, stage, float(value), speedup, measured is not None,
        solution.predicted, SESSION,
    )  # fmt: skip


def _finetuned(used: TablesInUse | None) -> list[tuple[Solution, dict[str, Any]]]:
    """(solution, result) of this session's completed finetune jobs on its current model."""
    found = []
    for job_id in state.finetune_history():
        job = registry().get(job_id)
        if job is None or job.status != "done" or not isinstance(job.result, dict):
            continue
        solution = job.config.get("solution")
        if job.result.get("status") != "completed" or job.config.get("choice") != state.choice():
            continue
        if used is None or solution.tables_digest == used.tables.digest:
            found.append((solution, job.result))
    return found


def _objective(view: FrontierView) -> str:
    curves = [c for c in view.curves.values() if c.points]
    return curves[0].points[0].objective if curves else "additive"


@st.cache_resource(show_spinner=False, max_entries=16)
def _read(path: str, stamp: int) -> tuple[dict[str, Any], ...]:
    """The validated rows of a calibration file (read again only when it changes)."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LayerMergeError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(rows, list):
        raise LayerMergeError(f"{path} must hold a JSON list of rows, not {type(rows).__name__}")
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("method"), str):
            raise LayerMergeError(f"{path}, row {number}: an object with a 'method' is needed")
        latency = _number(row.get("latency_ms"))
        if latency is None or latency <= 0:
            raise LayerMergeError(f"{path}, row {number}: 'latency_ms' must be a number above 0")
        for name in ("budget", "predicted", "surgery", "finetuned", "measured_speedup"):
            if row.get(name) is not None and _number(row.get(name)) is None:
                raise LayerMergeError(
                    f"{path}, row {number}: {name!r} must be a number or null, "
                    f"got {row.get(name)!r}"
                )
    return tuple(rows)


def _number(value: Any) -> float | None:
    """A finite float, or None (absent, null, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
