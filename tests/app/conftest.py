"""Fixtures for the AppTest tests: the app under test, on the small demo models, core not patched.

Caches (the built models, the frontiers) live in the process and are shared by every AppTest, as by
every browser session of a real server; each test gets a fresh session. What the app computes goes
to a temporary folder (LAYERMERGE_APP_RUNS) unless the variable is already set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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


# Set before any test module imports pages._shared, which reads the variable once (APP_RUNS): a
# fixture would come too late, and the tests' tiny tables would land in runs/app, where the real
# app would prefer them to the shipped ones.
_OWN_RUNS = "LAYERMERGE_APP_RUNS" not in os.environ
if _OWN_RUNS:
    os.environ["LAYERMERGE_APP_RUNS"] = tempfile.mkdtemp(prefix="layermerge-app-runs-")


@pytest.fixture(scope="session", autouse=True)
def app_runs() -> Iterator[Path]:
    path = Path(os.environ["LAYERMERGE_APP_RUNS"])
    yield path
    if _OWN_RUNS:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def jobs_finish() -> Iterator[None]:
    """Let background jobs end before the interpreter does (a torch thread killed mid-op aborts).

    The Budget page tests its solutions after surgery in the background on every visit.
    """
    yield
    from pages._shared.jobs import registry

    for job in registry().running():
        job.cancel.set()
        if job.thread is not None:
            job.thread.join(timeout=180)


@pytest.fixture
def budget_page() -> AppTest:
    """The Budget page of a fresh session; skipped while no demo tables exist."""
    at = open_page("budget")
    assert not at.exception, at.exception
    if not at.slider:
        pytest.skip(f"no tables for the digits demo yet: {texts(at)[:200]}")
    return at
