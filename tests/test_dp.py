"""Tests of core/dp.py: the exact solve, the binned DP and the frontier against brute force.

The brute force below is written independently of core/dp.py: it enumerates every chain of a
method's moves on random synthetic tables and scores it by the objective's rule.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import dp
from core.errors import InfeasibleBudgetError, LayerMergeError, TableMismatchError
from core.solution import Solution
from core.tables import TableEntry, Tables

GRID_MS = 0.5  # grid latencies are multiples of this, so rounding to bins of it is exact
MAX_PATHS = 5000  # keeps the brute force fast
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OBJECTIVES = ("additive", "paper")
# (method, search): LayerMerge in both search spaces, the baselines (which ignore the search)
SETUPS = [
    ("layermerge", "extended"),
    ("layermerge", "paper"),
    ("depth", "extended"),
    ("layer", "extended"),
]

Item = tuple[int, int, float, float]  # (start, end, latency_ms, objective value)


# ---------------------------------------------------------------------------------------------
# Synthetic tables


def _valid(i: int, j: int, breaks: set[int], skips: list[tuple[int, int]]) -> bool:
    """LAYERMERGE.md §1.3: no break strictly inside, no partial overlap of a residual span."""
    if any(i < b < j for b in breaks):
        return False
    return all(not (i < s < j < t) and not (s < i < t < j) for s, t in skips)


def _entry(
    start: int,
    end: int,
    kept: Sequence[int],
    latency: float,
    importance: float,
    delta_acc: float | None = None,
) -> TableEntry:
    """A 3x3-conv table entry; Δacc defaults to the one the paper's importance stands for."""
    kernel = 1 + 2 * len(kept)  # 3x3 convs: K = 1 + Σ (k - 1); 0 for a removal
    if delta_acc is None:
        delta_acc = 100 * math.log(importance) if importance > 0 else -100.0
    return TableEntry(
        start,
        end,
        kernel if kept else 0,
        False,
        1,
        tuple(kept),
        latency_ms=latency,
        importance=importance,
        delta_acc=delta_acc,
        delta_loss=-delta_acc / 100,
    )


def _count_paths(entries: Sequence[TableEntry], last: int) -> int:
    count = [1] + [0] * last
    for e in sorted(entries, key=lambda e: e.end):
        count[e.end] += count[e.start]
    return count[last]


def _make_tables(entries: list[TableEntry], **meta: float) -> Tables:
    return Tables(entries=tuple(entries), meta=dict(meta), digest="synthetic")


@st.composite
def synthetic_tables(draw: st.DrawFn, *, grid: bool = True) -> Tables:
    """A random chain of up to 12 positions with breaks, residual spans and valid segments.

    Each entry has an importance and an independent Δacc; the length-1 kept entries share one
    Δacc half of the time (one shared finetune run, the reference of the additive objective).
    """
    last = draw(st.integers(1, 12))
    rng: random.Random = draw(st.randoms(use_true_random=False))

    # off the grid, 6 decimals: sums of different values then differ by far more than the
    # DP's tie tolerance, while sums of the same values in another order differ by float noise
    def latency() -> float:
        return rng.randint(1, 8) * GRID_MS if grid else round(rng.uniform(0.05, 4.0), 6)

    def importance() -> float:
        return rng.randint(0, 32) / 16 if grid else round(rng.uniform(0.0, 2.0), 6)

    def delta() -> float:
        return rng.randint(-64, 8) / 16 if grid else round(rng.uniform(-4.0, 0.5), 6)

    shared = delta() if rng.random() < 0.5 else None
    breaks = {p for p in range(1, last) if rng.random() < 0.2}
    skips = []
    for _ in range(rng.randint(0, 3)):
        if last >= 2:
            s = rng.randint(0, last - 2)
            skips.append((s, rng.randint(s + 2, last)))
    entries: list[TableEntry] = []
    for j in range(1, last + 1):
        for i in range(max(0, j - 5), j):
            if not _valid(i, j, breaks, skips):
                continue
            convs = list(range(i + 1, j + 1))
            if j - i == 1:
                single = delta() if shared is None else shared
                entries.append(_entry(i, j, convs, latency(), importance(), single))
                if rng.random() < 0.5:
                    entries.append(_entry(i, j, [], 0.0, importance(), delta()))
                continue
            if rng.random() < 0.7:
                entries.append(_entry(i, j, convs, latency(), importance(), delta()))
            for size in rng.sample(range(1, j - i), k=min(2, j - i - 1)):
                if rng.random() < 0.6:
                    kept = sorted(rng.sample(convs, k=size))
                    entries.append(_entry(i, j, kept, latency(), importance(), delta()))
    # drop the longest merged entries until the brute force stays small (the singles and
    # removals alone give at most 2^12 paths)
    while _count_paths(entries, last) > MAX_PATHS and any(e.end - e.start > 1 for e in entries):
        longest = max(entries, key=lambda e: (e.end - e.start, e.end))
        entries.remove(longest)
    return _make_tables(entries, importance_base_accuracy=90.0)


