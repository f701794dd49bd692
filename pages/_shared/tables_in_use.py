"""The tables a session's model uses (chosen, computed here, or shipped), the budget, the DP's answers.

A table directory the user pointed the Tables page at (any folder the CLI or the app wrote, checked
by ``core.table_dirs``) wins while its chain matches the model; then computed tables; then shipped
ones, which fit when the manifest lists the model, width and input size and, where their meta
records one, the same weights digest. Tables made for another chain are refused with a message,
never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.dp import FrontierPoint, list_methods
from core.errors import TableMismatchError
from core.table_dirs import TableDirectory, check_tables_for, find_table_directories
from core.tables import MANIFEST_PATH, Tables, read_manifest
from pages._shared import caches, state
from pages._shared.paths import APP_RUNS, ROOT, table_roots
from pages._shared.state import ModelChoice

__all__ = [
    "TablesInUse",
    "tables_in_use",
    "computed_tables_dir",
    "shipped_tables_dir",
    "choose_tables",
    "forget_chosen_tables",
    "chosen_tables_dir",
    "table_directories",
    "budget_ms",
    "frontiers",
    "dp_states",
]

BUDGET_SLACK = 1e-6  # relative; see budget_ms
TABLE_FILES = ("latency.csv", "importance.csv", "meta.json")
CHOSEN = "chosen_tables"  # session key: {model key: the table directory the user chose}


@dataclass(frozen=True)
class TablesInUse:
    """Tables loaded for the current model, and where they came from."""

    tables: Tables
    directory: Path
    source: str  # "chosen" (a directory the user named), "computed" (runs/app/tables/), "shipped"

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


def chosen_tables_dir(which: ModelChoice | None = None) -> Path | None:
    """The table directory this session chose for the model (Tables page), if any."""
    which = which or state.choice()
    chosen = st.session_state.get(CHOSEN, {}).get(which.key)
    return None if chosen is None else Path(chosen)


def choose_tables(directory: str | Path, which: ModelChoice | None = None) -> TablesInUse:
    """Use the tables in ``directory`` for the model from now on, if their chain is its chain.

    A relative path is read from the repository root. Nothing changes when the tables are
    refused: the tables in use stay in use.

    Raises:
        TableMismatchError: one line saying what is wrong with ``directory`` and what is
            accepted (:func:`core.table_dirs.check_tables_for`).
    """
    which = which or state.choice()
    path = Path(str(directory).strip()).expanduser()
    if str(directory).strip() and not path.is_absolute():
        path = ROOT / path  # as the captions show paths: relative to the repository
    tables = check_tables_for(path if str(directory).strip() else "", caches.traced(which).digest())
    path = path.resolve()
    st.session_state.setdefault(CHOSEN, {})[which.key] = str(path)
    return TablesInUse(tables, path, "chosen")


def forget_chosen_tables(which: ModelChoice | None = None) -> None:
    """Go back to the model's computed or shipped tables (a new computation, the user's wish)."""
    which = which or state.choice()
    st.session_state.get(CHOSEN, {}).pop(which.key, None)


def table_directories(which: ModelChoice | None = None) -> list[TableDirectory]:
    """The table directories under ``runs/`` and ``cached_tables/`` made for the model's chain."""
    which = which or state.choice()
    return find_table_directories(table_roots(), caches.traced(which).digest())


def tables_in_use(which: ModelChoice | None = None) -> TablesInUse | None:
    """The tables for the session's model: the chosen ones, its computed ones, else shipped ones.

    A chosen directory that no longer holds tables of the chain (deleted, rewritten for another
    network) is passed over, and the others are used.

    Raises:
        TableMismatchError: a table directory exists but is corrupt or was made for another chain.
    """
    which = which or state.choice()
    chosen = _chosen_tables(which)
    if chosen is not None:
        return chosen
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


def _chosen_tables(which: ModelChoice) -> TablesInUse | None:
    """The chosen directory's tables while it still holds tables of the model's chain."""
    directory = chosen_tables_dir(which)
    if directory is None:
        return None
    try:
        stamp = tuple((directory / name).stat().st_mtime_ns for name in TABLE_FILES)
        tables = caches.read(str(directory), stamp)
        _check_chain(tables, directory, which)
    except (OSError, TableMismatchError):
        return None
    return TablesInUse(tables, directory, "chosen")


def _check_chain(tables: Tables, directory: Path, which: ModelChoice) -> None:
    """Refuse tables made for another chain (by the digest of the family's traced form)."""
    recorded = tables.meta.get("chain_digest")
    digest = caches.traced(which).digest()
    if recorded is not None and recorded != digest:
        raise TableMismatchError(
            f"the tables in {directory} were measured for another chain (digest {recorded}, "
            f"this model's is {digest}); recompute them on the Tables page"
        )
