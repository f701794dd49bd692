"""The exact DP over the latency and importance tables, for LayerMerge and its two baselines.

Three methods share one machinery (LAYERMERGE.md §1.5, §2):

- ``layermerge`` (LAYERMERGE.md §2.1): a chain 0 = a_0 < a_1 < ... < a_m = N of table segments, each
  with one kernel option, maximising the objective s.t. Σ latency <= T0. With the default
  ``search="extended"`` its moves also include both baselines' moves (removing a single reducible
  conv; executing an activation-free all-kept span as Kim23's fastest split), so at every budget
  its optimum is at least each baseline's on the same objective, by construction.
  ``search="paper"`` keeps the paper's space: every segment keeps a conv (the official code's
  restriction too), but for the identity segments the latency table lists (DDPM upsamples).
- ``depth`` (Kim23, LAYERMERGE.md §2.3): activations only, no pruning. Stage 1 finds the fastest way
  T_opt[i, j] to execute an activation-free span (i, j] as one or several all-kept merged convs;
  stage 2 is the same knapsack over spans.
- ``layer``: layer pruning only; every conv p is kept as its own length-1 segment or removed.

**Objectives.** ``additive`` (the default) scores each entry by its measured Δ of the table's
metric, higher is better: Δaccuracy in percentage points for a classifier, -Δε-loss for a
diffusion UNet, an unchanged segment 0. The sum over a solution's segments then predicts its
metric, ``original + ΣΔ`` (:class:`ObjectiveScale`), on one scale for every method, so the three
methods' frontiers compare directly. ``paper`` sums the importance column, exp(Δacc/100) (or
exp(-Δloss/loss₀)), as LayerMerge's code does (LAYERMERGE.md §4); it gives every segment about 1,
so it favours solutions with more segments and does not compare across methods. No method adds a
correction of its own under either objective.

A method turns the tables into :class:`Candidate` items: a span (start, end] that ends in an
activation, with a latency, an objective value, and the table entries that execute it. Two solvers
work on any method's candidates:

- :func:`frontier` computes every Pareto-optimal (latency, objective) solution exactly, with no
  discretization, in one pass; :func:`pick` then answers any budget in O(log n). :func:`solve`,
  what every entry point calls (the ``solve`` command, ``core.flow.compress``, the UNet flow),
  answers from it, so they all give the app's answer.
- :func:`solve_binned` is the paper's DP on a discretized latency axis, vectorised over the budget
  axis with numpy, for one budget: a cross-check, and what ``solve(..., bin_ms=...)`` (the
  command's ``--bin-ms``) selects. Rounding each latency up to bins makes it answer at most as well
  as the frontier.

Example:
    >>> tables = read_tables("cached_tables/mobilenet_v2")  # doctest: +SKIP
    >>> solve(tables, budget_fraction=0.5).predicted  # predicted accuracy, %  # doctest: +SKIP
    >>> points = frontier(tables)  # once per table  # doctest: +SKIP
    >>> pick(points, 18.5).importance  # per slider move  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.errors import InfeasibleBudgetError, LayerMergeError, TableMismatchError
from core.solution import OBJECTIVES, Solution, SolutionSegment
from core.tables import TableEntry, Tables

__all__ = [
    "DEFAULT_BIN_MS",
    "DEFAULT_MIN_BINS",
    "DEFAULT_OBJECTIVE",
    "DEFAULT_SEARCH",
    "MAX_BINS",
    "OBJECTIVES",
    "SEARCHES",
    "TIE_TOLERANCE",
    "UnknownMethodError",
    "InvalidBudgetError",
    "Candidate",
    "FrontierPoint",
    "ObjectiveScale",
    "objective_scale",
    "register_method",
    "list_methods",
    "candidates",
    "restricted_tables",
    "solve",
    "solve_binned",
    "frontier",
    "pick",
    "compare_methods",
]

DEFAULT_BIN_MS = 0.1  # the paper's prec = 10 bins per ms (LAYERMERGE.md §2.1)
DEFAULT_MIN_BINS = 2000  # small-ms budgets get at least this many bins (bin = budget / 2000)
MAX_BINS = 50_000  # beyond this the (candidates x bins) work arrays get large; ask for a larger bin
TIE_TOLERANCE = 1e-9  # objective values closer than this are ties, broken by the lower latency
FLOAT_SLACK = 1e-9  # relative: budgets compare to float sums made in another order
DEFAULT_OBJECTIVE = "additive"
SEARCHES = ("extended", "paper")  # LayerMerge's search space: with the baselines' moves, or not
DEFAULT_SEARCH = "extended"
_ROUNDING_SLACK = 1e-9  # in bins: a latency on the bin grid up to float noise is not rounded up
_REFERENCE_SLACK = 1e-9  # unchanged entries' Δ agreeing this closely come from one shared run
_CACHE_SIZE = 8  # prepared candidates and frontiers kept for the most recent tables

# (importance, delta) of a table entry: its objective value and its additive Δ (for predictions)
EntryScore = Callable[[TableEntry], tuple[float, float]]
CandidateBuilder = Callable[[Sequence[TableEntry], EntryScore], list["Candidate"]]
EntryFilter = Callable[[TableEntry], bool]


class UnknownMethodError(LayerMergeError, ValueError):
    """A DP method name that is not registered; the message lists the known ones."""


class InvalidBudgetError(LayerMergeError, ValueError):
    """A budget, bin width, objective or search name the solver cannot use; names the value."""


@dataclass(frozen=True)
class _Method:
    entries: EntryFilter  # which table entries the method may use
    builder: CandidateBuilder  # how they become knapsack candidates
    extended_with: tuple[str, ...]  # methods whose candidates the extended search adds


_METHODS: dict[str, _Method] = {}
# (id(tables), method, objective, extended) -> (tables, prepared); holding tables keeps its id
_PREPARED: dict[tuple[int, str, str, bool], tuple[Tables, _Prepared]] = {}
# the same key -> (tables, exact frontier): solve() answers from it, the pages pick from it
_FRONTIERS: dict[tuple[int, str, str, bool], tuple[Tables, list[FrontierPoint]]] = {}
_CACHE_LOCK = threading.Lock()  # Streamlit sessions share the module from several threads


# importance normalizations of the data-light mode (core.importance): they score distortion
DISTORTION_NORMALIZATIONS = ("distortion", "kl")


@dataclass(frozen=True)
class ObjectiveScale:
    """How one table's entries score under the additive objective, and what a score predicts.

    An entry's additive score is its measured Δ of ``metric`` against the network that differs in
    nothing, sign chosen so that higher is better: Δacc (percentage points) for ``accuracy``,
    -Δloss for ``epsilon_loss``, and for tables of the data-light ``distortion`` mode (no
    accuracy measured) -distortion = log(importance), predicting no metric. An unchanged segment (length 1, its conv kept) scores exactly 0.
    The importance run finetunes every entry's network briefly, and the length-1 kept entries all
    ARE the original network, sharing one such run (core.importance): their common Δ, the
    finetune's own effect, is the ``reference`` subtracted from every other entry, so that a score
    is the effect of the change alone. When those entries disagree (the paper's re-init
    convention gives each its own run) the reference is 0. A solution's scores sum to ΣΔ, and
    ``predict`` turns that into the metric: ``original + ΣΔ`` for accuracy, ``original - ΣΔ`` for
    the ε-loss (lower is better).
    """

    metric: str  # "accuracy", "epsilon_loss", "distortion", or "" when no Δ is recorded
    reference: float
    original: float | None  # the original network's metric, from meta.json; None if unrecorded

    def delta(self, entry: TableEntry) -> float:
        """The entry's additive score; NaN when the table has no Δ for it."""
        if _is_unchanged(entry):
            return 0.0
        return _raw_delta(entry, self.metric) - self.reference

    def predict(self, total: float) -> float | None:
        """The metric predicted for a solution whose scores sum to ``total``; None if unknown."""
        if self.original is None or not math.isfinite(total):
            return None
        if self.metric == "epsilon_loss":
            return self.original - total
        return self.original + total


