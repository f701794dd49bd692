"""The ``frontier`` verb and its workflow: predictions listed, points measured side by side and
cached beside the tables, resumed from the cache, dropped when the table changes; the worker
process the app uses; bad input in one line. No timing is asserted."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from core.__main__ import main
from core.latency import LatencyConfig, measure_latency
from core.workflows.frontier import (
    MEASURED_FILE,
    frontier_rows,
    measure_frontier,
    measure_solution,
    read_measured_frontier,
    select_points,
    solution_key,
)
from core.workflows.model import load_model
from tests.test_latency import FakeClock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return load_model("digits_resnet")


@pytest.fixture
def tables(model, tmp_path) -> Path:
    """A digits_resnet table directory: a fake-clock latency table, the shipped importance."""
    out = tmp_path / "tables"
    config = LatencyConfig(batch=2, rounds=2)
    measure_latency(model.bundle, model.traced, config, out=out, timer=FakeClock())
    shutil.copy(ROOT / "cached_tables" / "digits_resnet" / "importance.csv", out)
    return out


def _cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_listing_predicts_every_point_of_every_method(tables, capsys):
    code, result, err = _cli(capsys, "frontier", "--tables", str(tables))
    assert code == 0, err
    assert result["status"] == "listed" and result["measured_now"] == 0
    assert {row["method"] for row in result["rows"]} == {"layermerge", "depth", "layer"}
    for row in result["rows"]:
        assert row["predicted_speedup"] > 0 and row["measured"] is None
        assert row["prediction"]["basis"] == "folded network"
    # the fake clock's network is far from what the table explains: one warning line
    assert err.count("warning:") == 1 and result["warning"] in err
    code = main(["frontier", "--tables", str(tables), "--method", "layer", "--points", "3"])
    assert code == 0 and "layer:" in capsys.readouterr().out


def test_measure_caches_beside_the_tables_and_resumes(model, tables, capsys):
    args = ["frontier", "--tables", str(tables), "--measure", "--method", "layermerge"]
    args += ["--points", "2", "--rounds", "1"]
    code, result, err = _cli(capsys, *args)
    assert code == 0, err
    measured = [row for row in result["rows"] if row["measured"]]
    assert len(measured) == 2 == result["measured_now"] and result["status"] == "completed"
    for row in measured:
        point = row["measured"]
        assert point["speedup"] == pytest.approx(point["original_ms"] / point["merged_ms"])
        assert point["batch"] == 2 and point["threads"] == 1 and point["rounds"] == 1
        assert row["error"] == pytest.approx(row["predicted_speedup"] / point["speedup"] - 1)
    assert (tables / MEASURED_FILE).is_file()
    cached = read_measured_frontier(tables)
    assert set(cached) == {row["solution_key"] for row in measured}

    # a rerun measures nothing; the listing shows the cached measurements
    code, again, _ = _cli(capsys, *args)
    assert code == 0 and again["measured_now"] == 0 and again["cached"] == 2
    listed = frontier_rows(tables, methods=["layermerge"], points=2)
    assert all(row.measured is not None for row in listed.rows)

    # a re-profiled table (another latency CSV) drops the old measurements
    config = LatencyConfig(batch=2, rounds=3)
    measure_latency(model.bundle, model.traced, config, out=tables, timer=FakeClock())
    assert read_measured_frontier(tables) == {}


def test_the_app_measures_in_a_worker_with_the_tables_settings(model, tables):
    done = measure_frontier(model, tables, methods=["layer"], points=1, rounds=1, isolate=True)
    assert done.isolated and done.measured_now == 1
    [row] = done.rows
    assert row.measured is not None and row.measured.speedup > 0
    assert row.measured.allocator == done.settings.allocator  # the table's, in the worker


def test_cancel_and_progress(model, tables):
    cancel = threading.Event()
    cancel.set()
    done = measure_frontier(model, tables, methods=["layer"], points=2, cancel=cancel)
    assert done.status == "cancelled" and done.measured_now == 0
    assert not (tables / MEASURED_FILE).exists()
    seen = []
    measure_frontier(
        model, tables, methods=["layer"], points=1, rounds=1, progress=lambda *a: seen.append(a)
    )
    assert [(done_, total) for done_, total, _ in seen] == [(0, 1), (1, 1)]


def test_a_point_measured_in_a_slow_phase_is_measured_again(model, tables, monkeypatch):
    """Judged on its original alone: the point whose original ran 2x the typical one is measured
    again and the measurement taken at the typical speed is kept; the others are left alone."""
    from core.workflows import frontier as workflow

    calls: list[str] = []

    def fake_measure(model_, solution, settings, rounds):
        key = solution_key(solution)
        calls.append(key)
        slow = len(calls) == 2  # the second point's first measurement: a slow phase
        original = 200.0 if slow else 100.0
        merged = 50.0 if slow else 60.0
        return _measurement(original, merged, settings, rounds)

    monkeypatch.setattr(workflow, "_measure_point", fake_measure)
    done = measure_frontier(
        model, tables, methods=["layermerge"], points=4, isolate=False, passes=1
    )
    keys = [row.solution_key for row in done.rows]
    assert done.measured_now == len(set(keys)) >= 3 and done.remeasured == 1
    assert calls.count(calls[1]) == 2 and len(calls) == len(set(keys)) + 1
    cached = read_measured_frontier(tables)
    assert cached[calls[1]].original_ms == 100.0 and cached[calls[1]].speedup == 100.0 / 60.0
    assert all(row.measured.original_ms == 100.0 for row in done.rows)
    # a rerun finds nothing slow and measures nothing
    again = measure_frontier(model, tables, methods=["layermerge"], points=4, isolate=False)
    assert again.measured_now == again.remeasured == 0 and len(calls) == len(set(keys)) + 1


def test_rounds_are_split_into_passes_over_all_points_and_each_keeps_its_median(
    model, tables, monkeypatch
):
    """A slow phase spoils one pass of a point, not the point: its median pass is kept."""
    from core.workflows import frontier as workflow

    calls: list[tuple[str, int]] = []

    def fake_measure(model_, solution, settings, rounds):
        key = solution_key(solution)
        calls.append((key, rounds))
        spoiled = len(calls) == 2  # the second point's first pass ran in a slow phase
        merged = 20.0 if spoiled else 50.0 + len(calls)  # passes differ a little
        return _measurement(100.0, merged, settings, rounds)

    monkeypatch.setattr(workflow, "_measure_point", fake_measure)
    done = measure_frontier(
        model, tables, methods=["layermerge"], points=3, rounds=9, passes=3, isolate=False
    )
    keys = list(dict.fromkeys(row.solution_key for row in done.rows))
    assert len(keys) >= 2 and done.measured_now == len(keys)
    # pass-major order: every point once, then every point again, each pass 3 of the 9 rounds
    assert [key for key, _ in calls] == keys * 3 and {r for _, r in calls} == {3}
    cached = read_measured_frontier(tables)
    assert all(point.rounds == 9 for point in cached.values())
    second = cached[keys[1]]
    assert second.merged_ms != 20.0  # the spoiled pass is not the one kept
    merged_of_second = sorted(
        50.0 + i + 1 for i, (k, _) in enumerate(calls) if k == keys[1] and i != 1
    )
    assert second.merged_ms in merged_of_second


def _measurement(original: float, merged: float, settings, rounds: int) -> dict:
    """What ``_measure_point`` returns, for a fake clock's times."""
    return {
        "original_ms": original,
        "merged_ms": merged,
        "speedup": original / merged,
        "rounds": rounds,
        "batch": settings.batch,
        "threads": settings.threads,
        "allocator": settings.allocator,
        "backend": settings.backend,
        "load_average": None,
        "measured_at": "now",
    }


