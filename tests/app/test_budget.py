"""The Budget page: the slider moves the DP's answer, the chart is predicted quality against speed-up
for every method, clicks select the point under the cursor, impossible budgets say how to fix them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.dp import frontier, list_methods
from core.tables import read_tables
from pages._shared import frontier_view as frontier_view_module
from pages._shared.budget_state import clicked_point
from pages._shared.frontier_view import Curve, FrontierView
from pages._shared.tables_in_use import TablesInUse
from tests.app.chart_events import click, figure, trace
from tests.app.support import ROOT, texts

RESNET = read_tables(ROOT / "cached_tables" / "digits_resnet")
CHART = "frontier_chart"
LAYERMERGE, LAYER = "layermerge (predicted)", "layer (predicted)"


def shown(at: AppTest) -> tuple[str, str]:
    """The predicted latency metric and the solution's one-line summary."""
    latency = next(m.value for m in at.metric if m.label == "Predicted latency")
    summary = next(m.value for m in at.markdown if " segments · " in m.value)
    return latency, summary


def xy(drawn: dict) -> list[tuple[float, float]]:
    return list(zip(drawn["x"], drawn["y"], strict=True))


def on_curve(point: tuple[float, float], drawn: dict) -> bool:
    return any(abs(point[0] - x) < 1e-9 and abs(point[1] - y) < 1e-9 for x, y in xy(drawn))


def solution_table(at: AppTest) -> object:
    return next(d.value for d in at.dataframe if "segment" in d.value.columns)


def test_moving_the_slider_changes_the_solution_and_its_latency(budget_page: AppTest) -> None:
    at = budget_page
    before = shown(at)
    at.slider(key="budget").set_value(90).run()
    assert not at.exception
    after = shown(at)
    assert after[0] != before[0], "the predicted latency did not change"
    assert at.slider(key="budget").value == 90


def test_solution_is_within_budget_and_listed(budget_page: AppTest) -> None:
    at = budget_page
    for percent in (40, 70, 100):
        at.slider(key="budget").set_value(percent).run()
        assert not at.error, texts(at)
        table = solution_table(at)
        assert {"segment", "kernel", "pruned", "activation after"} <= set(table.columns)
        caption = next(c.value for c in at.caption if c.value.startswith("Budget "))
        budget_ms = float(caption.split()[1])
        latency_ms = float(shown(at)[0].split()[0])
        assert latency_ms <= budget_ms * (1 + 1e-3)


def test_the_chart_is_predicted_accuracy_against_speed_up_for_every_method(
    budget_page: AppTest,
) -> None:
    chart = figure(budget_page, CHART)
    y_title = chart["layout"]["yaxis"]["title"]["text"]
    assert y_title.startswith("accuracy (%)") and "predicted" in y_title
    assert "speed-up" in chart["layout"]["xaxis"]["title"]["text"]
    names = [t["name"] for t in chart["data"]]
    frontiers = [n for n in names if n.endswith("(predicted)")]
    assert sorted(frontiers) == sorted(f"{m} (predicted)" for m in list_methods())
    assert frontiers[-1] == LAYERMERGE, "LayerMerge is drawn last, on top"
    original = RESNET.meta["importance_base_accuracy"]
    for method in list_methods():
        points = frontier(RESNET, method=method)
        drawn = trace(budget_page, CHART, f"{method} (predicted)")
        by_index = {i: p for (_, i), p in zip(drawn["customdata"], xy(drawn), strict=True)}
        for index, point in enumerate(points):
            x, y = by_index[index]
            assert y == pytest.approx(original + point.delta), "y is original + ΣΔacc"
            assert x >= 1.0 - 1e-9
        keep_all = by_index[len(points) - 1]
        assert keep_all == pytest.approx((1.0, original)), "keeping everything: 1×, the original"
    star = trace(budget_page, CHART, "current solution")
    accuracy = next(m.value for m in budget_page.metric if m.label == "Predicted accuracy")
    assert f"{star['y'][0]:.2f}%" == accuracy


def test_the_slider_starts_where_some_method_is_feasible(budget_page: AppTest) -> None:
    at = budget_page
    fastest = min(frontier(RESNET, method=m)[0].latency_ms for m in list_methods())
    share = fastest / RESNET.original_latency_ms * 100
    slider = at.slider(key="budget")
    assert slider.min == math.ceil(share - 1e-6), (slider.min, share)
    at.slider(key="budget").set_value(int(slider.min)).run()
    assert not at.error and not at.exception, texts(at)
    assert f"the slider starts at {int(slider.min)}%" in texts(at)


def test_an_impossible_budget_names_each_methods_lowest_and_goes_there(
    budget_page: AppTest,
) -> None:
    at = budget_page
    at.radio(key="method").set_value("depth").run()  # Kim23 barely merges on this ResNet
    share = frontier(RESNET, method="depth")[0].latency_ms / RESNET.original_latency_ms * 100
    lowest = math.ceil(share - 1e-6)
    assert 60 < lowest <= 100, "the page's default budget must be infeasible for depth"
    assert not at.exception
    assert len(at.error) == 1, texts(at)
    message = at.error[0].value
    assert f"depth {lowest}%" in message and "layermerge" in message and "layer " in message
    assert "101%" not in message
    go = at.button(key="go_lowest")
    assert f"{lowest}%" in go.label
    go.click().run()
    assert not at.exception and not at.error, texts(at)
    assert at.slider(key="budget").value == lowest
    assert at.radio(key="method").value == "depth"
    assert "depth" in shown(at)[1]


@pytest.mark.parametrize("method", ["depth", "layer"])
def test_each_method_answers(budget_page: AppTest, method: str) -> None:
    at = budget_page
    at.radio(key="method").set_value(method).run()
    at.slider(key="budget").set_value(100).run()
    assert not at.exception
    assert method in shown(at)[1]