@dataclass(frozen=True)
class Candidate:
    """One knapsack item of a method: the span (start, end], ending in a kept activation.

    ``parts`` are the table entries that execute the span, in order. For ``layermerge`` and
    ``layer`` that is the one entry of the span; for ``depth`` (and the extended ``layermerge``)
    it may be the fastest split of an activation-free span into all-kept merged convs (Kim23
    stage 1), whose inner ends carry no activation. ``latency_ms`` is the sum of the parts'
    latencies; ``importance`` is the span's objective value and ``delta`` its additive score (the
    same under the additive objective; kept under the paper's for predictions).
    """

    start: int
    end: int
    latency_ms: float
    importance: float
    parts: tuple[TableEntry, ...]
    delta: float = math.nan


@dataclass(frozen=True)
class FrontierPoint:
    """One Pareto-optimal solution: no other solution is as fast and scores at least as much.

    The chosen segments are not materialised until :meth:`solution` is called, so a frontier of
    thousands of points stays cheap; the point shares its back-pointers with the whole frontier.
    ``importance`` is the objective value; ``delta`` the additive score ΣΔ of the same chain.
    """

    latency_ms: float
    importance: float
    method: str
    _trace: _FrontierTrace = field(repr=False, compare=False)
    _index: int = field(repr=False, compare=False)
    delta: float = math.nan

    @property
    def objective(self) -> str:
        """The objective ``importance`` is the value of (``additive`` or ``paper``)."""
        return self._trace.objective

    @property
    def predicted(self) -> float | None:
        """The predicted metric (accuracy %, or ε-loss) of this point; None when unknown."""
        return self._trace.scale.predict(self.delta)

    def solution(self, budget_ms: float | None = None) -> Solution:
        """The :class:`Solution` of this point.

        Args:
            budget_ms: the budget to record in the solution; defaults to the point's own latency.

        Returns:
            The solution, with ``latency_ms`` and ``importance`` summed over its segments.
        """
        trace = self._trace
        budget = self.latency_ms if budget_ms is None else float(budget_ms)
        return _build_solution(
            trace.chain(self._index),
            method=self.method,
            budget_ms=budget,
            digest=trace.digest,
            objective=trace.objective,
            scale=trace.scale,
            extra={"exact": True, "search": trace.search},
        )


@dataclass(frozen=True, eq=False)
class _FrontierTrace:
    """Back-pointers of one frontier pass, shared by all its points.

    Per position j and Pareto point there: its last candidate (an index into ``items``) and the
    index of its predecessor point in the Pareto set at that candidate's start.
    """

    items: tuple[Candidate, ...]
    last_item: tuple[np.ndarray, ...]  # per position j: (points at j,) int64
    prev_point: tuple[np.ndarray, ...]  # per position j: (points at j,) int64
    digest: str
    original_ms: float  # the tables' original latency, for messages
    objective: str
    search: str
    scale: ObjectiveScale

    def chain(self, index: int) -> list[Candidate]:
        """The candidates of point ``index`` at the last position, first to last."""
        chain: list[Candidate] = []
        position = len(self.last_item) - 1
        while position > 0:
            item = self.items[int(self.last_item[position][index])]
            chain.append(item)
            index = int(self.prev_point[position][index])
            position = item.start
        chain.reverse()
        return chain


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A method's candidates for one table, as arrays, built once and cached."""

    items: tuple[Candidate, ...]
    starts: np.ndarray  # (E,) int64
    latency_ms: np.ndarray  # (E,) float64
    importance: np.ndarray  # (E,) float64
    delta: np.ndarray  # (E,) float64
    by_end: tuple[tuple[int, ...], ...]  # per position j: the candidates (i, j]
    last: int
    fastest_ms: float  # the smallest total latency of any chain; inf when none
    objective: str
    search: str  # "extended" only when the method has extended moves and they are used
    scale: ObjectiveScale


def register_method(
    name: str, *, entries: EntryFilter, extended_with: Sequence[str] = ()
) -> Callable[[CandidateBuilder], CandidateBuilder]:
    """Register a DP method: the table entries it may use and how they become candidates.

    Args:
        name: the method name used by :func:`solve`, :func:`frontier` and the command line.
        entries: predicate selecting the table entries the method may draw on
            (:func:`restricted_tables`).
        extended_with: methods whose candidates ``search="extended"`` adds to this method's
            (LayerMerge adds both baselines'; they may be registered later); empty: the search
            setting is ignored.

    Returns:
        A decorator for a function ``(entries, score) -> list[Candidate]``, returned unchanged;
        ``score(entry)`` gives the entry's (objective value, additive Δ).

    Raises:
        ValueError: ``name`` is already registered.

    Example:
        >>> @register_method("singles", entries=lambda e: e.end - e.start == 1)  # doctest: +SKIP
        ... def _singles(entries, score):
        ...     return [_single_candidate(e, score) for e in entries]
    """
    if name in _METHODS:
        raise ValueError(f"DP method {name!r} is already registered")

    def decorator(builder: CandidateBuilder) -> CandidateBuilder:
        _METHODS[name] = _Method(entries, builder, tuple(extended_with))
        return builder

    return decorator