# ---------------------------------------------------------------------------------------------
# Brute force, written independently of core/dp.py


def _unchanged(e: TableEntry) -> bool:
    return e.end - e.start == 1 and e.kernel > 0 and len(e.kept_convs) == 1


def _additive_scores(tables: Tables) -> dict[TableEntry, float]:
    """Δacc minus the length-1 kept entries' Δacc when they all agree (else 0); those score 0."""
    singles = {e.delta_acc for e in tables.entries if _unchanged(e)}
    reference = singles.pop() if len(singles) == 1 else 0.0
    return {e: 0.0 if _unchanged(e) else e.delta_acc - reference for e in tables.entries}


def _items(tables: Tables, method: str, objective: str, search: str = "extended") -> list[Item]:
    additive = _additive_scores(tables)

    def value(e: TableEntry) -> float:
        return additive[e] if objective == "additive" else e.importance

    entries = tables.entries
    if method == "layermerge":
        items = [(e.start, e.end, e.latency_ms, value(e)) for e in entries if not e.is_removal]
        if search == "extended":
            items += _items(tables, "layer", objective) + _items(tables, "depth", objective)
        return items
    if method == "layer":
        return [
            (e.start, e.end, 0.0 if e.is_removal else e.latency_ms, value(e))
            for e in entries
            if e.end - e.start == 1 and (e.is_removal or len(e.kept_convs) == 1)
        ]
    # depth: spans with an all-kept entry, at the fastest partition into all-kept entries
    kept = [e for e in entries if not e.is_removal and len(e.kept_convs) == e.end - e.start]

    def fastest(i: int, j: int) -> float:
        if i == j:
            return 0.0
        options = [e.latency_ms + fastest(e.end, j) for e in kept if e.start == i and e.end <= j]
        return min(options, default=math.inf)

    return [(e.start, e.end, fastest(e.start, e.end), value(e)) for e in kept]


def _paths(items: list[Item], last: int) -> list[tuple[float, float]]:
    """(Σ latency, Σ value) of every chain 0 -> last, summed first to last."""
    out: list[tuple[float, float]] = []
    by_start: dict[int, list[Item]] = {}
    for item in set(items):
        by_start.setdefault(item[0], []).append(item)

    def walk(position: int, latency: float, value: float) -> None:
        if position == last:
            out.append((latency, value))
            return
        for _, end, lat, val in by_start.get(position, ()):
            walk(end, latency + lat, value + val)

    walk(0, 0.0, 0.0)
    return out


def _best(paths: list[tuple[float, float]], budget: float) -> tuple[float, float] | None:
    """The best path within budget, ties to the lower latency; None if none fits."""
    fitting = [(lat, val) for lat, val in paths if lat <= budget + 1e-12]
    if not fitting:
        return None
    val = max(v for _, v in fitting)
    return min(lat for lat, v in fitting if v >= val - 1e-9), val