def test_a_click_on_a_layermerge_point_selects_it_and_keeps_the_method(
    budget_page: AppTest,
) -> None:
    at = budget_page
    drawn = trace(at, CHART, LAYERMERGE)
    position = len(drawn["x"]) // 3  # a fast one, far from the current solution
    _, index = drawn["customdata"][position]
    click(at, CHART, LAYERMERGE, position)
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.radio(key="method").value == "layermerge"
    point = frontier(RESNET, method="layermerge")[index]
    assert shown(at)[0] == f"{point.latency_ms:.4g} ms"
    assert "layermerge" in shown(at)[1]
    assert not at.info, "no note: the method did not change"


def test_a_click_landing_on_a_coinciding_layer_point_keeps_layermerge(
    budget_page: AppTest,
) -> None:
    """The old bug: the layer point drawn at the same place answered the click."""
    at = budget_page
    layer, top = trace(at, CHART, LAYER), trace(at, CHART, LAYERMERGE)
    same = [i for i, point in enumerate(xy(layer)) if on_curve(point, top) and point[0] > 1.5]
    assert same, "on digits_resnet some layer points are LayerMerge points too"
    click(at, CHART, LAYER, same[0])
    assert not at.exception
    assert at.radio(key="method").value == "layermerge"
    assert "layermerge" in shown(at)[1]


def test_a_click_on_another_methods_own_point_switches_and_says_so(budget_page: AppTest) -> None:
    at = budget_page
    layer, top = trace(at, CHART, LAYER), trace(at, CHART, LAYERMERGE)
    own = [i for i, point in enumerate(xy(layer)) if not on_curve(point, top)]
    assert own, "layer-only has points LayerMerge does not share (it is dominated there)"
    click(at, CHART, LAYER, own[0])
    assert not at.exception
    assert at.radio(key="method").value == "layer"
    assert at.info and "The method is now layer" in at.info[0].value


def test_a_click_on_a_measured_marker_or_the_star_selects_nothing(budget_page: AppTest) -> None:
    at = budget_page
    before = shown(at)
    click(at, CHART, "current solution", 0)
    assert not at.exception
    assert shown(at) == before and at.radio(key="method").value == "layermerge"


def _view(**curves: tuple[list[float], list[float]]) -> FrontierView:
    view = FrontierView({}, 10.0, None, "accuracy", True, "predicted", "%")
    for name, (latency, value) in curves.items():
        view.curves[name] = Curve(
            name, tuple(range(len(latency))), np.array(latency), np.array(latency),
            np.array(value), 10,
        )  # fmt: skip
    return view


def test_clicked_point_prefers_the_current_methods_point() -> None:
    view = _view(layermerge=([1.0, 2.0, 3.0], [50.0, 60.0, 70.0]), layer=([1.0, 2.5], [50.0, 55.0]))
    star = {"x": 1.0, "y": 2.0}  # the current solution's star carries no customdata
    clicked = clicked_point([star, {"customdata": ["layermerge", 1]}], view, "layermerge")
    assert (clicked.method, clicked.index, clicked.switched) == ("layermerge", 1, False)
    twin = clicked_point([{"customdata": ["layer", 0]}], view, "layermerge")
    assert (twin.method, twin.index, twin.switched) == ("layermerge", 0, False)
    other = clicked_point([{"customdata": ["layer", 1]}], view, "layermerge")
    assert (other.method, other.index, other.switched) == ("layer", 1, True)
    both = [{"customdata": ["layer", 1]}, {"customdata": ["layermerge", 2]}]
    assert clicked_point(both, view, "layermerge").method == "layermerge"
    assert clicked_point([{"customdata": ["layer", 5]}], view, "layer") is None
    assert clicked_point([{"customdata": ["nope", 0]}], view, "layer") is None
    assert clicked_point([], view, "layer") is None


def test_tables_without_the_original_value_plot_the_sum_of_deltas(tmp_path: Path) -> None:
    """No original accuracy in meta.json: y is ΣΔ, and the chart and labels say so."""
    folder = tmp_path / "tables"
    shutil.copytree(ROOT / "cached_tables" / "digits_resnet", folder)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["importance_base_accuracy"]
    (folder / "meta.json").write_text(json.dumps(meta))
    used = TablesInUse(read_tables(folder), folder, "computed")
    view = frontier_view_module._view(used.key, "accuracy", True, used)
    assert view.value_kind == "delta"
    assert "ΣΔ" in view.value_label and view.value_name == "predicted ΣΔ accuracy"
    for method, curve in view.curves.items():
        points = frontier(used.tables, method=method)
        assert list(curve.value) == pytest.approx([p.delta for p in points])
    assert view.curves["layermerge"].value[-1] == 0.0, "keeping everything changes nothing"


def test_distortion_tables_plot_minus_the_distortion_and_say_so(tmp_path: Path) -> None:
    """Tables of the data-light importance mode measure no accuracy: the chart says what it shows."""
    folder = tmp_path / "tables"
    shutil.copytree(ROOT / "cached_tables" / "digits_resnet", folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["importance_normalization"] = "distortion"
    (folder / "meta.json").write_text(json.dumps(meta))
    used = TablesInUse(read_tables(folder), folder, "computed")
    view = frontier_view_module._view(used.key, "accuracy", True, used)
    assert view.value_kind == "distortion" and view.unit == ""
    assert "distortion" in view.value_label and "none predicted" in view.value_label
    for method, curve in view.curves.items():
        points = frontier(used.tables, method=method)
        assert list(curve.value) == pytest.approx([p.importance for p in points])