def list_methods() -> list[str]:
    """Names of the registered DP methods, in registration order."""
    return list(_METHODS)


def objective_scale(tables: Tables) -> ObjectiveScale:
    """The additive objective's metric, reference and original value for ``tables``.

    The metric is the ε-loss when meta.json says the importance is ``epsilon_loss`` (a diffusion
    UNet) or no entry records a Δacc; else accuracy. The original value is meta.json's
    ``importance_base_accuracy`` or ``importance_base_loss``, the unmodified network's measurement.
    """
    meta = tables.meta
    if meta.get("importance_normalization") in DISTORTION_NORMALIZATIONS:
        # distortion mode measured how far each change moves the logits, not accuracy: its Δacc
        # on a few calibration images is 0 throughout, which would make every choice free
        return ObjectiveScale(metric="distortion", reference=0.0, original=None)
    has_acc = any(math.isfinite(e.delta_acc) for e in tables.entries)
    has_loss = any(math.isfinite(e.delta_loss) for e in tables.entries)
    if has_loss and not has_acc:
        metric, original_key = "epsilon_loss", "importance_base_loss"
    elif has_acc:
        metric, original_key = "accuracy", "importance_base_accuracy"
    else:
        return ObjectiveScale(metric="", reference=0.0, original=None)
    unchanged = [_raw_delta(e, metric) for e in tables.entries if _is_unchanged(e)]
    unchanged = [value for value in unchanged if math.isfinite(value)]
    reference = 0.0
    if unchanged and max(unchanged) - min(unchanged) <= _REFERENCE_SLACK * max(
        1.0, abs(unchanged[0])
    ):
        reference = unchanged[0]
    try:
        original: float | None = float(meta[original_key])
    except (KeyError, TypeError, ValueError):
        original = None
    if original is not None and not math.isfinite(original):
        original = None
    return ObjectiveScale(metric=metric, reference=reference, original=original)


def candidates(
    tables: Tables,
    *,
    method: str = "layermerge",
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
) -> list[Candidate]:
    """The knapsack candidates a method builds from ``tables``.

    Raises:
        UnknownMethodError: ``method`` is not registered.
        InvalidBudgetError: ``objective`` or ``search`` is unknown.
        TableMismatchError: a usable entry has no value of the objective, or a NaN or negative
            latency.
    """
    return list(_prepare(tables, method, objective, search).items)


def restricted_tables(tables: Tables, method: str, *, search: str = DEFAULT_SEARCH) -> Tables:
    """The tables cut down to the entries ``method`` may use (same metadata and digest).

    ``layermerge`` in the paper's search: every non-removal entry, and the identity segments the
    latency table lists (a DDPM upsample conv may become identity, LAYERMERGE.md §1.2); the
    extended search adds the baselines' entries (the removals). ``depth``: the non-removal
    entries that keep all their convs. ``layer``: the length-1 all-kept entries and the removals.
    Solving ``restricted_tables(t, "depth", search="paper")`` with ``method="layermerge",
    search="paper"`` is Kim23 without stage-1 splits.

    Raises:
        UnknownMethodError: ``method`` is not registered.
        InvalidBudgetError: ``search`` is unknown.
    """
    filters = [_method(name).entries for name in _method_family(method, search)]
    kept = tuple(e for e in tables.entries if any(f(e) for f in filters))
    return Tables(entries=kept, meta=dict(tables.meta), digest=tables.digest)


def solve(
    tables: Tables,
    *,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    method: str = "layermerge",
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
    bin_ms: float | None = None,
) -> Solution:
    """The best solution within a latency budget: the exact optimum, read off the frontier.

    Every entry point calls this, so the command line, ``core.flow.compress``, the UNet flow and
    the app (which picks from :func:`frontier` itself) give one answer at one budget: the slowest
    point of the exact frontier within the budget, which is the best one (ties go to the faster
    solution). The frontier is cached per table, so further budgets cost a binary search. With
    ``bin_ms`` the discretized DP of :func:`solve_binned` answers instead (a cross-check; it
    rounds latencies up, so it scores at most what this does).

    A budget of at least the keep-everything latency (``budget_fraction >= 1``) always admits
    the keep-everything solution, so it answers with it or with one that scores at least as much.

    Args:
        tables: the joined latency and importance tables.
        budget_ms: the latency budget T0 in ms (give this or ``budget_fraction``).
        budget_fraction: the budget as a fraction of ``tables.original_latency_ms``.
        method: a registered method, ``layermerge``, ``depth`` or ``layer``.
        objective: ``additive`` (ΣΔ of the metric, the default) or ``paper`` (Σ exp(Δ/100)).
        search: LayerMerge's search space, ``extended`` (with the baselines' moves, the default) or
            ``paper``; ignored by the baselines.
        bin_ms: None for the exact answer; a bin width in ms selects :func:`solve_binned`.

    Returns:
        The solution, with the latency and objective sums, the predicted metric, and
        ``extra["exact"] = True`` (or the binned DP's ``extra``).

    Raises:
        InvalidBudgetError: not exactly one of the budgets is given, a budget is negative or not
            finite, or ``objective``, ``search`` or ``bin_ms`` is invalid.
        UnknownMethodError: ``method`` is not registered.
        InfeasibleBudgetError: no solution fits; the message states the smallest achievable latency.
        TableMismatchError: the method's entries do not form a chain from 0 to the last position,
            or lack the objective's values.

    Example:
        >>> solve(tables, budget_fraction=0.5, method="depth")  # doctest: +SKIP
    """
    if bin_ms is not None:
        return solve_binned(
            tables,
            budget_ms=budget_ms,
            budget_fraction=budget_fraction,
            method=method,
            objective=objective,
            search=search,
            bin_ms=bin_ms,
        )
    budget = _resolve_budget(tables, budget_ms, budget_fraction)
    points = frontier(tables, method=method, objective=objective, search=search)
    return _pick_point(points, budget).solution(budget)


