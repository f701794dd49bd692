"""The one speed model (core.speed): exact for keep-everything, a hand computation on a small chain,
agreement with what merge and surgery build, the unreliable-table warning in the CLI and the
function the app calls. No timing is asserted: tables come from a fake clock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.__main__ import main
from core.benchmark import predicted_from_meta, predicted_speedup
from core.dp import frontier, list_methods
from core.families import family_for
from core.latency import LatencyConfig, measure_latency
from core.merge import merge_model
from core.models import build_model
from core.segments import keep_everything_solution
from core.solution import Solution, SolutionSegment
from core.speed import (
    ADDITIVITY_TOLERANCE,
    OVERHEAD_SCALE_BOUNDS,
    explained_network_ms,
    overhead_scale,
    planned_activations,
    predict_speed,
    running_residuals,
    speedup_from_totals,
    table_reliability,
    table_warning,
)
from core.surgery import activation_plan
from core.tables import TableEntry, read_meta, read_tables, write_meta
from tests.test_latency import FakeClock

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "cached_tables"


@pytest.fixture(scope="module", params=["digits_resnet", "digits_mobilenet"])
def profiled(request, tmp_path_factory):
    """(chain, tables) of a demo model: a fake-clock latency table, the shipped importance."""
    name = request.param
    bundle = build_model(name)
    chain = family_for(name).trace(bundle)
    out = tmp_path_factory.mktemp(name)
    measure_latency(bundle, chain, LatencyConfig(batch=2, rounds=2), out=out, timer=FakeClock())
    shutil.copy(SHIPPED / name / "importance.csv", out / "importance.csv")
    return chain, read_tables(out)


def _with_table_latencies(solution: Solution, tables) -> Solution:
    latency = {e.key: e.latency_ms for e in tables.entries}
    segments = tuple(
        SolutionSegment(
            s.start, s.end, s.kernel, s.depthwise, s.stride, s.kept_convs, latency[s.key]
        )
        for s in solution.segments
    )
    return Solution(
        method="keep",
        budget_ms=0.0,
        latency_ms=sum(s.latency_ms for s in segments),
        importance=0.0,
        segments=segments,
        kept_activations=solution.kept_activations,
    )


def test_keep_everything_is_exactly_one(profiled):
    chain, tables = profiled
    keep = keep_everything_solution(chain)
    for solution in (keep, _with_table_latencies(keep, tables)):
        prediction = predict_speed(tables.meta, solution)
        assert prediction.speedup == 1.0
        assert (
            prediction.predicted_ms
            == prediction.network_ms
            == (tables.meta["network_folded_latency_ms"])
        )
        assert prediction.basis == "folded network" and prediction.complete
        assert predicted_speedup(0.0, 0.0, solution=solution, meta=tables.meta) == 1.0
    original = tables.original_latency_ms
    network = tables.meta["network_folded_latency_ms"]
    assert predicted_speedup(original, original, network_latency_ms=network) == 1.0
    assert speedup_from_totals(original, original, None) == 1.0


def _hand_meta() -> dict:
    """A 4-conv chain: convs 2 and 3 form an identity residual block (its skip runs from position
    1 to 3), position 3 is linear (a bottleneck output; merging gives it the default ReLU)."""
    return {
        "latency_protocol": {"version": 2},
        "latency_noise": {"unresolved": 0},
        "original_table_latency_ms": 6.5,
        "original_segments": [
            [0, 1, 3, False, 1, 1.0],
            [1, 2, 3, False, 1, 2.0],
            [2, 3, 3, False, 1, 3.0],
            [3, 4, 1, False, 1, 0.5],
        ],
        "network_folded_latency_ms": 10.0,
        "network_latency_ms": 10.0,
        "structure_costs": [
            {"name": "stem", "kind": "fixed", "latency_ms": 0.6},
            {"name": "residual 1-3", "kind": "residual", "start": 1, "end": 3, "latency_ms": 0.25},
            *(
                {
                    "name": f"activation {p}",
                    "kind": "activation",
                    "position": p,
                    "default": "relu",
                    **({} if p == 3 else {"original": "relu"}),
                    "latency_ms": cost,
                }
                for p, cost in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4))
            ),
        ],
        "structure_complete": True,
    }


def _solution(segments: list[tuple], kept_activations: tuple[int, ...]) -> Solution:
    built = tuple(
        SolutionSegment(start, end, kernel, False, 1, kept, latency)
        for start, end, kernel, kept, latency in segments
    )
    return Solution(
        method="hand",
        budget_ms=0.0,
        latency_ms=sum(s.latency_ms for s in built),
        importance=0.0,
        segments=built,
        kept_activations=kept_activations,
    )


def test_hand_computation_on_a_small_chain_with_an_absorbed_residual():
    meta = _hand_meta()
    # the original: table 6.5 + the add 0.25 + the stem 0.6 - the activation timed at linear 3
    assert explained_network_ms(meta) == pytest.approx(6.5 + 0.25 + 0.6 - 0.3)
    # the measured network (8) exceeds that (7.05), within the tolerance: the remainder scales
    # what a solution changes (all but the 0.6 of fixed costs), s = (8 - 0.6) / (7.05 - 0.6)
    meta["network_folded_latency_ms"] = meta["network_latency_ms"] = 8.0
    scale = (8.0 - 0.6) / (7.05 - 0.6)
    assert overhead_scale(meta) == pytest.approx(scale)

    # (1, 3] merged into one 5x5: it absorbs the residual block (its add is gone), and a ReLU now
    # runs at position 3 (a linear end of a merged span), which the entry timed all along
    merged = _solution(
        [(0, 1, 3, (1,), 1.0), (1, 3, 5, (2, 3), 4.0), (3, 4, 1, (4,), 0.5)], (0, 1, 3, 4)
    )
    prediction = predict_speed(meta, merged)
    assert prediction.table_change_ms == pytest.approx(4.0 - 2.0 - 3.0)
    assert prediction.residual_change_ms == pytest.approx(-0.25)
    assert prediction.activation_change_ms == pytest.approx(+0.3)
    assert prediction.overhead_scale == pytest.approx(scale)
    assert prediction.predicted_ms == pytest.approx(8.0 + scale * (-1.0 - 0.25 + 0.3))
    assert prediction.speedup == pytest.approx(8.0 / (8.0 - 0.95 * scale))
    assert running_residuals(meta, merged) == ()
    assert planned_activations(meta, merged) == {1, 3, 4}

    # Kim23's split: (1, 2] and (2, 3] run apart without the activation at 2; the add stays
    split = _solution(
        [(0, 1, 3, (1,), 1.0), (1, 2, 3, (2,), 2.0), (2, 3, 3, (3,), 3.0), (3, 4, 1, (4,), 0.5)],
        (0, 1, 3, 4),
    )
    prediction = predict_speed(meta, split)
    assert (prediction.table_change_ms, prediction.residual_change_ms) == (0.0, 0.0)
    assert prediction.activation_change_ms == pytest.approx(-0.2 + 0.3)  # 2 timed, not run
    assert prediction.predicted_ms == pytest.approx(8.0 + 0.1 * scale)
    assert running_residuals(meta, split) == ((1, 3),)

    # layer pruning: conv 2 removed (an identity segment of latency 0), its ReLU still runs
    removed = _solution(
        [(0, 1, 3, (1,), 1.0), (1, 2, 0, (), 0.0), (2, 3, 3, (3,), 3.0), (3, 4, 1, (4,), 0.5)],
        (0, 1, 2, 3, 4),
    )
    prediction = predict_speed(meta, removed)
    assert prediction.table_change_ms == pytest.approx(-2.0)
    assert prediction.activation_change_ms == pytest.approx(+0.2)  # run, not timed
    assert prediction.predicted_ms == pytest.approx(8.0 - 1.8 * scale)


def test_older_tables_fall_back_to_sums_and_say_so():
    meta = {"original_table_latency_ms": 6.0, "network_latency_ms": 12.0}
    solution = _solution([(0, 1, 3, (1,), 1.0), (1, 3, 5, (2, 3), 2.0)], (0, 1, 3))
    prediction = predict_speed(meta, solution)
    assert prediction.basis == "unfolded network" and not prediction.complete
    assert prediction.speedup == pytest.approx(12.0 / (12.0 - 6.0 + 3.0))
    assert predict_speed({"original_table_latency_ms": 6.0}, solution).speedup == 2.0
    assert predict_speed({}, solution).basis == "table"


def test_speed_model_sees_the_activations_and_adds_that_merge_builds(profiled):
    chain, tables = profiled
    for method in list_methods():
        points = frontier(tables, method=method)
        for point in points[:: max(1, len(points) // 6)]:
            solution = point.solution()
            assert planned_activations(tables.meta, solution) == set(
                activation_plan(chain, solution)
            ) - {0}
            merged = merge_model(build_model(tables.meta["model"]).model, chain, solution)
            adds = sum(step["op"] == "add" for step in merged.spec["steps"])
            assert len(running_residuals(tables.meta, solution)) == adds
            prediction = predicted_from_meta(tables.meta, solution)
            expected = predict_speed(tables.meta, solution)
            assert prediction["predicted_ms"] == expected.predicted_ms > 0
            assert prediction["speedup"] == expected.speedup == 400.0 / expected.predicted_ms


def test_the_function_the_app_calls_names_every_reason_in_one_line():
    meta = _hand_meta()
    meta["network_folded_latency_ms"] = 7.05  # exactly what the table and structure explain
    assert table_reliability(meta).reliable and table_warning(meta) is None

    old = {"original_table_latency_ms": 6.5, "network_latency_ms": 10.0}
    line = table_warning(old, "DIR")
    assert line.startswith("warning: latency table DIR is unreliable") and "protocol" in line

    busy = {**meta, "latency_noise": {"unresolved": 3, "timed": 40, "reference_max_ratio": 4.0}}
    line = table_warning(busy)
    assert "3 of its 40 timings stayed slow" in line and "4.0x" in line and "\n" not in line

    off = {**meta, "network_folded_latency_ms": 7.05 * (1 + 2 * ADDITIVITY_TOLERANCE)}
    reliability = table_reliability(off)
    assert not reliability.reliable and "disagree" in reliability.reasons[0]
    assert reliability.unexplained == pytest.approx(1 - 1 / (1 + 2 * ADDITIVITY_TOLERANCE))


def _copy_tables(name: str, destination: Path, **meta_changes) -> Path:
    shutil.copytree(SHIPPED / name, destination)
    meta = read_meta(destination)
    meta.update(meta_changes)
    write_meta(destination, meta)
    return destination


def test_cli_solve_warns_in_one_line_on_an_unreliable_table(tmp_path, capsys):
    reliable = {"latency_protocol": {"version": 2}, "latency_noise": {"unresolved": 0}}
    quiet = _copy_tables("digits_resnet", tmp_path / "quiet", **reliable)
    busy = _copy_tables(
        "digits_resnet",
        tmp_path / "busy",
        **reliable | {"latency_noise": {"unresolved": 2, "timed": 30, "reference_max_ratio": 3.0}},
    )
    for directory, warned in ((quiet, False), (busy, True)):
        code = main(["solve", "--tables", str(directory), "--budget", "0.8", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        json.loads(captured.out)  # stdout stays the JSON result
        lines = [line for line in captured.err.splitlines() if line.strip()]
        if warned:
            assert len(lines) == 1 and lines[0].startswith(f"warning: latency table {busy}")
            assert "stayed slow" in lines[0]
        else:
            assert lines == []
    # an error is still exactly one line, without the warning
    code = main(["solve", "--tables", str(busy), "--budget-ms", "0.001"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:")


def test_entries_of_the_table_are_what_the_model_swaps(profiled):
    chain, tables = profiled
    originals = {tuple(row[:5]): row[5] for row in tables.meta["original_segments"]}
    singles: dict[tuple, TableEntry] = {
        e.key: e for e in tables.entries if e.end - e.start == 1 and e.keeps_all_convs
    }
    assert originals == {key: e.latency_ms for key, e in singles.items()}


def test_a_unet_family_without_structure_costs_is_predicted_from_its_table(tmp_path):
    family = family_for("digits_unet")
    bundle = family.load("digits_unet")
    traced = family.trace(bundle)
    config = LatencyConfig(batch=2, rounds=2)
    table = measure_latency(bundle, traced, config, family=family, out=tmp_path, timer=FakeClock())
    meta = table.meta
    assert meta["structure_costs"] == [] and not meta["structure_complete"]
    assert meta["network_baseline"].startswith("original UNet2DModel")
    assert explained_network_ms(meta) is None  # nothing to check the network against
    keep = keep_everything_solution(family.chain_of(traced))
    assert predict_speed(meta, keep).speedup == 1.0
    assert table_reliability(meta).reliable  # a quiet clock: no reason to warn


def test_the_overhead_scale_is_bounded_and_one_when_nothing_is_unexplained():
    """Beyond OVERHEAD_SCALE_BOUNDS the table and network describe different machines: s = 1."""
    meta = _hand_meta()  # explained 7.05 of which 0.6 fixed
    meta["network_folded_latency_ms"] = 0.6 + 6.45 * (OVERHEAD_SCALE_BOUNDS[1] + 0.1)
    assert overhead_scale(meta) == 1.0
    meta["network_folded_latency_ms"] = 0.6 + 6.45 * OVERHEAD_SCALE_BOUNDS[1]
    assert overhead_scale(meta) == pytest.approx(OVERHEAD_SCALE_BOUNDS[1])
    meta["network_folded_latency_ms"] = 7.05  # all explained: nothing to scale
    assert overhead_scale(meta) == pytest.approx(1.0)
