"""Fixtures for the AppTest tests: the app under test, on the small demo models, core not patched.

Caches (the built models, the frontiers) live in the process and are shared by every AppTest, as by
every browser session of a real server; each test gets a fresh session. What the app computes goes
to a temporary folder (LAYERMERGE_APP_RUNS) unless the variable is already set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sklearn.datasets  # noqa: F401  (see below)
from streamlit.testing.v1 import AppTest

from tests.app.support import open_page, texts

# Imported here, in the main thread: a background job importing scikit-learn (hence scipy.stats)
# for the first time would run pytest's assertion rewriter (scipy ships *_test.py modules) while
# AppTest compiles a page, and concurrent ast parsing trips a CPython 3.11 bug ("AST constructor
# recursion depth mismatch"). A real server has no rewriter, so only the tests need this.


@pytest.fixture(scope="session", autouse=True)
def app_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if "LAYERMERGE_APP_RUNS" in os.environ:
        yield Path(os.environ["LAYERMERGE_APP_RUNS"])
        return
    path = tmp_path_factory.mktemp("app_runs")
    os.environ["LAYERMERGE_APP_RUNS"] = str(path)
    yield path
    os.environ.pop("LAYERMERGE_APP_RUNS", None)


@pytest.fixture
def budget_page() -> AppTest:
    """The Budget page of a fresh session; skipped while no demo tables exist."""
    at = open_page("budget")
    assert not at.exception, at.exception
    if not at.slider:
        pytest.skip(f"no tables for the digits demo yet: {texts(at)[:200]}")
    return at