def solve_binned(
    tables: Tables,
    *,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    method: str = "layermerge",
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
    bin_ms: float | None = None,
) -> Solution:
    """The best solution within a latency budget by the paper's discretized DP.

    Implements the recurrence of LAYERMERGE.md §2.1 on integer latency bins:
    M[0, t] = 0 and M[j, t] = max over candidates (i, j] with τ <= t of M[i, t - τ] + I, computed
    for all t at once per position j, then back-tracked through argmax pointers. Two deliberate
    differences from the original code:

    - each latency is rounded **up** to bins, τ = ceil(T / bin), and the budget down,
      P = floor(T0 / bin), so Σ T <= Σ τ·bin <= P·bin <= T0: a solution never exceeds its budget
      (a latency within float noise, 1e-9 bin, above a grid point counts as on it). The original
      truncates (τ = floor(prec·T)), so its answers may exceed T0 by up to one bin per segment.
      The price is that the answer is optimal for the rounded-up latencies: with m segments up to
      m bins of the budget go unused, and a budget equal to the keep-everything latency may not
      admit it. :func:`solve` (the exact frontier) has no such loss.
    - the default bin is ``min(0.1 ms, budget / 2000)``: the paper's 0.1 ms for budgets from 200 ms
      up, and at least 2000 bins for the small-ms budgets of CPU tables, where 0.1 ms would be
      coarse.

    Ties within :data:`TIE_TOLERANCE` of the objective go to the lower real latency. Complexity:
    O(E · P) time, with E candidates and P bins, and O(N · P) memory.

    Args:
        tables, budget_ms, budget_fraction, method, objective, search: as for :func:`solve`.
        bin_ms: the width of a latency bin in ms; see above for the default.

    Returns:
        The solution, with the real (un-binned) latency and objective sums. Its ``extra`` records
        ``bin_ms``, ``budget_bins`` and the solution's ``latency_bins``.

    Raises:
        InvalidBudgetError: as for :func:`solve`, or the budget needs more than
            :data:`MAX_BINS` bins.
        UnknownMethodError: ``method`` is not registered.
        InfeasibleBudgetError: no solution fits the rounded latencies; the message states the
            smallest achievable latency, rounded and not.
        TableMismatchError: as for :func:`solve`.
    """
    budget = _resolve_budget(tables, budget_ms, budget_fraction)
    bin_width = _resolve_bin(budget, bin_ms)
    prepared = _prepare(tables, method, objective, search)
    _require_chain(prepared, method)
    items, last = prepared.items, prepared.last
    budget_bins = math.floor(budget / bin_width + _ROUNDING_SLACK)
    if budget_bins > MAX_BINS:
        raise InvalidBudgetError(
            f"budget {budget:g} ms in bins of {bin_width:g} ms needs {budget_bins} bins, more than "
            f"{MAX_BINS}; pass a larger bin_ms"
        )
    # τ = ceil(T / bin), forgiving float noise of 1e-9 bin above a grid point
    taus = np.maximum(np.ceil(prepared.latency_ms / bin_width - _ROUNDING_SLACK), 0)
    taus = taus.astype(np.int64).tolist()
    value, latency, choice = _binned_dp(prepared, taus, budget_bins)
    if math.isinf(value[last, budget_bins]):
        raise _infeasible(tables, prepared, method, budget, bin_width, taus)
    path = _backtrack(items, taus, choice, last, budget_bins)
    _check_path(
        items, taus, path, value[last, budget_bins], latency[last, budget_bins], budget_bins
    )
    return _build_solution(
        [items[index] for index in path],
        method=method,
        budget_ms=budget,
        digest=tables.digest,
        objective=prepared.objective,
        scale=prepared.scale,
        extra={
            "bin_ms": bin_width,
            "budget_bins": budget_bins,
            "latency_bins": sum(taus[index] for index in path),
            "search": prepared.search,
        },
    )


