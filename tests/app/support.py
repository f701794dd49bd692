"""Helpers of the AppTest tests: open a page in a fresh session, read its text, wait on jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
TIMEOUT = 120  # the first run imports torch and builds the model


def open_page(page: str | None = None, **query: str) -> AppTest:
    """A fresh session of the app, run once, then switched to ``pages/<page>.py`` and run."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for name, value in query.items():
        at.query_params[name] = value
    at.run()
    if page is not None:
        at.switch_page(f"pages/{page}.py").run()
    return at


def texts(at: AppTest) -> str:
    """Everything the page says in text, to compare before and after an interaction."""
    parts: list[str] = []
    for kind in ("markdown", "metric", "caption", "info", "success", "warning", "error"):
        for element in getattr(at, kind):
            parts.append(f"{kind}: {element.value}")
    return "\n".join(parts)


def page_text(at: AppTest) -> str:
    """Every word the page shows, sidebar included: headings, text, metrics, alerts, table cells,
    widget labels (what a "no None anywhere" check reads)."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success"):
        parts.extend(str(element.value) for element in getattr(at, kind))
    for kind in ("warning", "error", "exception"):
        parts.extend(str(element.value) for element in getattr(at, kind))
    for metric in at.metric:
        parts.extend([metric.label, str(metric.value), str(metric.proto.delta)])
    for frame in at.dataframe:
        table = frame.value
        parts.append(" ".join(map(str, table.columns)))
        parts.extend(" ".join(map(str, row)) for row in table.itertuples(index=False))
    for kind in ("button", "number_input", "text_input", "selectbox", "radio", "checkbox"):
        parts.extend(str(element.label) for element in getattr(at, kind))
    return "\n".join(parts)


def wait_until(
    at: AppTest, condition: Callable[[AppTest], bool], *, timeout: float = 90.0
) -> AppTest:
    """Rerun ``at`` (what the polling fragment does every few seconds) until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        if condition(at):
            return at
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the page says:\n{texts(at)}")
        time.sleep(0.5)


def record_downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What each download button of the page would serve on click, by file id.

    AppTest does not click downloads; Streamlit defers a callable download's data to the media
    file manager, so recording what it is handed gives the test the real bytes (or the callable).
    """
    deferred: dict[str, Any] = {}
    original = MediaFileManager.add_deferred

    def record(self: MediaFileManager, data: Any, *args: Any, **kwargs: Any) -> str:
        file_id = original(self, data, *args, **kwargs)
        deferred[file_id] = data
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return deferred
