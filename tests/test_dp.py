"""Tests of core/dp.py: the DP and the frontier against brute force, on random synthetic chains."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import dp
from core.errors import InfeasibleBudgetError, LayerMergeError, TableMismatchError
from core.solution import Solution
from core.tables import TableEntry, Tables

GRID_MS = 0.5  # grid latencies are multiples of this, so rounding to bins of it is exact
MAX_PATHS = 4000  # keeps the brute force fast
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Item = tuple[int, int, float, float]  # (start, end, latency_ms, importance)


# ---------------------------------------------------------------------------------------------
# Synthetic tables


def _valid(i: int, j: int, breaks: set[int], skips: list[tuple[int, int]]) -> bool:
    """LAYERMERGE.md §1.3: no break strictly inside, no partial overlap of a residual span."""
    if any(i < b < j for b in breaks):
        return False
    return all(not (i < s < j < t) and not (s < i < t < j) for s, t in skips)


def _entry(
    start: int, end: int, kept: Sequence[int], latency: float, importance: float
) -> TableEntry:
    kernel = 1 + 2 * len(kept)  # 3x3 convs: K = 1 + Σ (k - 1); 0 for a removal
    return TableEntry(
        start,
        end,
        kernel if kept else 0,
        False,
        1,
        tuple(kept),
        latency_ms=latency,
        importance=importance,
    )


def _count_paths(entries: Sequence[TableEntry], last: int) -> int:
    count = [1] + [0] * last
    for e in sorted(entries, key=lambda e: e.end):
        count[e.end] += count[e.start]
    return count[last]


def _make_tables(entries: list[TableEntry]) -> Tables:
    original = sum(e.latency_ms for e in entries if e.end - e.start == 1 and e.keeps_all_convs)
    return Tables(
        entries=tuple(entries), meta={"original_table_latency_ms": original}, digest="synthetic"
    )


@st.composite
def synthetic_tables(draw: st.DrawFn, *, grid: bool = True) -> Tables:
    """A random chain of up to 12 positions with breaks, residual spans and valid segments."""
    last = draw(st.integers(1, 12))
    rng: random.Random = draw(st.randoms(use_true_random=False))

    # off the grid, 6 decimals: sums of different values then differ by far more than the
    # DP's tie tolerance, while sums of the same values in another order differ by float noise
    def latency() -> float:
        return rng.randint(1, 8) * GRID_MS if grid else round(rng.uniform(0.05, 4.0), 6)

    def importance() -> float:
        return rng.randint(0, 32) / 16 if grid else round(rng.uniform(0.0, 2.0), 6)

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
                entries.append(_entry(i, j, convs, latency(), importance()))
                if rng.random() < 0.5:
                    entries.append(_entry(i, j, [], 0.0, importance()))
                continue
            if rng.random() < 0.7:
                entries.append(_entry(i, j, convs, latency(), importance()))
            for size in rng.sample(range(1, j - i), k=min(2, j - i - 1)):
                if rng.random() < 0.6:
                    kept = sorted(rng.sample(convs, k=size))
                    entries.append(_entry(i, j, kept, latency(), importance()))
    # drop the longest merged entries until the brute force stays small
    while _count_paths([e for e in entries if not e.is_removal], last) > MAX_PATHS:
        longest = max(entries, key=lambda e: (e.end - e.start, e.end))
        entries.remove(longest)
    return _make_tables(entries)


# ---------------------------------------------------------------------------------------------
# Brute force, written independently of core/dp.py


def _items(tables: Tables, method: str) -> list[Item]:
    entries = tables.entries
    if method == "layermerge":
        return [(e.start, e.end, e.latency_ms, e.importance) for e in entries if not e.is_removal]
    if method == "layer":
        return [
            # a removal adds no segment: it scores its importance minus a neutral segment's 1
            (e.start, e.end, 0.0, e.importance - 1.0)
            if e.is_removal
            else (e.start, e.end, e.latency_ms, e.importance)
            for e in entries
            if e.end - e.start == 1 and (e.is_removal or e.keeps_all_convs)
        ]
    # depth: spans with an all-kept entry, at the fastest partition into all-kept entries
    kept = [e for e in entries if not e.is_removal and e.keeps_all_convs]

    def fastest(i: int, j: int) -> float:
        if i == j:
            return 0.0
        options = [e.latency_ms + fastest(e.end, j) for e in kept if e.start == i and e.end <= j]
        return min(options, default=math.inf)

    return [(e.start, e.end, fastest(e.start, e.end), e.importance) for e in kept]


def _paths(items: list[Item], last: int) -> list[tuple[float, float]]:
    """(Σ latency, Σ importance) of every chain 0 -> last, summed first to last."""
    out: list[tuple[float, float]] = []

    def walk(position: int, latency: float, importance: float) -> None:
        if position == last:
            out.append((latency, importance))
            return
        for start, end, lat, imp in items:
            if start == position:
                walk(end, latency + lat, importance + imp)

    walk(0, 0.0, 0.0)
    return out


def _best(paths: list[tuple[float, float]], budget: float) -> tuple[float, float] | None:
    """The most important path within budget, ties to the lower latency; None if none fits."""
    fitting = [(lat, imp) for lat, imp in paths if lat <= budget + 1e-12]
    if not fitting:
        return None
    imp = max(i for _, i in fitting)
    return min(lat for lat, i in fitting if i >= imp - 1e-9), imp


def _pareto(paths: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front: list[tuple[float, float]] = []
    for lat, imp in sorted(paths, key=lambda p: (p[0], -p[1])):
        if not front or imp > front[-1][1] + 1e-12:
            front.append((lat, imp))
    return front


def _check_solution(solution: Solution, tables: Tables, method: str) -> None:
    """Structure shared by all methods: a chain of table entries from 0 to the last position."""
    segments = solution.segments
    assert segments[0].start == 0 and segments[-1].end == tables.last_position
    assert all(a.end == b.start for a, b in zip(segments, segments[1:], strict=False))
    keys = {e.key for e in tables.entries}
    assert all(s.key in keys for s in segments)
    assert solution.latency_ms == pytest.approx(sum(s.latency_ms for s in segments))
    assert solution.importance == pytest.approx(sum(s.importance for s in segments))
    assert solution.kept_activations[0] == 0
    assert solution.tables_digest == tables.digest
    ends = [s.end for s in segments]
    if method == "depth":
        assert set(solution.kept_activations[1:]) <= set(ends)
        assert solution.kept_activations[-1] == tables.last_position
        assert all(len(s.kept_convs) == s.end - s.start and s.kernel > 0 for s in segments)
    else:
        assert list(solution.kept_activations) == [0, *ends]
    if method == "layer":
        assert all(s.end - s.start == 1 for s in segments)
        assert all((s.kernel == 0) == (s.kept_convs == ()) for s in segments)
    if method == "layermerge":
        assert all(s.kernel > 0 for s in segments)


def _grid_budgets(paths: list[tuple[float, float]]) -> list[float]:
    latencies = sorted({lat for lat, _ in paths})
    sample = latencies[:: max(1, len(latencies) // 12)] + [latencies[-1]]
    return sorted({0.0, *sample, *(max(0.0, b - GRID_MS) for b in sample), sample[-1] + 3})


# ---------------------------------------------------------------------------------------------
# The DP against brute force


@pytest.mark.parametrize("method", ["layermerge", "depth", "layer"])
@SETTINGS
@given(tables=synthetic_tables())
def test_solve_equals_brute_force_on_the_grid(tables: Tables, method: str) -> None:
    paths = _paths(_items(tables, method), tables.last_position)
    for budget in _grid_budgets(paths):
        best = _best(paths, budget)
        if best is None:
            with pytest.raises(InfeasibleBudgetError):
                dp.solve(tables, budget_ms=budget, method=method, bin_ms=GRID_MS)
            continue
        solution = dp.solve(tables, budget_ms=budget, method=method, bin_ms=GRID_MS)
        assert solution.importance == pytest.approx(best[1], abs=1e-9)
        assert solution.latency_ms == pytest.approx(best[0], abs=1e-9)  # ties: lower latency
        assert solution.latency_ms <= budget
        assert solution.budget_ms == budget and solution.method == method
        _check_solution(solution, tables, method)


@pytest.mark.parametrize("method", ["layermerge", "depth", "layer"])
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_solve_off_grid_never_exceeds_budget(
    tables: Tables, method: str, data: st.DataObject
) -> None:
    bin_ms = data.draw(st.sampled_from([0.05, 0.1, 0.3]))
    items = _items(tables, method)
    # latencies in whole bins, rounded up (a float-noise excess over a grid point is forgiven)
    rounded = [(s, e, math.ceil(lat / bin_ms - 1e-9), imp) for s, e, lat, imp in items]
    exact_paths = _paths(items, tables.last_position)
    rounded_paths = _paths(rounded, tables.last_position)
    top = max(lat for lat, _ in exact_paths)
    for _ in range(6):
        budget = data.draw(st.floats(0.0, top * 1.2))
        rounded_best = _best(rounded_paths, math.floor(budget / bin_ms + 1e-9))
        if rounded_best is None:
            with pytest.raises(InfeasibleBudgetError):
                dp.solve(tables, budget_ms=budget, method=method, bin_ms=bin_ms)
            continue
        solution = dp.solve(tables, budget_ms=budget, method=method, bin_ms=bin_ms)
        exact_best = _best(exact_paths, budget)
        assert exact_best is not None
        assert solution.latency_ms <= budget
        assert rounded_best[1] - 1e-9 <= solution.importance <= exact_best[1] + 1e-9
        _check_solution(solution, tables, method)


@pytest.mark.parametrize("method", ["layermerge", "depth", "layer"])
@SETTINGS
@given(tables=synthetic_tables(grid=False), data=st.data())
def test_frontier_equals_enumerated_pareto_set(
    tables: Tables, method: str, data: st.DataObject
) -> None:
    paths = _paths(_items(tables, method), tables.last_position)
    expected = _pareto(paths)
    points = dp.frontier(tables, method=method)
    assert len(points) == len(expected)
    for point, (lat, imp) in zip(points, expected, strict=True):
        assert point.latency_ms == pytest.approx(lat, abs=1e-9)
        assert point.importance == pytest.approx(imp, abs=1e-9)
        solution = point.solution()
        assert solution.latency_ms == pytest.approx(point.latency_ms, abs=1e-9)
        assert solution.importance == pytest.approx(point.importance, abs=1e-9)
        _check_solution(solution, tables, method)
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
    exact = dp.frontier(tables)
    tolerance = 0.05
    approx = dp.frontier(tables, tolerance=tolerance)
    assert len(approx) <= len(exact)
    bound = (1 + tolerance) ** tables.last_position
    for point in exact:
        picked = dp.pick(approx, point.latency_ms)
        assert picked.latency_ms <= point.latency_ms
        assert picked.importance * bound >= point.importance - 1e-9


# ---------------------------------------------------------------------------------------------
# LayerMerge against the baselines


@SETTINGS
@given(tables=synthetic_tables())
def test_layermerge_dominates_depth_without_splits(tables: Tables) -> None:
    depth_only = dp.restricted_tables(tables, "depth")
    assert all(e.keeps_all_convs and not e.is_removal for e in depth_only.entries)
    paths = _paths(_items(tables, "layermerge"), tables.last_position)
    for budget in _grid_budgets(paths):
        try:
            restricted = dp.solve(depth_only, budget_ms=budget, bin_ms=GRID_MS)
        except InfeasibleBudgetError:
            continue
        except TableMismatchError:  # some position has no all-kept way through
            return
        full = dp.solve(tables, budget_ms=budget, bin_ms=GRID_MS)
        assert full.importance >= restricted.importance - 1e-9


@st.composite
def layer_equivalent_tables(draw: st.DrawFn) -> Tables:
    """Tables where every layer-pruning solution has a LayerMerge solution of equal value.

    A run of removed convs p..q after a kept conv p - 1 equals the LayerMerge segment (p - 2, q]
    keeping only conv p - 1, with the latency of (p - 2, p - 1] and the summed importances (a
    removal scores its importance minus 1, the value of a neutral segment, since it adds none).
    """
    last = draw(st.integers(2, 12))
    rng: random.Random = draw(st.randoms(use_true_random=False))
    keep = {p: (rng.randint(1, 8) * GRID_MS, rng.randint(0, 32) / 16) for p in range(1, last + 1)}
    removed = {p: rng.randint(0, 32) / 16 for p in range(2, last + 1) if rng.random() < 0.5}
    entries = [_entry(p - 1, p, [p], *keep[p]) for p in keep]
    entries += [_entry(p - 1, p, [], 0.0, imp) for p, imp in removed.items()]
    for a in range(0, last - 1):
        b = a + 2
        while b <= last and b in removed:
            latency, importance = keep[a + 1]
            importance += sum(removed[p] - 1.0 for p in range(a + 2, b + 1))
            entries.append(_entry(a, b, [a + 1], latency, importance))
            b += 1
    return _make_tables(entries)


@SETTINGS
@given(tables=layer_equivalent_tables())
def test_layermerge_dominates_layer_when_removals_have_equivalent_entries(
    tables: Tables,
) -> None:
    paths = _paths(_items(tables, "layer"), tables.last_position)
    for budget in _grid_budgets(paths):
        try:
            layer = dp.solve(tables, budget_ms=budget, method="layer", bin_ms=GRID_MS)
        except InfeasibleBudgetError:
            continue
        merged = dp.solve(tables, budget_ms=budget, bin_ms=GRID_MS)
        assert merged.importance >= layer.importance - 1e-9
    merged_front = dp.frontier(tables)
    for point in dp.frontier(tables, method="layer"):
        assert dp.pick(merged_front, point.latency_ms).importance >= point.importance - 1e-9


# ---------------------------------------------------------------------------------------------
# Small fixed cases


def _two_conv_tables() -> Tables:
    """Positions 0..2: singles of 1 ms, a slow all-kept merge (0, 2], a pruned (0, 2], a removal.

    The removal scores 1.5 - 1 = 0.5 for the layer method (it adds no segment).
    """
    return _make_tables(
        [
            _entry(0, 1, [1], 1.0, 1.0),
            _entry(1, 2, [2], 1.0, 1.0),
            _entry(0, 2, [1, 2], 5.0, 3.0),
            _entry(0, 2, [1], 0.75, 1.5),
            _entry(1, 2, [], 0.0, 1.5),
        ]
    )


def test_depth_executes_an_activation_free_span_as_its_fastest_split() -> None:
    tables = _two_conv_tables()
    solution = dp.solve(tables, budget_ms=2.0, method="depth", bin_ms=0.25)
    # the (0, 2] span (importance 3) runs as (0, 1] + (1, 2] in 2 ms, without activation at 1
    assert solution.importance == 3.0 and solution.latency_ms == 2.0
    assert [(s.start, s.end) for s in solution.segments] == [(0, 1), (1, 2)]
    assert solution.kept_activations == (0, 2)
    spans = {(c.start, c.end): c for c in dp.candidates(tables, method="depth")}
    assert spans[(0, 2)].latency_ms == 2.0 and len(spans[(0, 2)].parts) == 2


def test_layer_and_layermerge_choices_on_a_fixed_case() -> None:
    tables = _two_conv_tables()
    layer = dp.solve(tables, budget_ms=1.0, method="layer", bin_ms=0.25)
    assert [s.kernel for s in layer.segments] == [3, 0] and layer.importance == 1.5
    assert layer.kept_activations == (0, 1, 2) and layer.segments[1].kept_convs == ()
    merged = dp.solve(tables, budget_ms=1.0, bin_ms=0.25)
    assert merged.importance == 1.5 and merged.latency_ms == 0.75  # tie: the faster one
    assert merged.kept_activations == (0, 2) and merged.kept_convs == (0, 1)


def test_infeasible_budget_states_the_smallest_latency() -> None:
    tables = _two_conv_tables()
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 0\.75 ms \(37\.5% of") as err:
        dp.solve(tables, budget_ms=0.5)
    assert isinstance(err.value, LayerMergeError) and isinstance(err.value, ValueError)
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 0\.75 ms"):
        dp.pick(dp.frontier(tables), 0.5)
    with pytest.raises(InfeasibleBudgetError, match=r"fastest needs 2 ms"):
        dp.solve(tables, budget_fraction=0.5, method="depth")


def test_latencies_round_up_to_bins_so_budgets_hold() -> None:
    tables = _make_tables([_entry(0, 1, [1], 0.35, 1.0)])
    assert dp.solve(tables, budget_ms=0.4, bin_ms=0.1).latency_ms == 0.35
    # 0.35 ms is 4 bins of 0.1 ms, the 0.35 ms budget only 3: the message says to shrink the bin
    with pytest.raises(InfeasibleBudgetError, match="smaller bin_ms"):
        dp.solve(tables, budget_ms=0.35, bin_ms=0.1)
    assert dp.solve(tables, budget_ms=0.35, bin_ms=0.05).latency_ms == 0.35


def test_default_bin_is_the_papers_for_large_budgets_and_finer_for_small_ones() -> None:
    tables = _two_conv_tables()
    assert dp.solve(tables, budget_ms=1000.0).extra["bin_ms"] == dp.DEFAULT_BIN_MS
    small = dp.solve(tables, budget_ms=2.0)
    assert small.extra["bin_ms"] == pytest.approx(2.0 / dp.DEFAULT_MIN_BINS)
    assert small.extra["budget_bins"] == dp.DEFAULT_MIN_BINS


def test_budget_arguments_are_checked() -> None:
    tables = _two_conv_tables()
    with pytest.raises(ValueError, match="exactly one"):
        dp.solve(tables)
    with pytest.raises(ValueError, match="exactly one"):
        dp.solve(tables, budget_ms=1.0, budget_fraction=0.5)
    with pytest.raises(ValueError, match="-1"):
        dp.solve(tables, budget_ms=-1.0)
    with pytest.raises(ValueError, match="nan"):
        dp.solve(tables, budget_fraction=float("nan"))
    with pytest.raises(ValueError, match="bin_ms"):
        dp.solve(tables, budget_ms=1.0, bin_ms=0.0)
    with pytest.raises(ValueError, match="larger bin_ms"):
        dp.solve(tables, budget_ms=1.0, bin_ms=1e-6)
    with pytest.raises(ValueError, match="tolerance"):
        dp.frontier(tables, tolerance=-0.1)
    assert dp.solve(tables, budget_fraction=1.0).budget_ms == tables.original_latency_ms


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
        dp.solve(missing, budget_ms=1.0)
    gap = _make_tables([_entry(0, 1, [1], 1.0, 1.0), _entry(0, 2, [1], 1.0, 1.0)])
    with pytest.raises(TableMismatchError, match="do not chain"):
        dp.solve(gap, budget_ms=5.0, method="layer")
    with pytest.raises(TableMismatchError, match="do not chain"):
        dp.frontier(gap, method="layer")


def test_compare_methods_reports_each_methods_optimum() -> None:
    tables = _two_conv_tables()
    rows = dp.compare_methods(tables, [0.5, 1.0, 2.0])
    assert [row["budget_ms"] for row in rows] == [0.5, 1.0, 2.0]
    assert rows[0]["layermerge_importance"] is None and rows[0]["layer_latency_ms"] is None
    assert rows[1]["layermerge_importance"] == 1.5 and rows[1]["depth_importance"] is None
    assert rows[2]["depth_importance"] == 3.0 and rows[2]["depth_latency_ms"] == 2.0
    assert rows[2]["budget_fraction"] == 1.0


@pytest.mark.parametrize("method", ["layermerge", "depth", "layer"])
@settings(max_examples=15, deadline=None)
@given(tables=synthetic_tables(grid=False))
def test_solution_json_round_trip(tables: Tables, method: str) -> None:
    top = dp.frontier(tables, method=method)[-1]
    for solution in (
        dp.solve(tables, budget_ms=top.latency_ms * 1.01, method=method),
        top.solution(),
    ):
        data = json.loads(json.dumps(solution.to_dict()))
        again = Solution.from_dict(data)
        assert again == solution
        assert again.to_dict() == solution.to_dict()