def frontier(
    tables: Tables,
    *,
    method: str = "layermerge",
    tolerance: float = 0.0,
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
) -> list[FrontierPoint]:
    """Every Pareto-optimal (latency, objective) solution, exactly, in one pass.

    For each position j in order, the Pareto set of (latency, objective) over all paths from 0 to
    j is built from the candidates (i, j] and the Pareto sets at their starts i, then pruned of
    dominated points (a point survives if every point at most as slow scores less by more than
    :data:`TIE_TOLERANCE`; of equal points the first found is kept). No latency is discretized,
    so the frontier is the exact surrogate optimum at every budget; :func:`pick` reads any budget
    off it. The exact frontier (``tolerance`` 0) is cached for the last few tables.

    Complexity: O(Σ_j Σ_{(i,j]} |F_i| · log) time and O(Σ_j |F_j|) memory, where |F_j| is the size
    of the Pareto set at position j. |F_j| is bounded by the number of paths from 0 to j, which is
    exponential, but in practice stays small: hundreds of points at the last position of the
    MobileNetV2-sized table of bench/bench_dp.py (BENCHMARKS.md, "DP solver").

    Args:
        tables: the joined latency and importance tables.
        method: a registered method, ``layermerge``, ``depth`` or ``layer``.
        tolerance: optional relative tolerance to keep the sets small: scanning each Pareto set
            from fast to slow, a point is dropped when its objective exceeds that of the last kept
            (faster) point by no more than ``tolerance · |value|``. With positive values (the
            paper's objective) each position loses at most that factor, so the result is within
            (1 + tolerance)^N of the exact one. The default 0 is exact.
        objective: ``additive`` (the default) or ``paper``; see :func:`solve`.
        search: ``extended`` (the default) or ``paper``; see :func:`solve`.

    Returns:
        The frontier points, by increasing latency (and so increasing objective).

    Raises:
        InvalidBudgetError: ``tolerance`` is negative or not finite, or ``objective`` or
            ``search`` is unknown.
        UnknownMethodError: ``method`` is not registered.
        TableMismatchError: the method's entries do not form a chain from 0 to the last position,
            or lack the objective's values.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidBudgetError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    prepared = _prepare(tables, method, objective, search)
    key = (id(tables), method, prepared.objective, prepared.search == "extended")
    if tolerance == 0:
        with _CACHE_LOCK:
            cached = _FRONTIERS.get(key)
        if cached is not None and cached[0] is tables:
            return list(cached[1])
    points = _frontier(tables, prepared, method, tolerance)
    if tolerance == 0:
        with _CACHE_LOCK:
            _remember(_FRONTIERS, key, (tables, points))
    return list(points)


def pick(points: Sequence[FrontierPoint], budget_ms: float) -> Solution:
    """The best frontier point within ``budget_ms``, as a solution.

    Args:
        points: a frontier from :func:`frontier`, sorted by increasing latency.
        budget_ms: the latency budget in ms.

    Returns:
        The solution of the slowest point with ``latency_ms <= budget_ms``, which scores the most
        (binary search: O(log n) plus the length of the chain).

    Raises:
        InvalidBudgetError: ``budget_ms`` is negative or not finite.
        ValueError: ``points`` is empty.
        InfeasibleBudgetError: even the fastest point is slower than the budget.
    """
    point = _pick_point(points, budget_ms)
    return point.solution(budget_ms)


def compare_methods(
    tables: Tables,
    budgets_ms: Iterable[float],
    *,
    methods: Sequence[str] | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    search: str = DEFAULT_SEARCH,
) -> list[dict[str, Any]]:
    """Each method's exact optimum at each budget, side by side on the same tables and objective.

    Uses one :func:`frontier` per method, so the numbers carry no discretization.

    Args:
        tables: the joined latency and importance tables.
        budgets_ms: the budgets in ms.
        methods: the methods to compare; defaults to every registered one.
        objective: ``additive`` (the default) or ``paper``.
        search: LayerMerge's search space, ``extended`` (the default) or ``paper``.

    Returns:
        One row per budget: ``budget_ms``, ``budget_fraction`` (of the original table latency),
        and for each method ``{method}_importance`` (the objective), ``{method}_predicted`` (the
        predicted metric) and ``{method}_latency_ms``, all ``None`` where no solution of that
        method fits the budget. Ready for ``pandas.DataFrame(rows)``.

    Raises:
        UnknownMethodError: a method is not registered.
        InvalidBudgetError: a budget is negative or not finite.
    """
    names = list_methods() if methods is None else list(methods)
    fronts = {
        name: frontier(tables, method=name, objective=objective, search=search) for name in names
    }
    original = tables.original_latency_ms
    rows: list[dict[str, Any]] = []
    for budget in budgets_ms:
        budget = _check_budget(budget)
        row: dict[str, Any] = {
            "budget_ms": budget,
            "budget_fraction": budget / original if original > 0 else None,
        }
        for name, points in fronts.items():
            try:
                point = _pick_point(points, budget)
            except InfeasibleBudgetError:
                row[f"{name}_importance"] = None
                row[f"{name}_predicted"] = None
                row[f"{name}_latency_ms"] = None
            else:
                row[f"{name}_importance"] = point.importance
                row[f"{name}_predicted"] = point.predicted
                row[f"{name}_latency_ms"] = point.latency_ms
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Methods


def _is_merge_option(entry: TableEntry) -> bool:
    # a removal the latency table lists is an identity segment (DDPM upsample), not a layer move
    return not entry.is_removal or entry.identity_segment


def _is_all_kept_option(entry: TableEntry) -> bool:
    return not entry.is_removal and entry.keeps_all_convs


def _is_layer_option(entry: TableEntry) -> bool:
    return entry.end - entry.start == 1 and (entry.is_removal or entry.keeps_all_convs)


def _is_unchanged(entry: TableEntry) -> bool:
    """A length-1 segment that keeps its conv: the original network there."""
    return entry.end - entry.start == 1 and not entry.is_removal and entry.keeps_all_convs


def _single_candidate(entry: TableEntry, score: EntryScore) -> Candidate:
    latency = 0.0 if entry.is_removal else float(entry.latency_ms)  # removal: 0 by definition
    importance, delta = score(entry)
    return Candidate(entry.start, entry.end, latency, importance, (entry,), delta)


@register_method("layermerge", entries=_is_merge_option, extended_with=("depth", "layer"))
def _layermerge_candidates(entries: Sequence[TableEntry], score: EntryScore) -> list[Candidate]:
    """LayerMerge (LAYERMERGE.md §2.1): every segment and kernel option is its own candidate.

    The extended search (the default) adds the depth and layer candidates: Kim23's split spans
    and the removal of a single reducible conv, which the surgery and merge already execute for
    those methods' solutions.
    """
    return [_single_candidate(e, score) for e in entries]


@register_method("depth", entries=_is_all_kept_option)
def _depth_candidates(entries: Sequence[TableEntry], score: EntryScore) -> list[Candidate]:
    """Kim23's two stages (LAYERMERGE.md §2.3) on the all-kept entries, without pruning.

    Stage 1: T_opt[i, j] = min(T[i, j], min_m T_opt[i, m] + T[m, j]), the fastest execution of an
    activation-free span as consecutive all-kept merged convs (a shortest path from i). A span
    (i, j] is a stage-2 candidate only if an all-kept (i, j] entry exists, which supplies its
    score (merging is exact, so every split computes the same function); its latency is
    T_opt[i, j] and its parts are the split. Kim23's α normalisation of Δacc and its extended
    importance I_ext over linear-bottleneck flags are not reproduced: the importance table is used
    as it is, as for the other methods.
    """
    direct: dict[tuple[int, int], TableEntry] = {}
    for entry in entries:
        span = (entry.start, entry.end)
        if span in direct:
            raise TableMismatchError(
                f"segment ({entry.start}, {entry.end}] has two all-kept entries "
                f"{direct[span].key} and {entry.key}; the depth method needs one"
            )
        direct[span] = entry
    outgoing: dict[int, list[TableEntry]] = {}
    for entry in sorted(direct.values(), key=lambda e: (e.start, e.end)):
        outgoing.setdefault(entry.start, []).append(entry)
    positions = sorted({e.end for es in outgoing.values() for e in es} | set(outgoing))
    items: list[Candidate] = []
    for origin in sorted(outgoing):
        # shortest paths from origin over all-kept entries, positions in increasing order
        best: dict[int, tuple[float, tuple[TableEntry, ...]]] = {origin: (0.0, ())}
        for position in positions:
            if position not in best or position < origin:
                continue
            base_latency, base_parts = best[position]
            for entry in outgoing.get(position, ()):
                latency = base_latency + float(entry.latency_ms)
                parts = (*base_parts, entry)
                known = best.get(entry.end)
                # prefer the direct entry, then fewer parts, on equal latency
                if (
                    known is None
                    or latency < known[0]
                    or (latency == known[0] and len(parts) < len(known[1]))
                ):
                    best[entry.end] = (latency, parts)
        for end, (latency, parts) in sorted(best.items()):
            if (origin, end) in direct:
                importance, delta = score(direct[(origin, end)])
                items.append(Candidate(origin, end, latency, importance, parts, delta))
    return items


@register_method("layer", entries=_is_layer_option)
def _layer_candidates(entries: Sequence[TableEntry], score: EntryScore) -> list[Candidate]:
    """Layer pruning only: conv p kept as the length-1 segment (p-1, p], or removed (kernel 0).

    A removal is scored like any entry, by its own measurement: under the additive objective
    the Δ of dropping the conv, and a kept conv 0.
    """
    return [_single_candidate(e, score) for e in entries]


# ---------------------------------------------------------------------------------------------
# Private helpers


def _method(name: str) -> _Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown DP method {name!r}; known methods: {', '.join(list_methods())}"
        ) from None


def _method_family(method: str, search: str) -> tuple[str, ...]:
    """``method`` and, in the extended search, the methods whose moves it adds."""
    spec = _method(method)
    if search not in SEARCHES:
        raise InvalidBudgetError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if search == "paper":
        return (method,)
    for name in spec.extended_with:
        _method(name)  # registered after this one, possibly: checked here
    return (method, *spec.extended_with)


def _raw_delta(entry: TableEntry, metric: str) -> float:
    """The entry's measured Δ of ``metric``, sign chosen so that higher is better."""
    if metric == "accuracy":
        return float(entry.delta_acc)
    if metric == "epsilon_loss":
        return 0.0 - float(entry.delta_loss)  # 0.0, not -0.0, for an unchanged loss
    if metric == "distortion":  # importance = exp(-distortion): its log adds up
        importance = float(entry.importance)
        if importance == 0.0:  # exp underflowed: the distortion was at least ~745, and is kept so
            return math.log(math.ulp(0.0))
        return 0.0 + math.log(importance) if importance > 0 else math.nan
    return math.nan


