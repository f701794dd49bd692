"""Every page runs in a fresh session without an exception (one AppTest per page)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.support import ROOT, open_page

PAGES = sorted(p.stem for p in (ROOT / "pages").glob("*.py"))


def test_pages_are_the_six_steps() -> None:
    assert PAGES == ["budget", "export", "finetune", "learn", "model", "tables"]


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page: str) -> None:
    at = open_page(page)
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.title, f"pages/{page}.py shows no title"


def test_the_sidebar_frame_shows_model_and_tables() -> None:
    # AppTest 1.67 drops sidebar elements from its tree after switch_page, so this reads the
    # default page's first run; the frame code is the same for every page (app.py).
    at = open_page()
    sidebar = " ".join(m.value for m in at.sidebar.markdown)
    assert "digits_resnet" in sidebar and "Tables" in sidebar


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
