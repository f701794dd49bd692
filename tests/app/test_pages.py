"""Every page runs in a fresh session without an exception (one AppTest per page), on the demo
model of every family, through the panel that model's family names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.families import (
    TaskInfo,
    family_for,
    family_named,
    list_families,
    list_models,
    register_family,
    unregister_family,
)
from core.families.classifier.family import ClassifierFamily
from core.tables import read_manifest
from pages._shared.panels import model_sources, panel_for
from tests.app.support import ROOT, open_page, texts

PAGES = sorted(p.stem for p in (ROOT / "pages").glob("*.py"))
DEMO_MODELS = sorted({entry["model"] for entry in read_manifest()})  # the models tables ship for


def open_with(model: str, page: str) -> AppTest:
    """A fresh session using ``model`` (chosen on the Model page), switched to ``page``."""
    at = open_page()
    if at.session_state["choice"].name != model:
        at.selectbox(key="model_name").set_value(model)
        at.button(key="use_model").click().run()
        assert at.session_state["choice"].name == model, texts(at)
    at.switch_page(f"pages/{page}.py").run()
    return at


def test_pages_are_the_six_steps() -> None:
    assert PAGES == ["budget", "export", "finetune", "learn", "model", "tables"]


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.title, f"pages/{page}.py shows no title"


def test_the_demo_models_cover_every_family() -> None:
    assert {family_for(model).name for model in DEMO_MODELS} == set(list_families())


@pytest.mark.parametrize("model", DEMO_MODELS)
@pytest.mark.parametrize("page", PAGES)
def test_page_runs_on_every_demo_model(page: str, model: str) -> None:
    at = open_with(model, page)
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert not at.error, at.error[0].value
    assert at.title, f"pages/{page}.py shows no title"
    if page == "budget":
        assert at.slider(key="budget"), f"no budget for {model}'s shipped tables:\n{texts(at)}"


def test_every_family_names_a_registered_panel() -> None:
    for name in list_families():
        family = family_named(name)
        assert panel_for(family).name == family.task.panel


def test_the_model_select_lists_the_registry_and_the_sources() -> None:
    options = open_page().selectbox(key="model_name").options
    assert options == [*list_models(), *(source.option for source in model_sources())]


def test_a_family_without_a_panel_gets_one_clear_message() -> None:
    @register_family
    class Unpanelled(ClassifierFamily):
        name = "unpanelled"
        task = TaskInfo(name="toy", quality="accuracy", higher_is_better=True, panel="nowhere")

        def claims(self, model: str) -> bool:
            return model.startswith("unpanelled:")

    try:
        at = open_page()
        at.selectbox(key="model_name").set_value("module:function…")
        at.text_input(key="model_function").input("unpanelled:net")
        at.button(key="use_model").click().run()
        assert not at.exception, at.exception[0].value if at.exception else ""
        assert len(at.error) == 1 and "'nowhere'" in at.error[0].value, texts(at)
        assert at.session_state["choice"].name == "digits_resnet"  # still the previous model
    finally:
        unregister_family(Unpanelled.name)


def test_pages_never_ask_which_family_they_have() -> None:
    asks = re.compile(r"is_unet|is_diffusion|model_kind")
    for path in sorted((ROOT / "pages").rglob("*.py")):
        found = [n for n, line in enumerate(path.read_text().splitlines(), 1) if asks.search(line)]
        assert not found, f"{path.relative_to(ROOT)} asks which family it has, lines {found}"


@pytest.mark.parametrize("page", PAGES)
def test_the_sidebar_frame_shows_model_and_tables(page: str) -> None:
    # AppTest runs a switched-to page alone (Streamlit's legacy pages/ mode); frame_guard then
    # runs it inside app.py's frame, so the sidebar is there as in the browser.
    at = open_page(page)
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "digits_resnet" in sidebar and "Tables" in sidebar, sidebar


def test_model_page_draws_the_chain() -> None:
    at = open_page()
    assert at.get("plotly_chart"), "the chain picture is missing"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Convs on the main path"] == "13"  # digits_resnet: stem + 12 block convs


def test_learn_page_draws_every_picture() -> None:
    at = open_page("learn")
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2  # merge pair and kernel growth at least


def test_the_pages_folder_holds_only_pages() -> None:
    # pages/_shared is a package (helpers, caches), never a page: the glob must not see it
    assert not (Path(ROOT) / "pages" / "_shared.py").exists()
