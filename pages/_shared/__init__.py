"""What every page shares: the session's choices, cached core calls, and the sidebar frame.

This package is never registered as a page. Caching lives here only (STYLE.md convention 1):
models, chains, tables and frontiers are ``st.cache_resource`` singletons shared by all sessions,
keyed by content (registry name, width, input size, weights digest, table digest). Nothing here
mutates a cached object: core's builders return new modules (``build_training_network``,
``merge_model``), and a module that would be changed is deep-copied first.

Per-session state (never shared): the :class:`ModelChoice`, uploaded weights, the chosen tables and
solution, and the ids of the session's background jobs (also kept in ``st.query_params`` so a reload
finds them again).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
from torch import nn

from core.chain import Chain, trace_chain
from core.data import DataSplits, load_data, parse_data_spec
from core.dp import FrontierPoint, frontier, list_methods, pick
from core.errors import InfeasibleBudgetError, LayerMergeError, TableMismatchError
from core.families.unet.unet import UNetBundle, is_unet_name
from core.models import ModelBundle, build_model, default_input_size
from core.solution import Solution
from core.tables import MANIFEST_PATH, Tables, read_manifest, read_tables

__all__ = [
    "APP_RUNS",
    "page_list",
    "frame_guard",
    "DEFAULT_MODEL",
    "ModelChoice",
    "TablesInUse",
    "init_session",
    "sidebar_frame",
    "choice",
    "set_choice",
    "bundle",
    "private_model",
    "chain",
    "data_splits",
    "tables_in_use",
    "computed_tables_dir",
    "frontiers",
    "guarded",
    "require",
    "solution",
    "set_solution",
    "solution_key",
    "short_path",
    "sidebar_solution",
    "solution_or_default",
    "budget_ms",
    "DEFAULT_BUDGET_PERCENT",
]

ROOT = Path(__file__).resolve().parent.parent.parent
# Computed tables and finetune checkpoints (git-ignored); LAYERMERGE_APP_RUNS moves them (tests).
APP_RUNS = Path(os.environ.get("LAYERMERGE_APP_RUNS", ROOT / "runs" / "app"))
DEFAULT_MODEL = "digits_resnet"
DEFAULT_BUDGET_PERCENT = 60  # the Budget slider's starting point
BUDGET_SLACK = 1e-6  # relative; see budget_ms
TABLE_FILES = ("latency.csv", "importance.csv", "meta.json")
JOB_PARAMS = {"tables": "tables_job", "finetune": "finetune_job"}  # job kind -> query parameter

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelChoice:
    """What the session compresses: a model, its weights and the data to finetune on."""

    name: str = DEFAULT_MODEL
    width: float = 1.0
    input_size: int = 32
    weights_key: str = "default"  # "default" (seeded / shipped) or the digest of uploaded bytes
    weights_label: str = "default"  # what the sidebar calls the weights (a file name)
    data_spec: str = "digits"

    @property
    def key(self) -> tuple[str, float, int, str]:
        """Cache key of the built model."""
        return (self.name, self.width, self.input_size, self.weights_key)

    @property
    def label(self) -> str:
        if is_unet_name(self.name):  # a diffusion UNet: its config fixes the size, no width
            return f"{self.name} at {self.input_size}px"
        return f"{self.name} ×{self.width:g} at {self.input_size}px"


@dataclass(frozen=True)
class TablesInUse:
    """Tables loaded for the current model, and where they came from."""

    tables: Tables
    directory: Path
    source: str  # "shipped" (cached_tables/) or "computed" (runs/app/tables/)

    @property
    def original_ms(self) -> float:
        return self.tables.original_latency_ms


# ----------------------------------------------------------------------------- navigation


def page_list() -> dict[str, list[st.Page]]:
    """The app's pages, by section (app.py registers them with st.navigation)."""
    folder = ROOT / "pages"
    return {
        "Compress": [
            st.Page(
                folder / "model.py", title="Model", icon=":material/account_tree:", default=True
            ),
            st.Page(folder / "tables.py", title="Tables", icon=":material/grid_on:"),
            st.Page(folder / "budget.py", title="Budget", icon=":material/speed:"),
            st.Page(folder / "finetune.py", title="Finetune", icon=":material/model_training:"),
            st.Page(folder / "export.py", title="Export", icon=":material/download:"),
        ],
        "Understand": [st.Page(folder / "learn.py", title="Learn", icon=":material/school:")],
    }


