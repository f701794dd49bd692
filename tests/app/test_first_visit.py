"""The app as a first-time user meets it (issue 16): numbers that read, messages that help, the
sidebar's solution on every page, the first-visit hint, and the advanced fields folded away.
On the three demo models, core not patched."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.families import family_for, list_models
from core.tables import read_manifest
from pages._shared.messages import EXAMPLE_FUNCTION
from tests.app.support import ROOT, open_page, page_text, texts

DEMO_MODELS = sorted({entry["model"] for entry in read_manifest()})
PAGES = ("model", "tables", "budget", "finetune", "export", "learn")
UNSAID = re.compile(r"\bNone\b|\bnan\b|\bNaN\b")


def use(at: AppTest, model: str) -> AppTest:
    """Switch the session to ``model`` on the Model page."""
    at.switch_page("pages/model.py").run()
    if at.session_state["choice"].name != model:
        at.selectbox(key="model_name").set_value(model)
        at.button(key="use_model").click().run()
    assert at.session_state["choice"].name == model, texts(at)
    return at


def sidebar_solution(at: AppTest) -> str:
    return " ".join(m.value for m in at.sidebar.markdown if m.value.startswith("**Solution**"))


def test_the_demo_models_are_the_three_of_the_issue() -> None:
    assert DEMO_MODELS == ["digits_mobilenet", "digits_resnet", "digits_unet"]


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_no_page_says_none_and_the_sidebar_names_the_solution(model: str) -> None:
    at = use(open_page(), model)
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, f"{page}: {at.exception[0].value}"
        text = page_text(at)
        found = UNSAID.search(text)
        assert found is None, f"{model} / {page} shows {found.group()!r}:\n{text}"
        solution = sidebar_solution(at)
        assert solution, f"{model} / {page}: no solution in the sidebar:\n{texts(at)}"
        method = at.session_state["solution"].method
        assert f"{method} at the " in solution and "% budget" in solution, solution


def test_a_page_that_stops_early_keeps_the_sidebar_solution() -> None:
    at = open_page("learn")
    assert sidebar_solution(at)
    at.switch_page("pages/model.py").run()
    at.number_input(key="model_width").set_value(0.5)  # no tables: Tables and Learn stop early
    at.button(key="use_model").click().run()
    for page in ("tables", "learn", "budget"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception
        assert "tables come first" in sidebar_solution(at), f"{page}: {texts(at)}"


def test_the_sidebar_writes_the_budget_as_the_slider_does() -> None:
    at = open_page("budget")
    slider = at.slider(key="budget")
    for percent in (89, 73):
        slider.set_value(percent).run()
        if at.error:
            continue  # an impossible budget: the sidebar says none fits
        assert f"at the {percent}% budget" in sidebar_solution(at), texts(at)


def test_the_unknown_model_message_lists_every_model() -> None:
    at = open_page()
    at.selectbox(key="model_name").set_value("module:function…")
    at.text_input(key="model_function").input("digits_unett")
    at.button(key="use_model").click().run()
    assert not at.exception
    assert len(at.error) == 1, texts(at)
    message = at.error[0].value
    assert "digits_unet" in message and "'digits_unett'" in message
    assert all(name in message for name in list_models()), message
    assert at.session_state["choice"].name == "digits_resnet"


def test_the_module_function_placeholder_is_a_working_example() -> None:
    at = open_page()
    field = at.text_input(key="model_function")
    assert field.placeholder == EXAMPLE_FUNCTION
    at.selectbox(key="model_name").set_value("module:function…")
    field.input(field.placeholder)
    at.button(key="use_model").click().run()
    assert not at.exception and not at.error, texts(at)
    assert at.session_state["choice"].name == EXAMPLE_FUNCTION
    assert family_for(EXAMPLE_FUNCTION).name == "classifier"


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("notes.txt", b"hello", "notes.txt was not used"),
        ("whole.pt", _saved({"model": torch.nn.Linear(2, 2)}), "pickled torch.nn"),
        ("empty.pt", b"", "not a torch file"),
        ("text.pt", b"hello world\n", "not a torch file"),
    ],
)
def test_a_refused_upload_says_why_and_what_is_accepted(name: str, data: bytes, says: str) -> None:
    at = open_page()
    at.file_uploader(key="weights_upload").upload(name, data)
    at.button(key="use_model").click().run()
    assert not at.exception
    assert len(at.error) == 1, texts(at)
    message = at.error[0].value
    assert says in message and "torch.save(model.state_dict(), path)" in message, message
    assert "Still using digits_resnet" in message
    for leak in ("safe_globals", "weights_only=False", "Error:", "Error)", "Exception"):
        assert leak not in message, message
    assert at.session_state["choice"].weights_key == "default"


def test_uploaded_weights_are_kept_until_the_user_says_otherwise() -> None:
    from core.models import build_model

    weights = build_model("digits_resnet").model.state_dict()
    at = open_page()
    at.file_uploader(key="weights_upload").upload("mine.pt", _saved(weights))
    at.button(key="use_model").click().run()
    assert at.success and "mine.pt" in at.success[0].value, texts(at)
    key = at.session_state["choice"].weights_key
    assert key != "default"
    at.switch_page("pages/tables.py").run()
    at.switch_page("pages/model.py").run()  # the upload widget is empty again
    at.button(key="use_model").click().run()  # resubmitted without a file
    assert at.session_state["choice"].weights_key == key
    assert "still with your weights mine.pt" in at.success[0].value
    at.checkbox(key="default_weights").check()
    at.button(key="use_model").click().run()
    assert at.session_state["choice"].weights_key == "default"
    assert "shipped trained weights" in at.success[0].value


def test_the_first_visit_hint_names_the_steps_and_goes_away() -> None:
    at = open_page()
    hint = next(m.value for m in at.markdown if m.value.startswith("**LayerMerge Studio**"))
    assert "Model → Tables → Budget → Finetune → Export" in hint
    links = [link.proto.label for link in at.get("page_link")]
    assert "Next → Tables" in links
    at.button(key="hide_hint").click().run()
    assert not any(m.value.startswith("**LayerMerge Studio**") for m in at.markdown)


def test_advanced_fields_are_folded_until_asked_for() -> None:
    at = open_page()
    folded = next(e for e in at.expander if e.label.startswith("Advanced"))
    assert not folded.proto.expanded
    inside = {w.key for w in folded.text_input} | {w.key for w in folded.number_input}
    assert {"model_function", "unet_folder", "model_width", "model_input_size"} <= inside


def test_removed_activations_never_list_positions_without_one() -> None:
    at = use(open_page(), "digits_mobilenet")  # linear bottlenecks: no activation after some
    at.switch_page("pages/budget.py").run()
    summary = next(m.value for m in at.markdown if "removed activations at" in m.value)
    listed = re.search(r"removed activations at ([\d, ]+|none)", summary).group(1)
    removed = [] if listed == "none" else [int(p) for p in listed.split(",")]
    from core.families import family_for as family_of

    family = family_of("digits_mobilenet")
    chain = family.chain_of(family.trace(family.load("digits_mobilenet")))
    assert all(chain.activations[p] is not None for p in removed), summary
    table = next(f.value for f in at.dataframe if "activation after" in f.value.columns)
    for segment, after in zip(table["segment"], table["activation after"], strict=True):
        end = int(segment.strip("(]").split(",")[1])
        if after == "— (removed)":
            assert chain.activations[end] is not None, (segment, after)
        assert (
            chain.activations[end] is not None
            or "none in the original" in after
            or ("(added)" in after)
        ), (segment, after)


def test_the_learn_page_draws_the_budget_line_without_the_budget_page() -> None:
    at = open_page("learn")
    assert "budget" not in at.session_state  # the Budget page was never visited
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    dp = next(c for c in charts if "position j" in json.dumps(c["layout"].get("xaxis", {})))
    texts_drawn = [a.get("text") for a in dp["layout"].get("annotations", [])]
    assert "budget" in texts_drawn, texts_drawn


def test_no_page_asks_which_family_it_has_by_name() -> None:
    for path in sorted((ROOT / "pages").rglob("*.py")):
        assert '== "unet"' not in path.read_text(), path
