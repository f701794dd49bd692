"""The Budget page's measurements and comparisons: accuracy after surgery in the background, pinned
solutions side by side and exported, shipped calibration points, and what a reload keeps (the URL).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.benchmark import predicted_speedup
from core.dp import frontier, pick
from core.families import family_for
from core.tables import read_tables
from pages._shared import measured
from pages._shared.jobs import registry
from pages._shared.pins import merged_depth
from pages._shared.state import solution_key
from tests.app.chart_events import figure, trace
from tests.app.support import ROOT, open_page, texts, wait_until

RESNET = read_tables(ROOT / "cached_tables" / "digits_resnet")
CHART = "frontier_chart"


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def pins_table(at: AppTest) -> object:
    return next(d.value for d in at.dataframe if "pin" in d.value.columns)


def param(at: AppTest, name: str) -> str:
    """A query parameter as the app wrote it (AppTest may keep each as a list)."""
    value = at.query_params[name]
    return value[-1] if isinstance(value, list) else value


def surgery_done(at: AppTest) -> bool:
    return metric(at, "Accuracy after surgery") != "testing…"


def test_accuracy_after_surgery_is_measured_in_the_background(budget_page: AppTest) -> None:
    at = budget_page
    assert metric(at, "Accuracy after surgery") == "testing…"  # the script did not wait for it
    wait_until(at, surgery_done, timeout=240)
    assert not at.exception
    shown = metric(at, "Accuracy after surgery")
    # the same network, built and tested here with the family's own calls
    solution = pick(frontier(RESNET), RESNET.original_latency_ms * 0.6 * (1 + 1e-6))
    assert solution_key(at.session_state["solution"]) == solution_key(solution)
    owner = family_for("digits_resnet")
    bundle = owner.load("digits_resnet")
    traced = owner.trace(bundle)
    merged = owner.merge(owner.training_form(bundle.model, traced, solution), traced, solution)
    expected = owner.evaluate(merged, owner.load_data("digits", bundle, traced))["accuracy"]
    assert shown == f"{expected:.2f}%"
    surgery = trace(at, CHART, "after surgery, measured (this session)")
    assert surgery["y"] == pytest.approx([expected])
    assert trace(at, CHART, "original, measured (this session)")["x"] == [1.0]


def test_measure_times_the_merged_network_beside_the_speed_models_prediction(
    budget_page: AppTest,
) -> None:
    at = budget_page
    at.button(key="measure").click().run()
    assert not at.exception, at.exception
    solution = at.session_state["solution"]
    table = next(d.value for d in at.dataframe if "main-path convs" in d.value.columns)
    assert list(table["network"]) == ["original (BN folded)", "merged"]
    assert all(float(cell.split()[0].replace(",", "")) > 0 for cell in table["measured"])
    owner = family_for("digits_resnet")
    convs = len(owner.chain_of(owner.trace(owner.load("digits_resnet"))).convs)
    assert list(table["main-path convs"]) == [str(convs), str(merged_depth(solution))]
    # the one speed model on the tables' meta.json, as the CLI's bench predicts it
    predicted = predicted_speedup(
        solution.latency_ms, RESNET.original_latency_ms, solution=solution, meta=RESNET.meta
    )
    line = next(m.value for m in at.markdown if m.value.startswith("Speed-up predicted"))
    assert line.startswith(f"Speed-up predicted **{predicted:.2f}×**, measured **"), line
    assert "torch eager" in line and "baseline: original, BN folded" in line


def test_pinning_two_solutions_shows_both_rows(budget_page: AppTest) -> None:
    at = budget_page
    assert not any("pin" in d.value.columns for d in at.dataframe)
    at.button(key="pin").click().run()
    at.slider(key="budget").set_value(90).run()
    at.button(key="pin").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    table = pins_table(at)
    assert list(table["pin"]) == ["#1", "#2"]
    expected = {
        "method", "ms predicted", "ms measured", "speed-up predicted", "speed-up measured",
        "depth", "parameters", "predicted accuracy", "accuracy after surgery",
        "accuracy after finetune",
    }  # fmt: skip
    assert expected <= set(table.columns)
    cells = [str(v) for v in table.to_numpy().ravel()]
    assert not any(c in ("None", "nan", "") for c in cells), cells
    assert list(table["ms measured"]) == ["not measured", "not measured"]
    first, second = (pick(frontier(RESNET), RESNET.original_latency_ms * p) for p in (0.6, 0.9))
    assert list(table["ms predicted"]) == [
        f"{first.latency_ms:.4g}",
        f"{second.latency_ms:.4g}",
    ]
    assert list(table["predicted accuracy"]) == [
        f"{first.predicted:.2f}%",
        f"{second.predicted:.2f}%",
    ]
    wait_until(
        at, lambda a: "testing…" not in list(pins_table(a)["accuracy after surgery"]), timeout=300
    )
    table = pins_table(at)
    assert all(c.endswith("%") for c in table["accuracy after surgery"]), list(table.iloc[0])
    assert all(c.replace(",", "").isdigit() for c in table["parameters"])


def test_a_pinned_row_exports_from_the_export_page(budget_page: AppTest) -> None:
    at = budget_page
    at.button(key="pin").click().run()
    pinned = at.session_state["solution"]
    at.slider(key="budget").set_value(90).run()
    assert solution_key(at.session_state["solution"]) != solution_key(pinned)
    at.selectbox(key="pin_choice").set_value(0).run()
    at.button(key="pin_export").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.title[0].value == "Export", texts(at)
    assert solution_key(at.session_state["solution"]) == solution_key(pinned)
    assert at.download_button(key="download_checkpoint")
    at.switch_page("pages/budget.py").run()  # the Budget page shows the exported solution
    assert solution_key(at.session_state["solution"]) == solution_key(pinned)


def test_the_url_restores_model_method_and_budget() -> None:
    at = open_page("budget", model="digits_mobilenet", method="depth", budget="45")
    assert not at.exception and not at.error, texts(at)
    assert at.session_state["choice"].name == "digits_mobilenet"
    assert at.radio(key="method").value == "depth"
    assert at.slider(key="budget").value == 45
    assert "depth" in next(m.value for m in at.markdown if " segments · " in m.value)
    at.slider(key="budget").set_value(70).run()
    assert [param(at, name) for name in ("model", "method", "budget")] == [
        "digits_mobilenet",
        "depth",
        "70",
    ]


def test_a_bad_url_gets_one_message_and_the_defaults() -> None:
    at = open_page(None, model="os:system", method="nope", budget="abc")
    assert not at.exception
    assert len(at.error) == 1 and "os:system" in at.error[0].value, texts(at)
    at.switch_page("pages/budget.py").run()
    assert not at.exception and not at.error, texts(at)
    assert at.session_state["choice"].name == "digits_resnet"
    assert at.radio(key="method").value == "layermerge"
    assert at.slider(key="budget").value == 60


def test_a_model_change_resets_the_budget_to_one_that_fits(budget_page: AppTest) -> None:
    at = budget_page
    at.radio(key="method").set_value("layer").run()
    at.slider(key="budget").set_value(20).run()  # feasible for layer on digits_resnet
    assert not at.error, texts(at)
    at.switch_page("pages/model.py").run()
    at.selectbox(key="model_name").set_value("digits_mobilenet")
    at.button(key="use_model").click().run()
    at.switch_page("pages/budget.py").run()
    assert not at.exception and not at.error, texts(at)
    tables = read_tables(ROOT / "cached_tables" / "digits_mobilenet")
    share = frontier(tables, method="layer")[0].latency_ms / tables.original_latency_ms * 100
    assert at.radio(key="method").value == "layer"
    assert at.slider(key="budget").value == max(60, math.ceil(share - 1e-6)), texts(at)


def test_shipped_calibration_points_are_drawn(
    budget_page: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {"method": "layer", "budget": 0.5, "latency_ms": 28.0, "predicted": 70.0,
         "surgery": 20.0, "finetuned": 90.0, "measured_speedup": 1.9},
        {"method": "layermerge", "budget": 0.3, "latency_ms": 17.0, "predicted": 60.0,
         "surgery": None, "finetuned": 85.0},
    ]  # fmt: skip
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(rows))
    monkeypatch.setattr(measured, "CALIBRATION_FILE", str(path))  # an absolute path wins the join
    at = budget_page
    at.run()
    assert not at.exception and not at.error, texts(at)
    finetuned = trace(at, CHART, "after finetune, measured (shipped calibration)")
    assert finetuned["y"] == [90.0, 85.0]
    assert finetuned["x"][0] == 1.9  # measured speed-up where known
    assert trace(at, CHART, "after surgery, measured (shipped calibration)")["y"] == [20.0]
    path.write_text(json.dumps([{"method": "layer", "latency_ms": "fast"}]))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "row 0" in at.error[0].value and "latency_ms" in at.error[0].value
    assert figure(at, CHART)["data"], "the chart still shows"


def test_surgery_jobs_queue_and_never_pile_up(budget_page: AppTest) -> None:
    """One surgery job at a time per session: a slider drag starts at most one more."""
    at = budget_page
    before = {job.id for job in registry().running("surgery")}
    for percent in (70, 80, 90, 100):
        at.slider(key="budget").set_value(percent).run()
    started = [job for job in registry().running("surgery") if job.id not in before]
    assert len(started) <= 1, [job.title for job in started]


def test_select_and_unpin_a_pinned_row(budget_page: AppTest) -> None:
    at = budget_page
    at.button(key="pin").click().run()
    pinned = at.session_state["solution"]
    at.slider(key="budget").set_value(95).run()
    at.button(key="pin").click().run()
    at.selectbox(key="pin_choice").set_value(0).run()
    at.button(key="pin_show").click().run()
    assert not at.exception
    assert solution_key(at.session_state["solution"]) == solution_key(pinned)
    assert at.slider(key="budget").value <= 60
    at.button(key="pin_remove").click().run()
    assert list(pins_table(at)["pin"]) == ["#1"]
    assert pins_table(at)["share"][0] != f"{pinned.latency_ms / RESNET.original_latency_ms:.0%}"


def test_the_sessions_finetune_is_drawn_and_shown(budget_page: AppTest) -> None:
    at = budget_page
    at.switch_page("pages/finetune.py").run()
    at.number_input(key="ft_steps").set_value(3)
    at.button(key="start_finetune").click().run()
    job_id = at.session_state["jobs"]["finetune"]
    wait_until(at, lambda _: registry().get(job_id).status != "running", timeout=300)
    result = registry().get(job_id).result
    assert result["status"] == "completed", registry().get(job_id).error
    at.switch_page("pages/budget.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    after = f"{result['after'].accuracy:.2f}%"
    assert metric(at, "Accuracy after finetune") == after
    finetuned = trace(at, CHART, "after finetune, measured (this session)")
    assert finetuned["y"] == pytest.approx([result["after"].accuracy])
    at.button(key="pin").click().run()
    assert list(pins_table(at)["accuracy after finetune"]) == [after]