def frame_guard() -> None:
    """Make sure a page runs inside app.py's frame; every page calls this first.

    Because the folder is named ``pages/``, Streamlit starts in its legacy mode, in which the
    server's very first request for a page URL (say a bookmarked ``/budget``) runs that file alone,
    without app.py. Registering the navigation once leaves that mode for good; the rerun then goes
    through app.py to the same page.
    """
    if "choice" in st.session_state:
        return
    st.navigation(page_list(), position="hidden")
    st.rerun()


# ----------------------------------------------------------------------------- session state


def init_session() -> None:
    """Session defaults, and the jobs a reloaded page carries in its URL.

    A reload starts a new session; when its URL names a finetune job, the session takes that job's
    model, weights and solution back, so the pages around the job's result make sense again.
    """
    state = st.session_state
    fresh = "choice" not in state
    if fresh:
        state.choice = ModelChoice(input_size=default_input_size(DEFAULT_MODEL))
        state.state_dict = None  # uploaded weights of this session only
    state.setdefault("solution", None)
    state.setdefault("jobs", {})
    state.setdefault("measurements", {})
    for kind, param in JOB_PARAMS.items():
        job_id = state.jobs.get(kind) or st.query_params.get(param)
        if not job_id:
            continue
        state.jobs[kind] = job_id
        if st.query_params.get(param) != job_id:
            st.query_params[param] = job_id  # page switches clear the URL; put it back
        if fresh and kind == "finetune":
            _adopt(job_id)


def _adopt(job_id: str) -> None:
    from pages._shared.jobs import registry

    job = registry().get(job_id)
    if job is None or "choice" not in job.config:
        return
    st.session_state.choice = job.config["choice"]
    st.session_state.state_dict = job.config.get("state_dict")
    st.session_state.solution = job.config.get("solution")


def choice() -> ModelChoice:
    return st.session_state.choice


def set_choice(new: ModelChoice, state_dict: dict[str, Any] | None) -> None:
    """Switch the session to another model: its solution and measurements no longer apply."""
    st.session_state.choice = new
    st.session_state.state_dict = state_dict
    st.session_state.solution = None
    st.session_state.measurements = {}
    st.session_state.pop("picked", None)


def solution() -> Solution | None:
    return st.session_state.get("solution")


def set_solution(value: Solution | None) -> None:
    st.session_state.solution = value


def solution_key(value: Solution) -> str:
    """A short content key of a solution (measurements and jobs are stored under it)."""
    return json.dumps(
        [value.method, list(value.kept_activations), [s.to_dict() for s in value.segments]],
        sort_keys=True,
    )


def remember_job(kind: str, job_id: str | None) -> None:
    """Keep a job id in the session and in the URL (a reload finds the job again)."""
    param = JOB_PARAMS[kind]
    if job_id is None:
        st.session_state.jobs.pop(kind, None)
        st.query_params.pop(param, None)
    else:
        st.session_state.jobs[kind] = job_id
        st.query_params[param] = job_id


def job_id(kind: str) -> str | None:
    return st.session_state.jobs.get(kind)


# ----------------------------------------------------------------------------- cached core calls


@st.cache_resource(show_spinner="Building the model…", max_entries=8)
def _build(key: tuple[str, float, int, str], _state_dict: dict[str, Any] | None) -> ModelBundle:
    name, width, input_size, _ = key
    return build_model(name, width=width, input_size=input_size, weights=_state_dict)


@st.cache_resource(show_spinner="Tracing the chain…", max_entries=16)
def _trace(key: tuple[str, float, int, str], _model: nn.Module, input_size: int) -> Chain:
    return trace_chain(_model, input_size)


@st.cache_resource(show_spinner="Loading the data…", max_entries=4)
def _load_data(spec: str, input_size: int) -> DataSplits:
    return load_data(spec, input_size=input_size)


@st.cache_resource(show_spinner="Reading the tables…", max_entries=16)
def _read_tables(directory: str, stamp: tuple[int, ...]) -> Tables:
    return read_tables(directory)


@st.cache_resource(show_spinner="Computing the frontiers…", max_entries=32)
def _frontier(digest: str, method: str, _tables: Tables) -> list[FrontierPoint]:
    return frontier(_tables, method=method)


