"""The frame around every page: the navigation, the sidebar, and the polite stop of a page.

app.py draws this frame before and after the page it runs (the "picture frame" of
``st.navigation``), so the sidebar always shows the model, tables and solution in use.
"""

from __future__ import annotations

from typing import Any, TypeVar

import streamlit as st

from core.errors import LayerMergeError
from pages._shared import caches, state
from pages._shared.paths import ROOT, short_path
from pages._shared.tables_in_use import tables_in_use

__all__ = ["page_list", "frame_guard", "sidebar_frame", "sidebar_solution", "require"]

T = TypeVar("T")


def page_list() -> dict[str, list[st.Page]]:
    """The app's pages, by section (app.py registers them with st.navigation)."""
    folder = ROOT / "pages"
    return {
        "Compress": [
            st.Page(
                folder / "model.py", title="Model", icon=":material/account_tree:", default=True
            ),
            st.Page(folder / "tables.py", title="Tables", icon=":material/grid_on:"),
            st.Page(folder / "budget.py", title="Budget", icon=":material/speed:"),
            st.Page(folder / "finetune.py", title="Finetune", icon=":material/model_training:"),
            st.Page(folder / "export.py", title="Export", icon=":material/download:"),
        ],
        "Understand": [st.Page(folder / "learn.py", title="Learn", icon=":material/school:")],
    }


def frame_guard() -> None:
    """Make sure a page runs inside app.py's frame; every page calls this first.

    Because the folder is named ``pages/``, Streamlit starts in its legacy mode, in which the
    server's very first request for a page URL (say a bookmarked ``/budget``) runs that file alone,
    without app.py. Registering the navigation once leaves that mode for good; the rerun then goes
    through app.py to the same page.
    """
    if "choice" in st.session_state:
        return
    st.navigation(page_list(), position="hidden")
    st.rerun()


def require(value: T | None, message: str) -> T:
    """Stop the page politely (st.info) when a prerequisite is missing."""
    if value is None:
        st.info(message)
        st.stop()
    return value


def sidebar_frame() -> Any:
    """The sidebar every page shows: the model, data and tables in use.

    Returns:
        A sidebar container that :func:`sidebar_solution` fills once the page has run (the page
        may change the solution).
    """
    which = state.choice()
    with st.sidebar:
        st.markdown(f"**Model** · {which.label}")
        weights = (
            "seeded initial weights" if which.weights_key == "default" else which.weights_label
        )
        try:
            if which.weights_key == "default" and caches.bundle(which).weights_source == "shipped":
                weights = "shipped trained weights"
            used = tables_in_use(which)
        except LayerMergeError as exc:
            st.error(str(exc))
            return st.container()
        st.caption(f"weights: {weights} · data: {which.data_spec}")
        if used is None:
            st.markdown("**Tables** · none yet (Tables page)")
        else:
            st.markdown(f"**Tables** · {used.source}, {used.original_ms:.4g} ms in all")
            st.caption(short_path(used.directory))
        return st.container()


def sidebar_solution(slot: Any) -> None:
    """The solution in use, drawn after the page (which may have just chosen it)."""
    current = state.solution()
    if current is None:
        return
    try:
        used = tables_in_use()
    except LayerMergeError:
        return  # the sidebar and the page say why already
    share = f" ({current.latency_ms / used.original_ms:.0%})" if used and used.original_ms else ""
    slot.markdown(
        f"**Solution** · {current.method}, {current.latency_ms:.4g} ms{share}, "
        f"{len(current.segments)} segments"
    )
