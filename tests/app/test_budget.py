"""The Budget page: the slider moves the DP's answer, impossible budgets say so, clicks select."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from pages._shared.views import point_from_selection
from tests.app.support import texts


def shown(at: AppTest) -> tuple[str, str]:
    """The predicted latency metric and the solution's one-line summary."""
    latency = next(m.value for m in at.metric if m.label == "Predicted latency")
    summary = next(m.value for m in at.markdown if " segments · " in m.value)
    return latency, summary


def test_moving_the_slider_changes_the_solution_and_its_latency(budget_page: AppTest) -> None:
    at = budget_page
    before = shown(at)
    at.slider(key="budget").set_value(90).run()
    assert not at.exception
    after = shown(at)
    assert after[0] != before[0], "the predicted latency did not change"
    assert after != before
    assert at.slider(key="budget").value == 90


def test_solution_is_within_budget_and_listed(budget_page: AppTest) -> None:
    at = budget_page
    for percent in (40, 70, 100):
        at.slider(key="budget").set_value(percent).run()
        if at.error:
            continue  # below the fastest solution: tested below
        table = at.dataframe[0].value
        assert {"segment", "kernel", "pruned", "activation after"} <= set(table.columns)
        caption = next(c.value for c in at.caption if c.value.startswith("Budget "))
        budget_ms = float(caption.split()[1])
        latency_ms = float(shown(at)[0].split()[0])
        assert latency_ms <= budget_ms * (1 + 1e-3)


def test_impossible_budget_shows_the_fastest_latency(budget_page: AppTest) -> None:
    at = budget_page
    at.slider(key="budget").set_value(5).run()
    assert not at.exception
    assert at.error, f"no message for an impossible budget:\n{texts(at)}"
    message = at.error[0].value
    assert "Impossible budget" in message and "fastest" in message


@pytest.mark.parametrize("method", ["depth", "layer"])
def test_each_method_answers(budget_page: AppTest, method: str) -> None:
    at = budget_page
    at.radio(key="method").set_value(method).run()
    at.slider(key="budget").set_value(100).run()
    assert not at.exception
    assert method in shown(at)[1]


def test_frontier_chart_and_measure_button_are_there(budget_page: AppTest) -> None:
    assert budget_page.get("plotly_chart")
    assert budget_page.button(key="measure")


def test_clicked_point_maps_to_its_frontier_point() -> None:
    fronts = {"layermerge": [object(), object()], "depth": [object()]}
    star = {"x": 1.0, "y": 2.0}  # the highlighted current solution carries no customdata
    assert point_from_selection([star, {"customdata": ["layermerge", 1]}], fronts) == (
        "layermerge",
        1,
    )
    assert point_from_selection([{"customdata": ["depth", 5]}], fronts) is None
    assert point_from_selection([{"customdata": ["nope", 0]}], fronts) is None
    assert point_from_selection([], fronts) is None
