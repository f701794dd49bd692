"""The measured frontier: every frontier point's merged network timed beside the original.

The DP's frontier (:func:`core.dp.frontier`) lists every Pareto-optimal solution of a table with
its table latency; :mod:`core.speed` predicts each one's whole-network speed-up. This workflow
measures them: for each point (or the N most useful, spread along the latency axis) it builds the
merged network and times it against the original (the family's speed baseline: a classifier with
its BNs folded) in alternating rounds (:func:`core.benchmark.measure_side_by_side`), with the
table's own settings (batch, threads, backend, allocator; :class:`core.benchmark.TimingSettings`).
A shared machine has slow phases of seconds, so a point's rounds are split into passes over all
points, minutes apart, and the point keeps its median pass; a point whose original still ran
slow is measured again.

Results are cached beside the tables, in ``frontier_measured.json``, keyed by the latency table
(its cache key and CSV digest: a re-profiled table starts afresh) and by each solution's digest,
so a point is measured once whatever method found it, an interrupted run resumes, and the app reads
them with :func:`read_measured_frontier`. The allocator setting is process-wide: a process where
the table's setting does not hold (the app) measures in a worker process that has it
(:class:`core.benchmark.SettingsWorker`); the command line applies it to itself.

Example:
    >>> listed = frontier_rows("cached_tables/digits_resnet")  # predictions only
    >>> done = measure_frontier(load_model("digits_resnet"), "cached_tables/digits_resnet",
    ...                         points=5)  # doctest: +SKIP
    >>> [(r.predicted_speedup, r.measured.speedup) for r in done.rows if r.measured]  # +SKIP
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.benchmark import SettingsWorker, TimingSettings, measure_side_by_side
from core.dp import DEFAULT_OBJECTIVE, DEFAULT_SEARCH, frontier, list_methods
from core.errors import LayerMergeError, TableMismatchError
from core.solution import Solution
from core.speed import SpeedPrediction, predict_speed, table_warning
from core.tables import Tables, atomic_write_text, read_tables
from core.workflows.model import LoadedModel

__all__ = [
    "MEASURED_FILE",
    "DEFAULT_ROUNDS",
    "MeasuredPoint",
    "FrontierRow",
    "FrontierResult",
    "solution_key",
    "select_points",
    "frontier_rows",
    "measure_frontier",
    "measure_solution",
    "read_measured_frontier",
    "slow_points",
    "median_pass",
]

MEASURED_FILE = "frontier_measured.json"  # beside latency.csv
FILE_VERSION = 1
DEFAULT_ROUNDS = 9  # alternating rounds per point (original, merged, merged, original, ...)
# A point whose original ran this much slower than the table's typical original (the median over
# its measured points) was measured in a slow phase of the machine: a slowdown does not hit both
# networks alike, so its ratio is off too. It is measured again, up to SLOW_REMEASURES times.
SLOW_ORIGINAL_FACTOR = 1.3
SLOW_REMEASURES = 2
# The rounds of a point are split into passes over all points, so a point's measurements lie
# minutes apart and a slow phase of seconds spoils one pass, not the point: each point keeps its
# median pass. (One 9-round measurement carried +-10-18% on the 2-core host: BENCHMARKS.md.)
DEFAULT_PASSES = 3

ProgressCallback = Callable[[int, int, float | None], None]


@dataclass(frozen=True)
class MeasuredPoint:
    """One frontier point's merged network timed beside the original, in one run."""

    solution_key: str
    original_ms: float  # median over rounds
    merged_ms: float
    speedup: float  # original_ms / merged_ms
    rounds: int
    batch: int
    threads: int
    allocator: str
    backend: str
    load_average: float | None  # the machine's load after the run (contention shows here)
    measured_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeasuredPoint:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class FrontierRow:
    """One point of one method's frontier: the table's view, the prediction, the measurement."""

    method: str
    index: int  # in the method's frontier, fastest first
    latency_ms: float  # the solution's table latency (what the DP budgets)
    objective: float  # the DP's objective value
    predicted_metric: float | None  # predicted accuracy % (or ε-loss), when the tables say
    prediction: SpeedPrediction
    solution: Solution
    solution_key: str
    measured: MeasuredPoint | None

    @property
    def predicted_speedup(self) -> float:
        return self.prediction.speedup

    @property
    def error(self) -> float | None:
        """predicted / measured - 1 (the goal: within ±10%); None when not measured."""
        if self.measured is None or not self.measured.speedup > 0:
            return None
        return self.prediction.speedup / self.measured.speedup - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "index": self.index,
            "latency_ms": self.latency_ms,
            "objective": self.objective,
            "predicted_metric": self.predicted_metric,
            "predicted_speedup": self.predicted_speedup,
            "predicted_ms": self.prediction.predicted_ms,
            "prediction": self.prediction.to_dict(),
            "solution_key": self.solution_key,
            "kept_activations": list(self.solution.kept_activations),
            "kept_convs": list(self.solution.kept_convs),
            "measured": None if self.measured is None else self.measured.to_dict(),
            "error": self.error,
        }