def test_select_points_spans_the_frontier():
    latencies = [1.0, 1.1, 1.2, 2.0, 3.0, 3.1, 5.0, 9.0, 9.5, 10.0]
    assert select_points(latencies, None) == list(range(10))
    assert select_points(latencies, 3) == [0, 6, 9]
    assert select_points(latencies, 1) == [9]
    chosen = select_points(latencies, 5)
    assert len(chosen) == 5 and chosen[0] == 0 and chosen[-1] == 9


def test_solution_key_follows_what_is_built(tables):
    rows = frontier_rows(tables, methods=["layermerge"]).rows
    keys = [row.solution_key for row in rows]
    assert len(set(keys)) == len(keys)
    assert solution_key(rows[0].solution) == keys[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points", "0"], "--points must be a positive integer"),
        (["--rounds", "0", "--measure"], "--rounds must be a positive integer"),
        (["--method", "nope"], "nope"),
    ],
)
def test_bad_input_is_one_line(tables, capsys, args, message):
    code = main(["frontier", "--tables", str(tables), *args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0]
    code = main(["frontier", "--tables", str(tables / "missing")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0]


def test_one_solution_measured_joins_the_cache(model, tables):
    solution = frontier_rows(tables, methods=["layer"], points=1).rows[0].solution
    row = measure_solution(model, tables, solution, rounds=1)
    assert row.measured is not None and row.prediction.speedup > 0
    assert read_measured_frontier(tables)[row.solution_key] == row.measured
    again = measure_solution(model, tables, solution, rounds=1)
    assert again.measured == row.measured  # from the cache
    listed = frontier_rows(tables, methods=["layer"], points=1)
    assert listed.rows[0].measured == row.measured
