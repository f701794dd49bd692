"""bench/calibration.py's pure parts: rank statistics, point selection, rows, verdicts.

Nothing here times or trains anything: the measuring parts run in the benchmark's ``--smoke``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "bench" / "calibration.py"
    spec = importlib.util.spec_from_file_location("bench_calibration", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def resnet_tables(bench: ModuleType) -> Any:
    return bench.read_tables(ROOT / "cached_tables" / "digits_resnet")


# ------------------------------------------------------------------------------ statistics


def test_ties_get_the_mean_of_the_ranks_they_span(bench: ModuleType) -> None:
    assert bench.average_ranks([30, 10, 20, 20]) == [4.0, 1.0, 2.5, 2.5]
    assert bench.average_ranks([5, 5, 5]) == [2.0, 2.0, 2.0]
    assert bench.average_ranks([]) == []


def test_spearman_with_ties_matches_a_hand_computation(bench: ModuleType) -> None:
    xs = [1.0, 2.0, 2.0, 3.0, 4.0]
    ys = [2.0, 1.0, 3.0, 3.0, 5.0]
    # ranks x: 1, 2.5, 2.5, 4, 5; ranks y: 2, 1, 3.5, 3.5, 5; both means 3
    # deviations x: -2, -.5, -.5, 1, 2; y: -1, -2, .5, .5, 2
    # Σdxdy = 2 + 1 - .25 + .5 + 4 = 7.25; Σdx² = Σdy² = 4 + .25 + .25 + 1 + 4 = 9.5
    assert bench.spearman(xs, ys) == pytest.approx(7.25 / 9.5)
    assert bench.spearman(xs, ys) == pytest.approx(bench.spearman(ys, xs))


def test_spearman_agrees_with_scipy_where_it_is_installed(bench: ModuleType) -> None:
    stats = pytest.importorskip("scipy.stats")
    xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]
    ys = [2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0, 2.0, 8.0]
    assert bench.spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic)


def test_spearman_of_monotone_constant_and_tiny_samples(bench: ModuleType) -> None:
    assert bench.spearman([1, 2, 3, 4], [10, 20, 25, 90]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [9, 5, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2, 3], [7, 7, 7]) is None  # a constant side: undefined
    assert bench.spearman([1, 2], [1, 2]) is None  # fewer than 3 pairs
    with pytest.raises(ValueError):
        bench.spearman([1, 2, 3], [1, 2])


def test_mean_absolute_error(bench: ModuleType) -> None:
    assert bench.mean_absolute_error([1.0, 2.0, 3.0], [2.0, 2.0, 5.0]) == pytest.approx(1.0)
    assert bench.mean_absolute_error([90.0], [80.5]) == pytest.approx(9.5)
    assert bench.mean_absolute_error([], []) is None
    with pytest.raises(ValueError):
        bench.mean_absolute_error([1.0], [])


# ------------------------------------------------------------------------------ selection


def test_spread_takes_evenly_spaced_latencies_ends_included(bench: ModuleType) -> None:
    latencies = [float(v) for v in range(1, 11)]  # 1..10
    assert bench.spread(latencies, 4) == [0, 3, 6, 9]  # targets 1, 4, 7, 10
    assert bench.spread(latencies, 1) == [4]  # the middle, 5.5: the faster of 5 and 6
    assert bench.spread([3.0, 1.0, 2.0], 8) == [1, 2, 0]  # all, by latency
    with pytest.raises(ValueError):
        bench.spread(latencies, 0)


def test_spread_never_takes_a_point_twice(bench: ModuleType) -> None:
    latencies = [1.0, 1.1, 1.2, 10.0]  # targets 1, 5.5, 10: 5.5 falls back to the nearest free
    assert bench.spread(latencies, 3) == [0, 2, 3]
    taken = bench.spread([1.0, 1.0, 1.0, 1.0, 2.0], 3)
    assert len(set(taken)) == 3


def test_frontier_points_are_spread_deduplicated_and_never_the_original(
    bench: ModuleType, resnet_tables: Any
) -> None:
    planned = bench.plan_frontier_points(resnet_tables, points=4)
    solutions = bench.distinct(planned)
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for row in planned:
        by_pair.setdefault((row.objective, row.method), []).append(row)
        assert not bench.is_unchanged(row.solution)
        assert row.digest == bench.solution_digest(row.solution)
        assert row.budget == pytest.approx(row.latency_ms / resnet_tables.original_latency_ms)
    for (objective, method), rows in by_pair.items():
        points = [
            p
            for p in bench.frontier(resnet_tables, method=method, objective=objective)
            if not bench.is_unchanged(p.solution())
        ]
        assert len(rows) == min(4, len(points))  # a frontier of the original alone plans nothing
        latencies = [row.latency_ms for row in rows]
        assert latencies == sorted(latencies)
        assert latencies[0] == pytest.approx(min(p.latency_ms for p in points))
        assert latencies[-1] == pytest.approx(max(p.latency_ms for p in points))
    # each distinct network once; the paper objective's layer frontier is the additive one's
    assert len(solutions) == len({row.digest for row in planned}) < len(planned)
    assert [r.digest for r in by_pair["paper", "layer"]] == [
        r.digest for r in by_pair["additive", "layer"]
    ]


def test_the_digest_tells_structurally_different_solutions_apart(
    bench: ModuleType, resnet_tables: Any
) -> None:
    """Two solutions of equal latency and prediction may differ (an activation kept or not)."""
    keep = bench.solve(resnet_tables, budget_fraction=1.0)
    assert bench.is_unchanged(keep)
    layer = bench.solve(resnet_tables, budget_fraction=0.65, method="layer")
    assert not bench.is_unchanged(layer)
    assert bench.solution_digest(layer) == bench.solution_digest(
        bench.solve(resnet_tables, budget_fraction=0.65, method="layer")
    )
    fewer = type(layer)(**{**layer.__dict__, "kept_activations": layer.kept_activations[:-1]})
    assert bench.solution_digest(fewer) != bench.solution_digest(layer)


def test_budget_plan_names_infeasible_budgets(bench: ModuleType, resnet_tables: Any) -> None:
    planned = bench.plan_budgets(resnet_tables, [0.9, 0.15])
    assert len(planned) == 6
    infeasible = [p for p in planned if isinstance(p, dict)]
    assert {(p["method"], p["budget"]) for p in infeasible} == {("depth", 0.9), ("depth", 0.15)}
    for plan in planned:
        if isinstance(plan, bench.Planned):
            assert plan.latency_ms <= plan.budget * resnet_tables.original_latency_ms + 1e-9


# ------------------------------------------------------------------------------ calibration.json


def _schema_errors(rows: Any) -> list[str]:
    """docs/calibration.md, checked field by field."""

    def number(value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    errors = [] if isinstance(rows, list) else ["not a list"]
    for index, row in enumerate(rows if isinstance(rows, list) else []):
        if row.get("method") not in ("layermerge", "depth", "layer"):
            errors.append(f"{index}: method {row.get('method')!r}")
        if not number(row.get("budget")):
            errors.append(f"{index}: budget")
        if not (number(row.get("latency_ms")) and row["latency_ms"] > 0):
            errors.append(f"{index}: latency_ms")
        for name in ("predicted", "surgery", "finetuned"):
            if name not in row or not (row[name] is None or number(row[name])):
                errors.append(f"{index}: {name}")
        if not (row.get("measured_speedup") is None or number(row["measured_speedup"])):
            errors.append(f"{index}: measured_speedup")
        if row.get("objective", "additive") not in ("additive", "paper"):
            errors.append(f"{index}: objective")
        if not isinstance(row.get("solution", ""), str):
            errors.append(f"{index}: solution")
    return errors


def test_written_rows_satisfy_the_documented_schema(
    bench: ModuleType, resnet_tables: Any, tmp_path: Path
) -> None:
    planned = bench.plan_frontier_points(resnet_tables, points=3)
    digests = list(bench.distinct(planned))
    measured = {
        digests[0]: {"surgery": 11.5, "finetuned": 97.0, "measured_speedup": 1.4},
        digests[1]: {"surgery": float("nan"), "finetuned": None},  # not measured: null
    }
    rows = bench.calibration_rows(planned, measured)
    assert len(rows) == len(planned)
    assert {r["objective"] for r in rows} == {"additive", "paper"}
    assert _schema_errors(rows) == []
    assert rows[[r.digest for r in planned].index(digests[1])]["surgery"] is None
    target = tmp_path / "digits_resnet" / "calibration.json"
    bench._write_json(target, rows)
    assert _schema_errors(json.loads(target.read_text())) == []
    from pages._shared.measured import read_calibration  # the Budget page's own reader

    assert read_calibration(target.parent) == json.loads(target.read_text())


def test_statistics_count_a_shared_solution_once(bench: ModuleType) -> None:
    def row(method: str, solution: str, predicted: float, finetuned: float) -> dict[str, Any]:
        return {
            "method": method,
            "budget": 0.5,
            "latency_ms": 10.0,
            "predicted": predicted,
            "surgery": predicted - 50,
            "finetuned": finetuned,
            "objective": "additive",
            "solution": solution,
        }

    rows = [
        row("layermerge", "a", 90.0, 95.0),
        row("layer", "a", 90.0, 95.0),  # the same network: counted once
        row("layermerge", "b", 80.0, 93.0),
        row("layer", "c", 80.0, 90.0),  # same latency and prediction as b, another network
        {**row("layermerge", "d", 70.0, 85.0), "objective": "paper"},
    ]
    stats = bench.calibration_stats(rows, "additive")
    assert stats["solutions"] == 3
    assert stats["finetuned"]["n"] == 3
    assert stats["finetuned"]["mae"] == pytest.approx((5 + 13 + 10) / 3)
    assert stats["finetuned"]["spearman"] == pytest.approx(
        bench.spearman([90, 80, 80], [95, 93, 90])
    )
    assert stats["surgery"]["mae"] == pytest.approx(50.0)
    assert bench.calibration_stats(rows, "paper")["solutions"] == 1


# ------------------------------------------------------------------------------ five budgets


def _budget_row(method: str, budget: float, speedup: float, finetuned: float) -> dict[str, Any]:
    return {"method": method, "budget": budget, "measured_speedup": speedup, "finetuned": finetuned}


def test_verdicts_compare_at_layermerges_measured_speedup(bench: ModuleType) -> None:
    rows = [
        _budget_row("layermerge", 0.9, 1.2, 97.0),
        _budget_row("layer", 0.9, 1.25, 96.0),  # faster but worse: LayerMerge matches (+1)
        {"method": "depth", "budget": 0.9, "infeasible": "no"},
        _budget_row("layermerge", 0.5, 1.8, 90.0),
        _budget_row("layer", 0.5, 1.7, 95.0),  # slower: does not count against 1.8x ...
        _budget_row("depth", 0.3, 2.0, 92.0),  # ... but this faster depth point does (-2)
        _budget_row("layermerge", 0.3, 2.5, 80.0),  # nothing else this fast
        {"method": "layermerge", "budget": 0.15, "infeasible": "no"},
        _budget_row("layer", 0.15, 2.2, 50.0),  # only a baseline there: not matched
        {"method": "layermerge", "budget": 0.1, "infeasible": "no"},
    ]
    verdicts = {v["budget"]: v for v in bench.budget_verdicts(rows)}
    assert verdicts[0.9]["matches"] and verdicts[0.9]["margin"] == pytest.approx(1.0)
    assert verdicts[0.9]["best_baseline"]["method"] == "layer"
    assert not verdicts[0.5]["matches"] and verdicts[0.5]["margin"] == pytest.approx(-2.0)
    assert verdicts[0.5]["best_baseline"]["method"] == "depth"
    assert verdicts[0.5]["best_baseline"]["budget"] == 0.3
    assert bench.budget_verdicts(rows, tolerance=2.0)[1]["matches"]
    assert verdicts[0.3]["matches"] and verdicts[0.3]["margin"] is None
    assert verdicts[0.15]["matches"] is False
    assert verdicts[0.1]["matches"] is None


def test_verdicts_let_layermerge_use_a_faster_point_of_its_own(bench: ModuleType) -> None:
    rows = [
        _budget_row("layermerge", 0.9, 1.3, 90.0),  # measured slower than its 0.7 solution
        _budget_row("layermerge", 0.7, 1.4, 96.0),
        _budget_row("layer", 0.7, 1.35, 95.0),
    ]
    verdict = bench.budget_verdicts(rows)[0]
    assert verdict["budget"] == 0.9 and verdict["speedup"] == 1.3
    assert verdict["layermerge"]["budget"] == 0.7 and verdict["matches"]


def test_verdicts_for_a_lower_is_better_metric(bench: ModuleType) -> None:
    rows = [_budget_row("layermerge", 0.5, 1.5, 0.04), _budget_row("layer", 0.5, 1.6, 0.05)]
    verdict = bench.budget_verdicts(rows, higher_is_better=False)[0]
    assert verdict["matches"] and verdict["margin"] == pytest.approx(0.01)