def _scorer(objective: str, scale: ObjectiveScale) -> EntryScore:
    if objective == "paper":
        return lambda entry: (float(entry.importance), scale.delta(entry))

    def additive(entry: TableEntry) -> tuple[float, float]:
        delta = scale.delta(entry)
        return delta, delta

    return additive


def _prepare(tables: Tables, method: str, objective: str, search: str) -> _Prepared:
    """The method's candidates for ``tables``, cached for the last few tables (they are frozen)."""
    if objective not in OBJECTIVES:
        raise InvalidBudgetError(
            f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}"
        )
    family = _method_family(method, search)
    extended = len(family) > 1
    key = (id(tables), method, objective, extended)
    with _CACHE_LOCK:
        cached = _PREPARED.get(key)
    if cached is not None and cached[0] is tables:
        return cached[1]
    scale = objective_scale(tables)
    score = _scorer(objective, scale)
    items: list[Candidate] = []
    seen: set[tuple[int, int, tuple[Any, ...]]] = set()
    for name in family:
        spec = _METHODS[name]
        usable = [e for e in tables.entries if spec.entries(e)]
        for entry in usable:
            _check_entry(entry, objective, scale)
        for item in spec.builder(usable, score):
            identity = (item.start, item.end, tuple(part.key for part in item.parts))
            if identity not in seen:  # the extended search meets each shared move twice
                seen.add(identity)
                items.append(item)
    last = tables.last_position
    by_end: list[list[int]] = [[] for _ in range(last + 1)]
    for index, item in enumerate(items):
        by_end[item.end].append(index)
    prepared = _Prepared(
        items=tuple(items),
        starts=np.array([c.start for c in items], dtype=np.int64),
        latency_ms=np.array([c.latency_ms for c in items], dtype=np.float64),
        importance=np.array([c.importance for c in items], dtype=np.float64),
        delta=np.array([c.delta for c in items], dtype=np.float64),
        by_end=tuple(tuple(ids) for ids in by_end),
        last=last,
        fastest_ms=0.0,
        objective=objective,
        search="extended" if extended else "paper",
        scale=scale,
    )
    prepared = replace(
        prepared, fastest_ms=_fastest_latency(prepared, [c.latency_ms for c in items])
    )
    with _CACHE_LOCK:
        _remember(_PREPARED, key, (tables, prepared))
    return prepared


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Store ``value``, dropping the oldest entries beyond :data:`_CACHE_SIZE` (lock held)."""
    cache.pop(key, None)
    while len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value


def _frontier(
    tables: Tables, prepared: _Prepared, method: str, tolerance: float
) -> list[FrontierPoint]:
    """The Pareto merge of :func:`frontier`, position by position."""
    _require_chain(prepared, method)
    last, starts = prepared.last, prepared.starts
    # Pareto set at each position: latencies, objective values, additive Δ, last candidate, and
    # predecessor point
    lat: list[np.ndarray] = [np.zeros(1)]
    imp: list[np.ndarray] = [np.zeros(1)]
    dlt: list[np.ndarray] = [np.zeros(1)]
    last_item: list[np.ndarray] = [np.full(1, -1, dtype=np.int64)]
    prev_point: list[np.ndarray] = [np.full(1, -1, dtype=np.int64)]
    for j in range(1, last + 1):
        ids = [c for c in prepared.by_end[j] if lat[starts[c]].size]
        if not ids:
            lat.append(np.zeros(0))
            imp.append(np.zeros(0))
            dlt.append(np.zeros(0))
            last_item.append(np.zeros(0, dtype=np.int64))
            prev_point.append(np.zeros(0, dtype=np.int64))
            continue
        sizes = np.array([lat[starts[c]].size for c in ids])
        ids_arr = np.array(ids, dtype=np.int64)
        cand_lat = np.concatenate([lat[starts[c]] for c in ids]) + np.repeat(
            prepared.latency_ms[ids_arr], sizes
        )  # (total points,)
        cand_imp = np.concatenate([imp[starts[c]] for c in ids]) + np.repeat(
            prepared.importance[ids_arr], sizes
        )
        cand_dlt = np.concatenate([dlt[starts[c]] for c in ids]) + np.repeat(
            prepared.delta[ids_arr], sizes
        )
        cand_item = np.repeat(ids_arr, sizes)
        cand_prev = np.concatenate([np.arange(s) for s in sizes])
        keep = _pareto_indices(cand_lat, cand_imp, tolerance)
        lat.append(cand_lat[keep])
        imp.append(cand_imp[keep])
        dlt.append(cand_dlt[keep])
        last_item.append(cand_item[keep])
        prev_point.append(cand_prev[keep])
    trace = _FrontierTrace(
        items=prepared.items,
        last_item=tuple(last_item),
        prev_point=tuple(prev_point),
        digest=tables.digest,
        original_ms=tables.original_latency_ms,
        objective=prepared.objective,
        search=prepared.search,
        scale=prepared.scale,
    )
    return [
        FrontierPoint(float(lat_ms), float(value), method, trace, index, delta=float(delta))
        for index, (lat_ms, value, delta) in enumerate(
            zip(lat[last], imp[last], dlt[last], strict=True)
        )
    ]


def _require_chain(prepared: _Prepared, method: str) -> None:
    if math.isinf(prepared.fastest_ms):
        raise TableMismatchError(
            f"the {method!r} entries of these tables do not chain from position 0 to "
            f"{prepared.last}"
        )


def _check_entry(entry: TableEntry, objective: str, scale: ObjectiveScale) -> None:
    if objective == "paper" and not math.isfinite(entry.importance):
        raise TableMismatchError(
            f"entry {entry.key} has no importance ({entry.importance}); build the importance "
            "table before solving"
        )
    if objective == "additive" and not math.isfinite(scale.delta(entry)):
        if not scale.metric:
            raise TableMismatchError(
                "these tables record no Δaccuracy or Δε-loss (importance.csv's delta_acc and "
                "delta_loss); build the importance table, or use the paper objective"
            )
        column = {"accuracy": "delta_acc", "distortion": "importance"}.get(
            scale.metric, "delta_loss"
        )
        raise TableMismatchError(
            f"entry {entry.key} has no {column} ({_raw_delta(entry, scale.metric)}); build the "
            "importance table before solving, or use the paper objective"
        )
    if not entry.is_removal and not (math.isfinite(entry.latency_ms) and entry.latency_ms >= 0):
        raise TableMismatchError(f"entry {entry.key} has latency {entry.latency_ms} ms")


def _check_budget(budget_ms: float) -> float:
    try:
        budget = float(budget_ms)
    except (TypeError, ValueError):
        raise InvalidBudgetError(f"budget must be a number of ms, got {budget_ms!r}") from None
    if not (math.isfinite(budget) and budget >= 0):
        raise InvalidBudgetError(f"budget must be a finite number of ms >= 0, got {budget_ms!r}")
    return budget


def _resolve_budget(
    tables: Tables, budget_ms: float | None, budget_fraction: float | None
) -> float:
    if (budget_ms is None) == (budget_fraction is None):
        raise InvalidBudgetError(
            "give exactly one of budget_ms and budget_fraction, got "
            f"budget_ms={budget_ms!r}, budget_fraction={budget_fraction!r}"
        )
    if budget_ms is not None:
        return _check_budget(budget_ms)
    try:
        fraction = float(budget_fraction)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        fraction = math.nan
    if not (math.isfinite(fraction) and fraction >= 0):
        raise InvalidBudgetError(
            f"budget_fraction must be a finite number >= 0, got {budget_fraction!r}"
        )
    budget = fraction * tables.original_latency_ms
    if not math.isfinite(budget):
        raise InvalidBudgetError(
            f"budget_fraction {budget_fraction!r} of {tables.original_latency_ms:g} ms is not a "
            "finite budget"
        )
    return budget


def _resolve_bin(budget: float, bin_ms: float | None) -> float:
    if bin_ms is None:
        return min(DEFAULT_BIN_MS, budget / DEFAULT_MIN_BINS) if budget > 0 else DEFAULT_BIN_MS
    try:
        width = float(bin_ms)
    except (TypeError, ValueError):
        width = math.nan
    if not (math.isfinite(width) and width > 0):
        raise InvalidBudgetError(f"bin_ms must be a finite number of ms > 0, got {bin_ms!r}")
    return width


def _binned_dp(
    prepared: _Prepared, taus: Sequence[int], budget_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recurrence of LAYERMERGE.md §2.1, one position at a time over all bins at once.

    Returns ``value`` (best objective within t bins; -inf when none), ``latency`` (the real
    latency of that best path; +inf when none) and ``choice`` (its last candidate; -1 when none),
    each of shape (N + 1, P + 1).
    """
    last, width = prepared.last, budget_bins + 1
    value = np.full((last + 1, width), -np.inf)  # (N + 1, P + 1)
    latency = np.full((last + 1, width), np.inf)  # (N + 1, P + 1)
    choice = np.full((last + 1, width), -1, dtype=np.int64)  # (N + 1, P + 1)
    value[0] = 0.0
    latency[0] = 0.0
    columns = np.arange(width)
    for j in range(1, last + 1):
        ids = [c for c in prepared.by_end[j] if taus[c] <= budget_bins]
        if not ids:
            continue
        # row k, column t: the path through candidate ids[k] with at most t bins
        cand_value = np.full((len(ids), width), -np.inf)  # (n, P + 1)
        cand_latency = np.full((len(ids), width), np.inf)  # (n, P + 1)
        for row, c in enumerate(ids):
            start, tau = prepared.starts[c], taus[c]
            cand_value[row, tau:] = value[start, : width - tau]  # M[i, t - τ]
            cand_latency[row, tau:] = latency[start, : width - tau]
        ids_arr = np.array(ids)
        cand_value += prepared.importance[ids_arr, None]
        cand_latency += prepared.latency_ms[ids_arr, None]
        best = cand_value.max(axis=0)  # (P + 1,)
        # among the (near-)best candidates, the one with the lowest real latency
        near_latency = np.where(cand_value >= best - TIE_TOLERANCE, cand_latency, np.inf)
        pick_row = near_latency.argmin(axis=0)  # (P + 1,)
        value[j] = cand_value[pick_row, columns]
        latency[j] = cand_latency[pick_row, columns]
        choice[j] = np.where(np.isfinite(value[j]), ids_arr[pick_row], -1)
    return value, latency, choice