def bundle(which: ModelChoice | None = None) -> ModelBundle | UNetBundle:
    """The session's built model (shared: never modify ``bundle().model``; see private_model).

    A diffusion UNet comes as core's UNetBundle (``.model``, ``.weights_digest``,
    ``.weights_source``, ``.weights_note`` as a ModelBundle has them).
    """
    which = which or choice()
    if is_unet_name(which.name):
        from pages._shared.diffusion import unet_bundle

        return unet_bundle(which)
    state_dict = st.session_state.get("state_dict") if which.weights_key != "default" else None
    return _build(which.key, state_dict)


def private_model(which: ModelChoice | None = None) -> nn.Module:
    """A deep copy of the session's model, safe to change (train, finetune, load weights)."""
    return copy.deepcopy(bundle(which).model)


def chain(which: ModelChoice | None = None) -> Chain:
    """The session's chain (of a UNet: its UNetChain's generic chain)."""
    which = which or choice()
    if is_unet_name(which.name):
        from pages._shared.diffusion import unet_chain

        return unet_chain(which).chain
    return _trace(which.key, bundle(which).model, which.input_size)


def data_splits(spec: str | None = None, input_size: int | None = None) -> DataSplits:
    """The dataset, loaded once per (spec, size) for all sessions (DataError on bad specs)."""
    which = choice()
    spec = spec or which.data_spec
    return _load_data(str(parse_data_spec(spec)), input_size or which.input_size)


def computed_tables_dir(which: ModelChoice | None = None) -> Path:
    """Where the app writes tables it computes for a model (content-keyed, survives reloads)."""
    which = which or choice()
    digest = bundle(which).weights_digest
    data = which.data_spec.replace("/", "_").replace(":", "-")[-40:]
    name = which.name.replace("/", "_")[-60:]  # a diffusers:PATH model names a folder
    return APP_RUNS / "tables" / f"{name}-w{which.width:g}-s{which.input_size}-{digest}-{data}"


