"""The tables a session's model uses (computed here, or shipped), the budget, and the DP's answers.

Computed tables win over shipped ones; shipped ones fit when the manifest lists the model, width
and input size and, where their meta records one, the same weights digest. Tables made for another
chain are refused with a message, never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.dp import FrontierPoint, list_methods, pick
from core.errors import InfeasibleBudgetError, TableMismatchError
from core.solution import Solution
from core.tables import MANIFEST_PATH, Tables, read_manifest
from pages._shared import caches, state
from pages._shared.paths import APP_RUNS
from pages._shared.state import ModelChoice

__all__ = [
    "TablesInUse",
    "tables_in_use",
    "computed_tables_dir",
    "shipped_tables_dir",
    "budget_ms",
    "frontiers",
    "dp_states",
    "solution_or_default",
]

BUDGET_SLACK = 1e-6  # relative; see budget_ms
TABLE_FILES = ("latency.csv", "importance.csv", "meta.json")


@dataclass(frozen=True)
class TablesInUse:
    """Tables loaded for the current model, and where they came from."""

    tables: Tables
    directory: Path
    source: str  # "shipped" (cached_tables/) or "computed" (runs/app/tables/)

    @property
    def original_ms(self) -> float:
        return self.tables.original_latency_ms

    @property
    def key(self) -> str:
        """Content key of the tables (the frontier caches use it)."""
        return f"{self.directory}:{self.tables.digest}"


def computed_tables_dir(which: ModelChoice | None = None) -> Path:
    """Where the app writes tables it computes for a model (content-keyed, survives reloads)."""
    which = which or state.choice()
    digest = caches.bundle(which).weights_digest
    data = which.data_spec.replace("/", "_").replace(":", "-")[-40:]
    name = which.name.replace("/", "_")[-60:]  # a diffusers:PATH model names a folder
    return APP_RUNS / "tables" / f"{name}-w{which.width:g}-s{which.input_size}-{digest}-{data}"


def shipped_tables_dir(which: ModelChoice | None = None) -> Path | None:
    """The shipped table directory of the manifest matching the model, width and input size."""
    which = which or state.choice()
    for entry in read_manifest():
        if (
            entry.get("model") == which.name
            and math.isclose(float(entry.get("width", 1.0)), which.width)
            and int(entry.get("input_size", -1)) == which.input_size
        ):
            directory = Path(entry["dir"])
            return directory if directory.is_absolute() else MANIFEST_PATH.parent / directory
    return None


def tables_in_use(which: ModelChoice | None = None) -> TablesInUse | None:
    """The tables for the session's model: its computed ones, else shipped ones that fit it.

    Raises:
        TableMismatchError: a table directory exists but is corrupt or was made for another chain.
    """
    which = which or state.choice()
    candidates = [(computed_tables_dir(which), "computed")]
    shipped = shipped_tables_dir(which)
    if shipped is not None:
        candidates.append((shipped, "shipped"))
    for directory, source in candidates:
        if not all((directory / name).is_file() for name in TABLE_FILES):
            continue
        stamp = tuple((directory / name).stat().st_mtime_ns for name in TABLE_FILES)
        tables = caches.read(str(directory), stamp)
        recorded = tables.meta.get("weights_digest")  # importance depends on the weights
        if source == "shipped" and recorded not in (None, caches.bundle(which).weights_digest):
            continue
        _check_chain(tables, directory, which)
        return TablesInUse(tables, directory, source)
    return None


def budget_ms(used: TablesInUse, percent: float) -> float:
    """The budget in ms for a share of the original table latency.

    A relative slack of 1e-6 keeps 100% feasible: meta.json's rounded original latency and the
    keep-everything solution's own sum differ in the last digits.
    """
    return used.original_ms * percent / 100 * (1 + BUDGET_SLACK)


def frontiers(used: TablesInUse) -> dict[str, list[FrontierPoint]]:
    """Every method's exact frontier on the tables, computed once per table content."""
    return {method: caches.frontier_of(used.key, method, used.tables) for method in list_methods()}


def dp_states(used: TablesInUse, method: str) -> list[tuple[int, float, float]]:
    """The DP's live (position, latency, importance) cells on these tables (Learn page)."""
    return caches.prefix_states(used.key, method, used.tables)


def solution_or_default() -> Solution | None:
    """The session's solution; without one, the DP's answer at the Budget page's budget.

    The budget is the Budget page's when it was chosen on these tables, else the page's default
    for them (:meth:`FrontierView.default_percent`).
    """
    from pages._shared import budget_state  # both build on this module
    from pages._shared.frontier_view import frontier_view

    current = state.solution()
    if current is not None:
        return current
    used = tables_in_use()
    if used is None:
        return None
    view = frontier_view(used)
    values = st.session_state
    method = values.get(budget_state.METHOD)
    method = method if method in view.curves else view.methods[0]
    percent = values.get(budget_state.BUDGET)
    if values.get(budget_state.BUDGET_TABLES) != used.key or percent is None:
        percent = view.default_percent(method)
    try:
        current = pick(frontiers(used)[method], budget_ms(used, percent))
    except InfeasibleBudgetError:
        return None
    state.set_solution(current)
    return current


def _check_chain(tables: Tables, directory: Path, which: ModelChoice) -> None:
    """Refuse tables made for another chain (by the digest of the family's traced form)."""
    recorded = tables.meta.get("chain_digest")
    digest = caches.traced(which).digest()
    if recorded is not None and recorded != digest:
        raise TableMismatchError(
            f"the tables in {directory} were measured for another chain (digest {recorded}, "
            f"this model's is {digest}); recompute them on the Tables page"
        )