def _backtrack(
    items: Sequence[Candidate],
    taus: Sequence[int],
    choice: np.ndarray,
    last: int,
    budget_bins: int,
) -> list[int]:
    """Walk the argmax pointers back from (N, P); returns the candidate indices, first to last."""
    path: list[int] = []
    position, t = last, budget_bins
    while position > 0:
        index = int(choice[position, t])
        if index < 0 or taus[index] > t:
            raise RuntimeError(f"DP back-pointer broken at position {position}, bin {t}")
        path.append(index)
        t -= taus[index]
        position = items[index].start
    path.reverse()
    return path


def _check_path(
    items: Sequence[Candidate],
    taus: Sequence[int],
    path: Sequence[int],
    value: float,
    latency_ms: float,
    budget_bins: int,
) -> None:
    """Internal invariant: the back-tracked path reproduces the DP's value and latency."""
    importance = 0.0
    real = 0.0
    bins = 0
    for index in path:
        importance += items[index].importance
        real += items[index].latency_ms
        bins += taus[index]
    scale = max(1.0, abs(value), abs(latency_ms))
    if (
        abs(importance - value) > 1e-9 * scale
        or abs(real - latency_ms) > 1e-9 * scale
        or bins > budget_bins
    ):
        raise RuntimeError(
            f"DP invariant broken: path value {importance!r} vs {value!r}, latency "
            f"{real!r} vs {latency_ms!r} ms, {bins} bins vs budget {budget_bins}"
        )