@dataclass(frozen=True)
class FrontierResult:
    """A table's frontier with predictions, and the measurements done or cached.

    ``status``: ``listed`` (nothing measured by this call), ``completed`` or ``cancelled``.
    """

    status: str
    tables: str
    rows: tuple[FrontierRow, ...]
    settings: TimingSettings
    network_ms: float | None  # the measured original in meta.json (the speed model's N)
    warning: str | None  # core.speed.table_warning: one line, or None
    measured_now: int
    cached: int
    seconds: float
    isolated: bool = False  # measured in a worker process with the table's allocator setting
    remeasured: int = 0  # points measured again: their original ran in a slow phase

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tables": self.tables,
            "settings": asdict(self.settings),
            "network_ms": self.network_ms,
            "warning": self.warning,
            "measured_now": self.measured_now,
            "cached": self.cached,
            "seconds": self.seconds,
            "isolated": self.isolated,
            "remeasured": self.remeasured,
            "rows": [row.to_dict() for row in self.rows],
        }


def solution_key(solution: Solution) -> str:
    """A content digest of what a solution builds: its segments, kept convs and activations."""
    fields = {
        "segments": [[*s.key, list(s.kept_convs)] for s in solution.segments],
        "kept_activations": list(solution.kept_activations),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def select_points(latencies: Sequence[float], count: int | None) -> list[int]:
    """The indices of the ``count`` most useful points of a frontier sorted by latency.

    The fastest and the slowest always, then the points nearest to evenly spaced latencies in
    between, so the measured points span the whole frontier; every index when ``count`` is None
    or at least the frontier's size.

    Raises:
        LayerMergeError: ``count`` is below 1.
    """
    if count is not None and (isinstance(count, bool) or count < 1):
        raise LayerMergeError(f"--points must be a positive integer, got {count}")
    total = len(latencies)
    if count is None or count >= total:
        return list(range(total))
    if count == 1:
        return [total - 1]
    low, high = latencies[0], latencies[-1]
    chosen: set[int] = set()
    for step in range(count):
        target = low + (high - low) * step / (count - 1)
        order = sorted(range(total), key=lambda i: (abs(latencies[i] - target), i))
        chosen.add(next(i for i in order if i not in chosen))
    return sorted(chosen)


def frontier_rows(
    tables: str | Path,
    *,
    methods: Sequence[str] | None = None,
    points: int | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
) -> FrontierResult:
    """Every method's frontier with the speed model's prediction and any cached measurement.

    Args:
        tables: the table directory.
        methods: DP methods; None: every registered one.
        points: at most this many points per method (:func:`select_points`); None: all.
        objective, search: as :func:`core.dp.frontier` takes them.

    Raises:
        TableMismatchError: the directory is not a readable table directory.
        LayerMergeError: an unknown method or a bad point count.
    """
    started = time.perf_counter()
    directory = Path(tables)
    joined = read_tables(directory)
    rows = _rows(joined, methods, points, objective, search, read_measured_frontier(directory))
    return FrontierResult(
        status="listed",
        tables=str(directory),
        rows=tuple(rows),
        settings=TimingSettings.from_meta(joined.meta),
        network_ms=_network_ms(joined.meta),
        warning=table_warning(joined.meta, str(directory)),
        measured_now=0,
        cached=sum(r.measured is not None for r in rows),
        seconds=time.perf_counter() - started,
    )


def measure_frontier(
    model: LoadedModel,
    tables: str | Path,
    *,
    methods: Sequence[str] | None = None,
    points: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
    isolate: bool | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    passes: int = DEFAULT_PASSES,
) -> FrontierResult:
    """Measure the merged network of every frontier point (or ``points`` per method).

    Each point not yet in ``frontier_measured.json`` is built (training form, then merged) and
    timed against the original, alternating, with the table's settings: ``rounds`` rounds in
    all, split into ``passes`` passes over every point (:data:`DEFAULT_PASSES`); a point keeps
    its median pass (by speed-up), saved after every pass, so a cancelled or killed run keeps
    what it measured (its ``rounds`` says how many were done). Then every
    point (cached ones too) whose original ran :data:`SLOW_ORIGINAL_FACTOR` x slower than the
    table's typical original is measured again (:func:`slow_points`), keeping the measurement
    whose original is closest to the typical one: a rerun mends what a slow phase spoiled.

    Args:
        model: the tables' model (only read).
        tables: its table directory.
        methods: DP methods; None: every registered one. A solution several methods find is
            measured once.
        points: at most this many points per method (:func:`select_points`); None: all.
        rounds: alternating timed rounds per point.
        objective, search: as :func:`core.dp.frontier` takes them.
        isolate: time in a worker process that has the table's allocator setting; None: only
            when this process does not (the CLI applies it to itself, the app never does).
        progress: ``progress(done, total, eta_s)`` in point-passes to measure, after each.
        cancel: once set, no further point starts; the result says ``cancelled``.
        passes: passes over the points (at most ``rounds``); 1 measures each point at once.

    Raises:
        TableMismatchError: the tables belong to another network.
        LayerMergeError: a bad count, an unknown method, or a table measured on a device or
            backend the side-by-side timing does not run.
    """
    started = time.perf_counter()
    directory = Path(tables)
    joined = read_tables(directory)
    _check_model(joined, model, directory)
    _check_rounds(rounds)
    _check_rounds(passes)
    passes = min(passes, rounds)
    per_pass = math.ceil(rounds / passes)
    settings = TimingSettings.from_meta(joined.meta)
    _check_settings(settings, model)
    cache = read_measured_frontier(directory)
    rows = _rows(joined, methods, points, objective, search, cache)
    pending: dict[str, Solution] = {}
    for row in rows:
        if row.measured is None:
            pending.setdefault(row.solution_key, row.solution)
    cached_keys = {row.solution_key for row in rows if row.measured is not None}
    isolated = not settings.holds_here() if isolate is None else bool(isolate)
    measured: dict[str, MeasuredPoint] = {}
    status = "completed"
    workers: list[tuple[SettingsWorker, Any]] = []  # (worker, recipe), at the first point
    remeasured = remeasured_cached = 0

    def measure(solution: Solution, rounds: int) -> MeasuredPoint:
        if isolated:
            if not workers:
                workers.append((SettingsWorker(settings), model.family.recipe(model.bundle)))
            worker, recipe = workers[0]
            data = worker.call(_measure_in_worker, recipe, solution.to_dict(), settings, rounds)
        else:
            data = _measure_point(model, solution, settings, rounds)
        return MeasuredPoint(solution_key=solution_key(solution), **data)

    passes_of: dict[str, list[MeasuredPoint]] = {key: [] for key in pending}
    total = len(pending) * passes
    try:
        if progress is not None:
            progress(0, total, None)
        count = 0
        for _ in range(passes):
            for key, solution in pending.items():
                if cancel is not None and cancel.is_set():
                    status = "cancelled"
                    break
                passes_of[key].append(measure(solution, per_pass))
                measured[key] = median_pass(passes_of[key])
                _save_point(directory, joined.meta, settings, measured[key])
                count += 1
                if progress is not None:
                    per_step = (time.perf_counter() - started) / count
                    progress(count, total, per_step * (total - count))
            if status == "cancelled":
                break
        if status == "completed":
            solutions = {row.solution_key: row.solution for row in rows}
            known = {**{r.solution_key: r.measured for r in rows if r.measured}, **measured}
            for key in slow_points(known):
                if cancel is not None and cancel.is_set():
                    break
                best = known[key]
                typical = _typical_original(known)
                for _ in range(SLOW_REMEASURES):
                    again = measure(solutions[key], rounds)
                    if abs(again.original_ms - typical) < abs(best.original_ms - typical):
                        best = again
                    if best.original_ms <= SLOW_ORIGINAL_FACTOR * typical:
                        break
                remeasured += 1
                remeasured_cached += key not in measured
                measured[key] = best
                _save_point(directory, joined.meta, settings, best)
    finally:
        for worker, _ in workers:
            worker.close()
    rows = [
        _with_measurement(row, measured[row.solution_key]) if row.solution_key in measured else row
        for row in rows
    ]
    return FrontierResult(
        status=status,
        tables=str(directory),
        rows=tuple(rows),
        settings=settings,
        network_ms=_network_ms(joined.meta),
        warning=table_warning(joined.meta, str(directory)),
        measured_now=len(measured) - remeasured_cached,
        cached=len(cached_keys),
        seconds=time.perf_counter() - started,
        isolated=bool(workers),
        remeasured=remeasured,
    )


def measure_solution(
    model: LoadedModel,
    tables: str | Path,
    solution: Solution,
    *,
    rounds: int = DEFAULT_ROUNDS,
    isolate: bool | None = None,
    refresh: bool = False,
) -> FrontierRow:
    """One solution of these tables measured like a frontier point (the app's Measure button).

    The result joins the same cache, so the Budget page shows it on the frontier too; a solution
    measured before (on the table as it is now) is answered from the cache unless ``refresh``.

    Raises:
        TableMismatchError: the tables belong to another network.
        LayerMergeError: as :func:`measure_frontier`.
    """
    directory = Path(tables)
    joined = read_tables(directory)
    _check_model(joined, model, directory)
    _check_rounds(rounds)
    settings = TimingSettings.from_meta(joined.meta)
    _check_settings(settings, model)
    key = solution_key(solution)
    point = None if refresh else read_measured_frontier(directory).get(key)
    if point is None:
        if (not settings.holds_here()) if isolate is None else isolate:
            with SettingsWorker(settings) as worker:
                recipe = model.family.recipe(model.bundle)
                data = worker.call(_measure_in_worker, recipe, solution.to_dict(), settings, rounds)
        else:
            data = _measure_point(model, solution, settings, rounds)
        point = MeasuredPoint(solution_key=key, **data)
        _save_point(directory, joined.meta, settings, point)
    return FrontierRow(
        method=solution.method,
        index=-1,
        latency_ms=solution.latency_ms,
        objective=solution.importance,
        predicted_metric=solution.predicted,
        prediction=predict_speed(joined.meta, solution),
        solution=solution,
        solution_key=key,
        measured=point,
    )


def median_pass(passes: Sequence[MeasuredPoint]) -> MeasuredPoint:
    """The pass with the median speed-up (the lower one of an even count: a real measurement,
    its original and merged times together), with ``rounds`` counting every pass's rounds."""
    ordered = sorted(passes, key=lambda point: point.speedup)
    chosen = ordered[(len(ordered) - 1) // 2]
    return replace(chosen, rounds=sum(point.rounds for point in passes))


def slow_points(points: Mapping[str, MeasuredPoint]) -> list[str]:
    """The keys of points measured in a slow phase: their original ran more than
    :data:`SLOW_ORIGINAL_FACTOR` x the typical original (the median over ``points``). Judged on
    the original alone, never on how far the measurement is from its prediction."""
    if len(points) < 3:  # too few to say what is typical
        return []
    typical = _typical_original(points)
    return [key for key, p in points.items() if p.original_ms > SLOW_ORIGINAL_FACTOR * typical]


def _typical_original(points: Mapping[str, MeasuredPoint]) -> float:
    return float(statistics.median(p.original_ms for p in points.values()))


def read_measured_frontier(tables: str | Path) -> dict[str, MeasuredPoint]:
    """The measured points cached beside a table, by solution key (:func:`solution_key`).

    Only points measured on the table as it is now count: a file left by an earlier latency
    table (another cache key or CSV digest), or a damaged one, reads as empty.
    """
    directory = Path(tables)
    data = _read_file(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    if data is None or data.get("table") != _table_identity(meta):
        return {}
    points: dict[str, MeasuredPoint] = {}
    for key, row in (data.get("points") or {}).items():
        try:
            points[key] = MeasuredPoint.from_dict(row)
        except (KeyError, TypeError):
            continue
    return points


# --------------------------------------------------------------------------- private helpers


def _rows(
    tables: Tables,
    methods: Sequence[str] | None,
    points: int | None,
    objective: str,
    search: str,
    cache: Mapping[str, MeasuredPoint],
) -> list[FrontierRow]:
    rows: list[FrontierRow] = []
    for method in list(methods) if methods else list_methods():
        front = frontier(tables, method=method, objective=objective, search=search)
        for index in select_points([p.latency_ms for p in front], points):
            point = front[index]
            solution = point.solution()
            key = solution_key(solution)
            rows.append(
                FrontierRow(
                    method=method,
                    index=index,
                    latency_ms=point.latency_ms,
                    objective=point.importance,
                    predicted_metric=point.predicted,
                    prediction=predict_speed(tables.meta, solution),
                    solution=solution,
                    solution_key=key,
                    measured=cache.get(key),
                )
            )
    return rows


def _with_measurement(row: FrontierRow, point: MeasuredPoint) -> FrontierRow:
    return replace(row, measured=point)


def _network_ms(meta: Mapping[str, Any]) -> float | None:
    value = meta.get("network_folded_latency_ms") or meta.get("network_latency_ms")
    return float(value) if value else None


def _check_model(tables: Tables, model: LoadedModel, directory: Path) -> None:
    recorded = tables.meta.get("chain_digest")
    if recorded != model.traced.digest():
        raise TableMismatchError(
            f"{directory} holds tables of another network (chain digest {recorded}, this model "
            f"{model.traced.digest()})"
        )


def _check_rounds(rounds: Any) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise LayerMergeError(f"--rounds must be a positive integer, got {rounds!r}")


def _check_settings(settings: TimingSettings, model: LoadedModel) -> None:
    if settings.device != "cpu":
        raise LayerMergeError(
            f"the tables were timed on {settings.device}; measured frontiers run on the CPU "
            "(profile a CPU table to measure its frontier)"
        )
    if settings.backend not in model.family.bench_backends():
        raise LayerMergeError(
            f"the tables were timed on {settings.backend}, which {model.name} networks are not "
            f"benchmarked on ({', '.join(model.family.bench_backends())})"
        )


def _measure_point(
    model: LoadedModel, solution: Solution, settings: TimingSettings, rounds: int
) -> dict[str, Any]:
    """Build the solution's merged network and time it against the original, alternating."""
    family, bundle, traced = model.family, model.bundle, model.traced
    original, _ = family.speed_baseline(bundle, traced, None)
    training = family.training_form(bundle.model, traced, solution)
    merged = family.merge(training, traced, solution)
    result = measure_side_by_side(
        family.timing_module(original),
        family.timing_module(merged),
        input_shape=tuple(model.chain.input_shape),
        batch=settings.batch,
        backend=settings.backend,
        rounds=rounds,
        threads=settings.threads,
    )
    return {
        "original_ms": result.original_ms,
        "merged_ms": result.compressed_ms,
        "speedup": result.speedup,
        "rounds": result.rounds,
        "batch": result.batch,
        "threads": result.threads,
        "allocator": result.allocator,
        "backend": result.backend,
        "load_average": result.load_average,
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


_WORKER_MODELS: dict[tuple[str, str], LoadedModel] = {}  # a settings worker's model


def _measure_in_worker(
    recipe: Any, solution: dict[str, Any], settings: TimingSettings, rounds: int
) -> dict[str, Any]:
    """:func:`_measure_point` in a :class:`SettingsWorker` (the model rebuilt there once)."""
    from core.workflows.model import loaded

    key = (recipe.name, recipe.weights_digest)
    model = _WORKER_MODELS.get(key)
    if model is None:
        model = loaded(recipe.build())
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = model
    return _measure_point(model, Solution.from_dict(solution), settings, rounds)


def _table_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a measurement depends on in the table: its settings' key and its CSV."""
    return {
        "latency_key": meta.get("latency_key"),
        "latency_csv_digest": meta.get("latency_csv_digest"),
    }


def _read_file(directory: Path) -> dict[str, Any] | None:
    path = directory / MEASURED_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
        return None
    return data


def _save_point(
    directory: Path, meta: Mapping[str, Any], settings: TimingSettings, point: MeasuredPoint
) -> None:
    """Add one point to the file (rewritten atomically; another table's file is replaced)."""
    identity = _table_identity(meta)
    data = _read_file(directory)
    if data is None or data.get("table") != identity:
        data = {"version": FILE_VERSION, "table": identity, "points": {}}
    data["settings"] = asdict(settings)
    data["points"][point.solution_key] = point.to_dict()
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(directory / MEASURED_FILE, text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