def _pareto(paths: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front: list[tuple[float, float]] = []
    for lat, val in sorted(paths, key=lambda p: (p[0], -p[1])):
        if not front or val > front[-1][1] + 1e-12:
            front.append((lat, val))
    return front


def _check_solution(solution: Solution, tables: Tables, method: str, search: str) -> None:
    """Structure shared by all methods: a chain of table entries from 0 to the last position."""
    segments = solution.segments
    assert segments[0].start == 0 and segments[-1].end == tables.last_position
    assert all(a.end == b.start for a, b in zip(segments, segments[1:], strict=False))
    keys = {e.key for e in tables.entries}
    assert all(s.key in keys for s in segments)
    assert solution.latency_ms == pytest.approx(sum(s.latency_ms for s in segments))
    assert solution.importance == pytest.approx(sum(s.importance for s in segments))
    assert solution.kept_activations[0] == 0
    assert solution.kept_activations[-1] == tables.last_position
    assert solution.tables_digest == tables.digest
    ends = [s.end for s in segments]
    assert set(solution.kept_activations[1:]) <= set(ends)
    if method == "depth":
        assert all(len(s.kept_convs) == s.end - s.start and s.kernel > 0 for s in segments)
    if method != "depth" and not (method == "layermerge" and search == "extended"):
        assert list(solution.kept_activations) == [0, *ends]  # no split merges
    if method == "layer":
        assert all(s.end - s.start == 1 for s in segments)
        assert all((s.kernel == 0) == (s.kept_convs == ()) for s in segments)
    if method == "layermerge" and search == "paper":
        assert all(s.kernel > 0 for s in segments)


def _grid_budgets(paths: list[tuple[float, float]]) -> list[float]:
    latencies = sorted({lat for lat, _ in paths})
    sample = latencies[:: max(1, len(latencies) // 12)] + [latencies[-1]]
    return sorted({0.0, *sample, *(max(0.0, b - GRID_MS) for b in sample), sample[-1] + 3})


# ---------------------------------------------------------------------------------------------
# The exact solve, the binned DP and the frontier against brute force


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize(("method", "search"), SETUPS)
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_solve_is_the_exact_optimum(
    tables: Tables, method: str, search: str, objective: str, data: st.DataObject
) -> None:
    paths = _paths(_items(tables, method, objective, search), tables.last_position)
    top = max(lat for lat, _ in paths)
    budgets = [data.draw(st.floats(0.0, top * 1.2)) for _ in range(5)] + [top]
    for budget in budgets:
        best = _best(paths, budget)
        kwargs = {"method": method, "objective": objective, "search": search}
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                dp.solve(tables, budget_ms=budget, **kwargs)
            continue
        solution = dp.solve(tables, budget_ms=budget, **kwargs)
        assert solution.importance == pytest.approx(best[1], abs=1e-9)
        assert solution.latency_ms == pytest.approx(best[0], abs=1e-9)  # ties: lower latency
        assert solution.latency_ms <= budget * (1 + 1e-9)
        assert solution.budget_ms == budget and solution.method == method
        assert solution.objective == objective and solution.extra["exact"] is True
        _check_solution(solution, tables, method, search)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize(("method", "search"), SETUPS)
@SETTINGS
@given(tables=synthetic_tables())
def test_binned_dp_equals_brute_force_on_the_grid(
    tables: Tables, method: str, search: str, objective: str
) -> None:
    paths = _paths(_items(tables, method, objective, search), tables.last_position)
    kwargs = {"method": method, "objective": objective, "search": search, "bin_ms": GRID_MS}
    for budget in _grid_budgets(paths):
        best = _best(paths, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                dp.solve_binned(tables, budget_ms=budget, **kwargs)
            continue
        solution = dp.solve(tables, budget_ms=budget, **kwargs)  # bin_ms selects the binned DP
        assert solution.extra["bin_ms"] == GRID_MS
        assert solution.importance == pytest.approx(best[1], abs=1e-9)
        assert solution.latency_ms == pytest.approx(best[0], abs=1e-9)
        assert solution.latency_ms <= budget
        _check_solution(solution, tables, method, search)


@pytest.mark.parametrize(("method", "search"), SETUPS)
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_binned_dp_off_grid_never_exceeds_budget_nor_beats_the_exact_solve(
    tables: Tables, method: str, search: str, data: st.DataObject
) -> None:
    bin_ms = data.draw(st.sampled_from([0.05, 0.1, 0.3]))
    items = _items(tables, method, "additive", search)
    # latencies in whole bins, rounded up (a float-noise excess over a grid point is forgiven)
    rounded = [(s, e, math.ceil(lat / bin_ms - 1e-9), val) for s, e, lat, val in items]
    rounded_paths = _paths(rounded, tables.last_position)
    top = max(lat for lat, _ in _paths(items, tables.last_position))
    for _ in range(6):
        budget = data.draw(st.floats(0.0, top * 1.2))
        rounded_best = _best(rounded_paths, math.floor(budget / bin_ms + 1e-9))
        if rounded_best is None:
            with pytest.raises(InfeasibleBudgetError):
                dp.solve_binned(
                    tables, budget_ms=budget, method=method, search=search, bin_ms=bin_ms
                )
            continue
        solution = dp.solve_binned(
            tables, budget_ms=budget, method=method, search=search, bin_ms=bin_ms
        )
        exact = dp.solve(tables, budget_ms=budget, method=method, search=search)
        assert solution.latency_ms <= budget
        assert rounded_best[1] - 1e-9 <= solution.importance <= exact.importance + 1e-9
        _check_solution(solution, tables, method, search)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize(("method", "search"), SETUPS)
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_frontier_equals_enumerated_pareto_set(
    tables: Tables, method: str, search: str, objective: str, data: st.DataObject
) -> None:
    paths = _paths(_items(tables, method, objective, search), tables.last_position)
    expected = _pareto(paths)
    points = dp.frontier(tables, method=method, objective=objective, search=search)
    assert len(points) == len(expected)
    for point, (lat, val) in zip(points, expected, strict=True):
        assert point.latency_ms == pytest.approx(lat, abs=1e-9)
        assert point.importance == pytest.approx(val, abs=1e-9)
        assert point.objective == objective
        solution = point.solution()
        assert solution.latency_ms == pytest.approx(point.latency_ms, abs=1e-9)
        assert solution.importance == pytest.approx(point.importance, abs=1e-9)
        assert solution.predicted == pytest.approx(point.predicted, abs=1e-9)
        _check_solution(solution, tables, method, search)
    for _ in range(5):
        budget = data.draw(st.floats(0.0, expected[-1][0] * 1.1))
        best = _best(paths, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError, match=f"{expected[0][0]:.6g} ms"):
                dp.pick(points, budget)
            continue
        picked = dp.pick(points, budget)
        assert picked.importance == pytest.approx(best[1], abs=1e-9)
        assert picked.latency_ms <= budget + 1e-9 and picked.budget_ms == budget


@SETTINGS
@given(tables=synthetic_tables())
def test_frontier_tolerance_stays_within_its_bound(tables: Tables) -> None:
    exact = dp.frontier(tables, objective="paper")
    tolerance = 0.05
    approx = dp.frontier(tables, objective="paper", tolerance=tolerance)
    assert len(approx) <= len(exact)
    bound = (1 + tolerance) ** tables.last_position
    for point in exact:
        picked = dp.pick(approx, point.latency_ms)
        assert picked.latency_ms <= point.latency_ms
        assert picked.importance * bound >= point.importance - 1e-9


# ---------------------------------------------------------------------------------------------
# LayerMerge against the baselines


@pytest.mark.parametrize("objective", OBJECTIVES)
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_extended_layermerge_scores_at_least_each_baseline_at_every_budget(
    tables: Tables, objective: str, data: st.DataObject
) -> None:
    merged = dp.frontier(tables, objective=objective)
    for baseline in ("depth", "layer"):
        try:
            points = dp.frontier(tables, method=baseline, objective=objective)
        except TableMismatchError:  # the baseline has no way through some position
            continue
        for point in points:  # every baseline optimum is matched at its own latency...
            best = dp.pick(merged, point.latency_ms)
            assert best.importance >= point.importance - 1e-9
            assert best.latency_ms <= point.latency_ms * (1 + 1e-9)
        for _ in range(4):  # ...and so at any budget, by the solve every entry point calls
            budget = data.draw(st.floats(0.0, points[-1].latency_ms * 1.1))
            try:
                theirs = dp.solve(tables, budget_ms=budget, method=baseline, objective=objective)
            except InfeasibleBudgetError:
                continue
            ours = dp.solve(tables, budget_ms=budget, objective=objective)
            assert ours.importance >= theirs.importance - 1e-9


@SETTINGS
@given(tables=synthetic_tables())
def test_paper_search_layermerge_dominates_depth_without_splits(tables: Tables) -> None:
    depth_only = dp.restricted_tables(tables, "depth", search="paper")
    assert all(e.keeps_all_convs and not e.is_removal for e in depth_only.entries)
    paths = _paths(_items(tables, "layermerge", "additive", "paper"), tables.last_position)
    for budget in _grid_budgets(paths):
        try:
            restricted = dp.solve(depth_only, budget_ms=budget, search="paper")
        except InfeasibleBudgetError:
            continue
        except TableMismatchError:  # some position has no all-kept way through
            return
        full = dp.solve(tables, budget_ms=budget, search="paper")
        assert full.importance >= restricted.importance - 1e-9


def test_restricted_tables_follow_the_search_space() -> None:
    tables = _two_conv_tables()
    removal = (1, 2, 0, False, 1)
    assert removal in {e.key for e in dp.restricted_tables(tables, "layermerge").entries}
    paper = dp.restricted_tables(tables, "layermerge", search="paper")
    assert removal not in {e.key for e in paper.entries}
    with pytest.raises(dp.InvalidBudgetError, match="search"):
        dp.restricted_tables(tables, "layermerge", search="wide")


# ---------------------------------------------------------------------------------------------
# The additive objective


def _two_conv_tables(**meta: float) -> Tables:
    """Positions 0..2: singles of 1 ms, a slow all-kept merge (0, 2], a pruned (0, 2], a removal.

    Importances and Δacc are independent here, to tell the two objectives apart. The singles
    share Δacc -0.5 (the finetuned original), the reference of the additive objective.
    """
    return _make_tables(
        [
            _entry(0, 1, [1], 1.0, 1.0, -0.5),
            _entry(1, 2, [2], 1.0, 1.0, -0.5),
            _entry(0, 2, [1, 2], 5.0, 3.0, 0.0),
            _entry(0, 2, [1], 0.75, 1.5, -3.5),
            _entry(1, 2, [], 0.0, 1.5, -2.5),
        ],
        **meta,
    )


def test_additive_scores_are_deltas_against_the_unchanged_network() -> None:
    tables = _two_conv_tables(importance_base_accuracy=97.0)
    scale = dp.objective_scale(tables)
    assert (scale.metric, scale.reference, scale.original) == ("accuracy", -0.5, 97.0)
    scores = {
        (c.start, c.end, len(c.parts[0].kept_convs)): c.importance
        for c in dp.candidates(tables, search="paper")
    }
    assert scores[(0, 1, 1)] == 0.0 and scores[(1, 2, 1)] == 0.0  # unchanged: 0
    assert scores[(0, 2, 2)] == 0.5 and scores[(0, 2, 1)] == -3.0  # Δacc - (-0.5)
    keep = dp.solve(tables, budget_ms=2.0, search="paper")
    assert keep.importance == 0.0 and keep.predicted == 97.0 and keep.original_metric == 97.0
    assert keep.kept_activations == (0, 1, 2) and keep.metric == "accuracy"
    # the merge that finetuned better (+0.5 points), as Kim23's split: as fast as keeping all
    merged = dp.solve(tables, budget_ms=5.0)
    assert merged.importance == 0.5 and merged.predicted == 97.5 and merged.latency_ms == 2.0
    pruned = dp.solve(tables, budget_ms=0.9)
    assert pruned.importance == -3.0 and pruned.predicted == 94.0


def test_the_paper_objective_sums_importance_and_still_predicts() -> None:
    tables = _two_conv_tables(importance_base_accuracy=97.0)
    solution = dp.solve(tables, budget_ms=5.0, objective="paper")
    assert solution.importance == 3.0 and solution.objective == "paper"
    assert solution.predicted == 97.5  # the same chain, scored on the accuracy axis
    # it prefers removing conv 2 (1 + 1.5) to keeping it (1 + 1), though that costs 2 points
    two = dp.solve(tables, budget_ms=2.0, objective="paper", method="layer")
    assert two.importance == 2.5 and two.predicted == 95.0


def test_a_removal_scores_its_own_delta_with_no_method_correction() -> None:
    tables = _two_conv_tables()
    layer = dp.solve(tables, budget_ms=1.0, method="layer")
    assert [s.kernel for s in layer.segments] == [3, 0] and layer.importance == -2.0
    assert layer.kept_activations == (0, 1, 2) and layer.segments[1].kept_convs == ()
    paper = dp.solve(tables, budget_ms=1.0, method="layer", objective="paper")
    assert paper.importance == 2.5  # 1.0 + 1.5: the importance column as it is
    merged = dp.solve(tables, budget_ms=1.0)  # extended: the removal beats the pruned merge
    assert merged.importance == -2.0 and [s.kernel for s in merged.segments] == [3, 0]
    narrow = dp.solve(tables, budget_ms=1.0, search="paper")
    assert narrow.importance == -3.0 and narrow.kept_convs == (0, 1)
    assert narrow.extra["search"] == "paper" and merged.extra["search"] == "extended"


def test_unshared_single_runs_leave_the_reference_at_zero() -> None:
    entries = [
        _entry(0, 1, [1], 1.0, 1.0, -0.5),
        _entry(1, 2, [2], 1.0, 1.0, -0.7),  # the paper's re-init: each single its own run
        _entry(0, 2, [1, 2], 1.5, 1.0, -2.0),
    ]
    tables = _make_tables(entries)
    assert dp.objective_scale(tables).reference == 0.0
    solution = dp.solve(tables, budget_ms=1.5)
    assert solution.importance == -2.0 and solution.predicted is None  # no original recorded


def test_diffusion_tables_score_minus_the_epsilon_loss_delta() -> None:
    def unet_entry(start: int, end: int, kept: list[int], latency: float, dloss: float):
        kernel = 1 + 2 * len(kept) if kept else 0
        return TableEntry(
            start, end, kernel, False, 1, tuple(kept), latency_ms=latency,
            importance=math.exp(-dloss / 6.0), delta_loss=dloss,
        )  # fmt: skip

    entries = [
        unet_entry(0, 1, [1], 1.0, 0.0),
        unet_entry(1, 2, [2], 1.0, 0.0),
        unet_entry(0, 2, [1, 2], 1.5, 0.25),
        _as_identity(unet_entry(1, 2, [], 0.0, 1.0)),
    ]
    tables = _make_tables(entries, importance_base_loss=6.0)
    scale = dp.objective_scale(tables)
    assert (scale.metric, scale.reference, scale.original) == ("epsilon_loss", 0.0, 6.0)
    merged = dp.solve(tables, budget_ms=1.5)
    assert merged.importance == -0.25 and merged.predicted == 6.25  # the ε-loss grows by 0.25
    assert merged.to_dict()["predicted_epsilon_loss"] == 6.25
    fastest = dp.solve(tables, budget_ms=1.0)  # the identity segment: loss + 1.0
    assert fastest.importance == -1.0 and fastest.predicted == 7.0


def _as_identity(entry: TableEntry) -> TableEntry:
    """The entry as an identity segment the latency table lists (a DDPM upsample conv)."""
    return replace(entry, identity_segment=True)


def test_the_additive_objective_needs_the_delta_columns() -> None:
    bare = TableEntry(0, 1, 3, False, 1, (1,), latency_ms=1.0, importance=1.0)
    changed = TableEntry(0, 1, 0, False, 1, (), latency_ms=0.0, importance=0.9)
    tables = _make_tables([bare, changed])
    with pytest.raises(TableMismatchError, match="no Δaccuracy or Δε-loss"):
        dp.solve(tables, budget_ms=1.0)
    assert dp.solve(tables, budget_ms=1.0, objective="paper").importance == 1.0
    partial = _make_tables([_entry(0, 1, [1], 1.0, 1.0, -0.1), changed])
    with pytest.raises(TableMismatchError, match="has no delta_acc"):
        dp.solve(partial, budget_ms=1.0)


# ---------------------------------------------------------------------------------------------
# Budgets


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("method", ["layermerge", "depth", "layer"])
@SETTINGS
@given(tables=synthetic_tables(grid=False), drift=st.floats(-1e-6, 1e-6))
def test_budget_one_admits_keeping_everything(
    tables: Tables, method: str, objective: str, drift: float
) -> None:
    singles = sorted((e for e in tables.entries if _unchanged(e)), key=lambda e: e.end)
    keep_latency = sum(e.latency_ms for e in singles)
    # meta.json's figure comes from unrounded latencies: it differs in the 7th digit
    tables.meta["original_table_latency_ms"] = keep_latency * (1 + drift)
    assert tables.original_latency_ms == keep_latency
    solution = dp.solve(tables, budget_fraction=1.0, method=method, objective=objective)
    keep_value = sum(0.0 if objective == "additive" else e.importance for e in singles)
    assert solution.importance >= keep_value - 1e-9
    assert solution.latency_ms <= keep_latency * (1 + 1e-9)


def test_budget_arguments_are_checked() -> None:
    tables = _two_conv_tables()
    bad = [
        ({}, "exactly one"),
        ({"budget_ms": 1.0, "budget_fraction": 0.5}, "exactly one"),
        ({"budget_ms": -1.0}, "-1"),
        ({"budget_ms": math.inf}, "inf"),
        ({"budget_fraction": math.nan}, "nan"),
        ({"budget_fraction": 1e308}, "not a finite budget"),
        ({"budget_ms": 1.0, "bin_ms": 0.0}, "bin_ms"),
        ({"budget_ms": 1.0, "bin_ms": math.nan}, "bin_ms"),
        ({"budget_ms": 1.0, "bin_ms": 1e-6}, "larger bin_ms"),
        ({"budget_ms": 1.0, "objective": "fancy"}, "objective"),
        ({"budget_ms": 1.0, "search": "wide"}, "search"),
    ]
    for kwargs, message in bad:
        with pytest.raises(dp.InvalidBudgetError, match=message) as err:
            dp.solve(tables, **kwargs)
        assert isinstance(err.value, LayerMergeError) and isinstance(err.value, ValueError)
    with pytest.raises(dp.InvalidBudgetError, match="tolerance"):
        dp.frontier(tables, tolerance=-0.1)
    with pytest.raises(dp.InvalidBudgetError, match="budget"):
        dp.pick(dp.frontier(tables), math.nan)
    assert dp.solve(tables, budget_fraction=1.0).budget_ms == tables.original_latency_ms


def test_infeasible_budget_states_the_smallest_latency() -> None:
    tables = _two_conv_tables()
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 0\.75 ms \(37\.5% of") as err:
        dp.solve(tables, budget_ms=0.5, search="paper")
    assert isinstance(err.value, LayerMergeError) and isinstance(err.value, ValueError)
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 0\.75 ms"):
        dp.pick(dp.frontier(tables, search="paper"), 0.5)
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 2 ms"):
        dp.solve(tables, budget_fraction=0.5, method="depth")
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 2 ms"):
        dp.solve(tables, budget_fraction=0.5, method="depth", bin_ms=0.25)


def test_depth_executes_an_activation_free_span_as_its_fastest_split() -> None:
    tables = _two_conv_tables()
    for objective in OBJECTIVES:
        solution = dp.solve(tables, budget_ms=2.0, method="depth", objective=objective)
        # the (0, 2] span (the best score) runs as (0, 1] + (1, 2] in 2 ms, no activation at 1
        assert solution.latency_ms == 2.0
        assert [(s.start, s.end) for s in solution.segments] == [(0, 1), (1, 2)]
        assert solution.kept_activations == (0, 2)
    spans = {(c.start, c.end): c for c in dp.candidates(tables, method="depth")}
    assert spans[(0, 2)].latency_ms == 2.0 and len(spans[(0, 2)].parts) == 2
    # the extended LayerMerge has the same move
    assert dp.solve(tables, budget_ms=2.0).kept_activations == (0, 2)


def test_binned_latencies_round_up_so_budgets_hold() -> None:
    tables = _make_tables([_entry(0, 1, [1], 0.35, 1.0)])
    assert dp.solve(tables, budget_ms=0.4, bin_ms=0.1).latency_ms == 0.35
    # 0.35 ms is 4 bins of 0.1 ms, the 0.35 ms budget only 3: the message says to shrink the bin
    with pytest.raises(InfeasibleBudgetError, match="smaller bin_ms"):
        dp.solve(tables, budget_ms=0.35, bin_ms=0.1)
    assert dp.solve(tables, budget_ms=0.35, bin_ms=0.05).latency_ms == 0.35
    assert dp.solve(tables, budget_ms=0.35).latency_ms == 0.35  # the exact solve has no bins


def test_binned_default_bin_is_the_papers_for_large_budgets_and_finer_for_small_ones() -> None:
    tables = _two_conv_tables()
    assert dp.solve_binned(tables, budget_ms=1000.0).extra["bin_ms"] == dp.DEFAULT_BIN_MS
    small = dp.solve_binned(tables, budget_ms=2.0)
    assert small.extra["bin_ms"] == pytest.approx(2.0 / dp.DEFAULT_MIN_BINS)
    assert small.extra["budget_bins"] == dp.DEFAULT_MIN_BINS


# ---------------------------------------------------------------------------------------------
# Registry, errors, comparisons, files


def test_method_registry_is_strict() -> None:
    assert dp.list_methods()[:3] == ["layermerge", "depth", "layer"]
    with pytest.raises(dp.UnknownMethodError, match="layermerge, depth, layer") as err:
        dp.solve(_two_conv_tables(), budget_ms=1.0, method="kim23")
    assert isinstance(err.value, LayerMergeError) and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="already registered"):
        dp.register_method("depth", entries=lambda e: True)


def test_tables_without_importance_or_a_chain_are_refused() -> None:
    missing = _make_tables([TableEntry(0, 1, 3, False, 1, (1,), latency_ms=1.0)])
    with pytest.raises(TableMismatchError, match="no importance"):
        dp.solve(missing, budget_ms=1.0, objective="paper")
    gap = _make_tables([_entry(0, 1, [1], 1.0, 1.0), _entry(0, 2, [1], 1.0, 1.0)])
    with pytest.raises(TableMismatchError, match="do not chain"):
        dp.solve(gap, budget_ms=5.0, method="layer")
    with pytest.raises(TableMismatchError, match="do not chain"):
        dp.frontier(gap, method="layer")


def test_compare_methods_reports_each_methods_optimum() -> None:
    tables = _two_conv_tables(importance_base_accuracy=97.0)
    rows = dp.compare_methods(tables, [0.5, 1.0, 2.0])
    assert [row["budget_ms"] for row in rows] == [0.5, 1.0, 2.0]
    assert rows[0]["layermerge_importance"] is None and rows[0]["layer_latency_ms"] is None
    assert rows[1]["layermerge_importance"] == -2.0 and rows[1]["depth_importance"] is None
    assert rows[1]["layermerge_predicted"] == 95.0
    assert rows[2]["depth_importance"] == 0.5 and rows[2]["depth_latency_ms"] == 2.0
    assert rows[2]["budget_fraction"] == 1.0


def test_the_frontier_is_cached_per_table_and_settings() -> None:
    tables = _two_conv_tables()
    first = dp.frontier(tables)
    again = dp.frontier(tables)
    assert first == again and first is not again  # a copy: callers may not mutate the cache
    assert first[0]._trace is again[0]._trace
    assert dp.frontier(tables, search="paper")[0]._trace is not first[0]._trace
    assert dp.frontier(tables, objective="paper")[0].objective == "paper"


@pytest.mark.parametrize(("method", "search"), SETUPS)
@settings(max_examples=15, deadline=None)
@given(tables=synthetic_tables(grid=False))
def test_solution_json_round_trip(tables: Tables, method: str, search: str) -> None:
    top = dp.frontier(tables, method=method, search=search)[-1]
    budget = top.latency_ms * 1.01 + 0.2  # room for the binned DP's rounding up
    for solution in (
        dp.solve(tables, budget_ms=budget, method=method, search=search),
        dp.solve(tables, budget_ms=budget, method=method, objective="paper"),
        dp.solve(tables, budget_ms=budget, method=method, search=search, bin_ms=0.01),
        top.solution(),
    ):
        data = json.loads(json.dumps(solution.to_dict()))
        assert data["predicted_accuracy"] == solution.predicted
        again = Solution.from_dict(data)
        assert again == solution
        assert again.to_dict() == solution.to_dict()


def test_solution_files_without_an_objective_are_the_papers() -> None:
    data = dp.solve(_two_conv_tables(), budget_ms=2.0).to_dict()
    for key in ("objective", "metric", "predicted_accuracy", "original_accuracy"):
        data.pop(key, None)
    old = Solution.from_dict(data)
    assert old.objective == "paper" and old.metric == "" and old.predicted is None


def test_the_benchmarks_synthetic_table_keeps_its_stated_budget_base() -> None:
    """bench/bench_dp.py's "50%" must be 50% of keeping everything, the 40 ms it states."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_dp.py"
    spec = importlib.util.spec_from_file_location("bench_dp", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tables = bench.mobilenet_v2_like_tables()
    assert tables.original_latency_ms == pytest.approx(bench.KEEP_EVERYTHING_MS, abs=1e-9)
    keep = dp.solve(tables, budget_fraction=1.0)
    assert keep.importance >= 0.0 and keep.latency_ms <= bench.KEEP_EVERYTHING_MS + 1e-9


def test_distortion_tables_score_minus_the_distortion_not_a_flat_accuracy() -> None:
    """The data-light mode measures no accuracy (Δacc is 0 throughout on its calibration images):
    its additive score is log(importance) = -distortion, so removals are not free."""
    entries = [
        replace(e, delta_acc=0.0, delta_loss=0.0)
        for e in (
            _entry(0, 1, [1], 1.0, 1.0),
            _entry(1, 2, [2], 1.0, 1.0),
            _entry(0, 2, [1, 2], 1.5, math.exp(-0.1)),
            _entry(1, 2, [], 0.0, math.exp(-2.0)),
        )
    ]
    tables = _make_tables(entries, importance_normalization="distortion")
    assert dp.objective_scale(tables).metric == "distortion"
    keep = dp.solve(tables, budget_ms=2.0)
    assert keep.importance == 0.0 and [s.kernel for s in keep.segments] == [3, 3]
    merged = dp.solve(tables, budget_ms=1.5)  # the merge distorts less than the removal
    assert merged.importance == pytest.approx(-0.1) and [s.kernel for s in merged.segments] == [5]
    assert merged.predicted is None and merged.to_dict()["metric"] == "distortion"
    removed = dp.solve(tables, budget_ms=1.0)
    assert removed.importance == pytest.approx(-2.0)
    # a distortion so large that exp(-distortion) underflowed to 0 stays a (huge) finite cost
    tables = _make_tables(
        [*entries[:3], replace(entries[3], importance=0.0)], importance_normalization="distortion"
    )
    assert dp.solve(tables, budget_ms=1.0).importance < -700
    assert Solution.from_dict(json.loads(json.dumps(removed.to_dict()))).metric == "distortion"