def _build_solution(
    chain: Iterable[Candidate],
    *,
    method: str,
    budget_ms: float,
    digest: str,
    objective: str,
    scale: ObjectiveScale,
    extra: dict[str, Any],
) -> Solution:
    """A Solution from a chain of candidates; a span's objective value goes on its last part."""
    segments: list[SolutionSegment] = []
    activations = [0]
    importance = 0.0
    delta = 0.0
    latency = 0.0
    for item in chain:
        for position, part in enumerate(item.parts):
            part_latency = 0.0 if part.is_removal else float(part.latency_ms)
            is_last = position == len(item.parts) - 1
            segments.append(
                SolutionSegment(
                    start=part.start,
                    end=part.end,
                    kernel=part.kernel,
                    depthwise=part.depthwise,
                    stride=part.stride,
                    kept_convs=tuple(part.kept_convs),
                    latency_ms=part_latency,
                    importance=item.importance if is_last else 0.0,
                )
            )
            latency += part_latency
        importance += item.importance
        delta += item.delta
        activations.append(item.end)
    return Solution(
        method=method,
        budget_ms=budget_ms,
        latency_ms=latency,
        importance=importance,
        segments=tuple(segments),
        kept_activations=tuple(activations),
        tables_digest=digest,
        extra=extra,
        objective=objective,
        metric=scale.metric,
        predicted=scale.predict(delta),
        original_metric=scale.original,
    )


def _fastest_latency(prepared: _Prepared, weights: Sequence[float]) -> float:
    """The smallest Σ weight over chains from 0 to the last position (inf when none), min-plus."""
    best = [math.inf] * (prepared.last + 1)
    best[0] = 0.0
    for j, ids in enumerate(prepared.by_end):
        for index in ids:
            best[j] = min(best[j], best[prepared.items[index].start] + weights[index])
    return best[prepared.last]


def _infeasible(
    tables: Tables,
    prepared: _Prepared,
    method: str,
    budget: float,
    bin_ms: float,
    taus: Sequence[int],
) -> InfeasibleBudgetError:
    fastest = prepared.fastest_ms
    message = _infeasible_message(method, budget, fastest, tables.original_latency_ms)
    if fastest <= budget:
        rounded = _fastest_latency(prepared, [t * bin_ms for t in taus])
        message += (
            f", which is {rounded:.6g} ms after rounding each latency up to bins of "
            f"{bin_ms:.6g} ms; pass a smaller bin_ms"
        )
    return InfeasibleBudgetError(message)


def _pareto_indices(latency: np.ndarray, importance: np.ndarray, tolerance: float) -> np.ndarray:
    """Indices of the Pareto-optimal points (min latency, max objective), by latency.

    Sorted by latency, then objective descending, a point survives when it scores more than every
    faster-or-equal point before it by more than :data:`TIE_TOLERANCE` (float sums of the same
    values in another order differ in the last bits; those are ties, as in :func:`solve_binned`).
    """
    order = np.lexsort((-importance, latency))
    imp_sorted = importance[order]
    before = np.empty_like(imp_sorted)  # the best objective of any faster-or-equal point
    before[0] = -np.inf
    np.maximum.accumulate(imp_sorted[:-1], out=before[1:])
    order = order[imp_sorted > before + TIE_TOLERANCE]
    if tolerance <= 0 or order.size <= 1:
        return order
    kept_imp = importance[order]  # strictly increasing
    kept = [0]
    while True:
        current = kept_imp[kept[-1]]
        nxt = int(np.searchsorted(kept_imp, current + tolerance * abs(current), side="right"))
        if nxt >= kept_imp.size:
            break
        kept.append(nxt)
    return order[np.array(kept)]


def _pick_point(points: Sequence[FrontierPoint], budget_ms: float) -> FrontierPoint:
    budget = _check_budget(budget_ms)
    if not points:
        raise ValueError("the frontier is empty")
    # A relative slack of 1e-9 absorbs float summation order: a budget equal to the original
    # table latency must admit the keep-everything solution summed in another order.
    slack = budget * (1.0 + FLOAT_SLACK)
    position = bisect.bisect_right(points, slack, key=lambda p: p.latency_ms)
    if position == 0:
        fastest = points[0]
        raise InfeasibleBudgetError(
            _infeasible_message(
                fastest.method, budget, fastest.latency_ms, fastest._trace.original_ms
            )
        )
    return points[position - 1]


def _infeasible_message(method: str, budget: float, fastest: float, original: float) -> str:
    share = f" ({fastest / original:.1%} of the original {original:.6g} ms)" if original > 0 else ""
    return (
        f"no {method} solution fits the budget of {budget:.6g} ms: the fastest needs "
        f"{fastest:.6g} ms{share}"
    )