def shipped_tables_dir(which: ModelChoice | None = None) -> Path | None:
    """The shipped table directory of the manifest matching the model, width and input size."""
    which = which or choice()
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

    Shipped tables fit when the manifest lists the model, width and input size and, where their
    meta records one, the same weights digest (importance depends on the weights).

    Raises:
        TableMismatchError: a table directory exists but is corrupt or was made for another chain.
    """
    which = which or choice()
    candidates = [(computed_tables_dir(which), "computed")]
    shipped = shipped_tables_dir(which)
    if shipped is not None:
        candidates.append((shipped, "shipped"))
    for directory, source in candidates:
        if not all((directory / name).is_file() for name in TABLE_FILES):
            continue
        stamp = tuple((directory / name).stat().st_mtime_ns for name in TABLE_FILES)
        tables = _read_tables(str(directory), stamp)
        if source == "shipped" and not _weights_match(tables, which):
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
    key = f"{used.directory}:{used.tables.digest}"
    return {method: _frontier(key, method, used.tables) for method in list_methods()}


def _weights_match(tables: Tables, which: ModelChoice) -> bool:
    recorded = tables.meta.get("weights_digest")
    return recorded is None or recorded == bundle(which).weights_digest


def _check_chain(tables: Tables, directory: Path, which: ModelChoice) -> None:
    recorded = tables.meta.get("chain_digest")
    if is_unet_name(which.name):  # UNet tables record the UNetChain's digest (block structure)
        from pages._shared.diffusion import unet_chain

        digest = unet_chain(which).digest()
    else:
        digest = chain(which).digest()
    if recorded is not None and recorded != digest:
        raise TableMismatchError(
            f"the tables in {directory} were measured for another chain (digest {recorded}, "
            f"this model's is {digest}); recompute them on the Tables page"
        )


# ----------------------------------------------------------------------------- page helpers


def guarded(function: F) -> F:
    """For fragments (which rerun outside app.py's guard): LayerMergeError -> st.error."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except LayerMergeError as exc:
            st.error(str(exc))
            return None

    return wrapper  # type: ignore[return-value]


def require(value: Any, message: str) -> Any:
    """Stop the page politely (st.info) when a prerequisite is missing."""
    if value is None:
        st.info(message)
        st.stop()
    return value


def sidebar_frame() -> Any:
    """The sidebar every page shows: the model, data and tables in use.

    Returns:
        A sidebar container that :func:`sidebar_solution` fills once the page has run (the page
        may change the solution).
    """
    which = choice()
    with st.sidebar:
        st.markdown(f"**Model** · {which.label}")
        weights = (
            "seeded initial weights" if which.weights_key == "default" else which.weights_label
        )
        try:
            if which.weights_key == "default" and bundle(which).weights_source == "shipped":
                weights = "shipped trained weights"
            used = tables_in_use(which)
        except LayerMergeError as exc:
            st.error(str(exc))
            return st.container()
        st.caption(f"weights: {weights} · data: {which.data_spec}")
        if used is None:
            st.markdown("**Tables** · none yet (Tables page)")
        else:
            st.markdown(f"**Tables** · {used.source}, {used.original_ms:.4g} ms in all")
            st.caption(short_path(used.directory))
        return st.container()


def sidebar_solution(slot: Any) -> None:
    """The solution in use, drawn after the page (which may have just chosen it)."""
    current = solution()
    if current is None:
        return
    used = tables_in_use()
    share = f" ({current.latency_ms / used.original_ms:.0%})" if used and used.original_ms else ""
    slot.markdown(
        f"**Solution** · {current.method}, {current.latency_ms:.4g} ms{share}, "
        f"{len(current.segments)} segments"
    )


def solution_or_default() -> Solution | None:
    """The session's solution; without one, the DP's answer at the Budget page's budget."""
    current = solution()
    if current is not None:
        return current
    used = tables_in_use()
    if used is None:
        return None
    method = st.session_state.get("method", "layermerge")
    percent = st.session_state.get("budget", DEFAULT_BUDGET_PERCENT)
    try:
        current = pick(frontiers(used)[method], budget_ms(used, percent))
    except InfeasibleBudgetError:
        return None
    set_solution(current)
    return current


def short_path(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- measurement


def measure_solution(value: Solution, used: TablesInUse) -> dict[str, Any]:
    """Build the real merged network of ``value`` and time it beside the original.

    The baseline is the original with its BNs folded (core.benchmark.folded_original); both run
    alternately in one call, at the tables' batch and thread count, so the two numbers and the
    table's prediction compare side by side.
    """
    from core.benchmark import folded_original, measure_side_by_side, predicted_speedup
    from core.merge import merge_model

    model, traced = bundle().model, chain()
    merged = merge_model(model, traced, value)  # a new module: the shared model is untouched
    meta = used.tables.meta
    batch = int(meta.get("batch") or 1)
    threads = meta.get("threads")
    result = measure_side_by_side(
        folded_original(model, traced),
        merged,
        input_shape=traced.input_shape,
        batch=batch,
        threads=int(threads) if threads else None,
        rounds=9,
    )
    network_ms = meta.get("network_latency_ms")
    return {
        "original_ms": result.original_ms,
        "merged_ms": result.compressed_ms,
        "measured_speedup": result.speedup,
        "predicted_speedup": predicted_speedup(
            value.latency_ms,
            used.original_ms,
            network_latency_ms=float(network_ms) if network_ms else None,
        ),
        "original_depth": len(traced.convs),
        "merged_depth": merged.depth(),
        "how": (
            f"torch eager, batch {result.batch}, {result.threads} thread(s), median of "
            f"{result.rounds} alternating rounds; baseline with BN folded"
        ),
    }


@st.cache_resource(show_spinner="Merging…", max_entries=16)
def _merged(model_key: tuple[str, float, int, str], key: str, _solution: Solution) -> nn.Module:
    from core.merge import merge_model

    which = choice()
    return merge_model(bundle(which).model, chain(which), _solution)


def merged_network(value: Solution) -> nn.Module:
    """The merged network of ``value`` without finetuning (shared: read it, never change it)."""
    return _merged(choice().key, solution_key(value), value)


@st.cache_resource(show_spinner="Walking the DP grid…", max_entries=8)
def _prefix_states(key: str, method: str, _tables: Tables) -> list[tuple[int, float, float]]:
    states: list[tuple[int, float, float]] = []
    for end in range(1, _tables.last_position + 1):
        prefix = Tables(
            entries=tuple(e for e in _tables.entries if e.end <= end),
            meta=dict(_tables.meta),
            digest=f"{_tables.digest}:{end}",
        )
        states.extend((end, p.latency_ms, p.importance) for p in frontier(prefix, method=method))
    return states


def dp_states(used: TablesInUse, method: str) -> list[tuple[int, float, float]]:
    """Every Pareto-optimal (position j, latency, importance) state of the DP: its live grid cells.

    The frontier of the tables cut at j is the set of best paths from 0 to j, which is exactly what
    the DP keeps at position j.
    """
    return _prefix_states(f"{used.directory}:{used.tables.digest}", method, used.tables)
