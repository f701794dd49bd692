"""The frame around every page: the navigation, the sidebar, the first-visit hint, polite stops.

app.py draws this frame around the page it runs (the "picture frame" of ``st.navigation``): the
sidebar shows the model, tables and solution in use and a link to the next step, whether the page
runs to its end or stops early; a session's first page opens with a three-line hint.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

import streamlit as st

from core.errors import LayerMergeError
from pages._shared import caches, state
from pages._shared.budget_state import solution_or_default
from pages._shared.messages import explain
from pages._shared.numbers import ms
from pages._shared.paths import ROOT, short_path
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import tables_in_use

__all__ = [
    "STEPS",
    "page_list",
    "framed",
    "frame_guard",
    "require",
    "sidebar_frame",
    "sidebar_solution",
    "weights_words",
    "first_visit_hint",
]

T = TypeVar("T")
_RUN = threading.local()  # per script thread: is app.py's frame around the page running now?

# The pages in the order a person uses them: file stem, title, icon, what it is for.
STEPS = (
    ("model", "Model", ":material/account_tree:", "choose the network, its weights and its data"),
    ("tables", "Tables", ":material/grid_on:", "see the latency and importance tables"),
    ("budget", "Budget", ":material/speed:", "pick a latency budget; the DP answers"),
    ("finetune", "Finetune", ":material/model_training:", "train the chosen solution"),
    ("export", "Export", ":material/download:", "download the compressed network"),
    ("learn", "Learn", ":material/school:", "see how LayerMerge works on your model"),
)
_SECTIONS = {"Compress": STEPS[:5], "Understand": STEPS[5:]}


def page_list() -> dict[str, list[st.Page]]:
    """The app's pages, by section (app.py registers them with st.navigation)."""
    folder = ROOT / "pages"
    return {
        section: [
            st.Page(folder / f"{stem}.py", title=title, icon=icon, default=stem == "model")
            for stem, title, icon, _ in steps
        ]
        for section, steps in _SECTIONS.items()
    }


@contextlib.contextmanager
def framed() -> Iterator[None]:
    """app.py runs the chosen page inside this: :func:`frame_guard` then knows the frame is drawn."""
    _RUN.framed = True
    try:
        yield
    finally:
        _RUN.framed = False


def frame_guard() -> None:
    """Make sure a page runs inside app.py's frame; every page calls this first.

    Because the folder is named ``pages/``, Streamlit starts in its legacy mode, in which the
    server's very first request for a page URL (say a bookmarked ``/budget``) runs that file alone,
    without app.py (AppTest does so on every run after a ``switch_page``). The page then runs once
    more inside app.py's ``main()``, in this same script run (so a click it carries is not lost),
    and the lone run ends here. Calling ``st.navigation`` leaves the legacy mode.
    """
    if getattr(_RUN, "framed", False):
        return
    from app import main  # the entry point: imported here, as it imports this module

    main()
    st.stop()


def require(value: T | None, message: str) -> T:
    """Stop the page politely (st.info) when a prerequisite is missing."""
    if value is None:
        st.info(message)
        st.stop()
    return value


def sidebar_frame(title: str) -> Any:
    """The sidebar every page shows: the model, data, tables and solution in use, the next step.

    Everything is drawn before the page runs, so a page that stops early (``st.stop``) keeps it.

    Returns:
        The sidebar slot of the solution, which :func:`sidebar_solution` redraws once the page has
        run (the page may have just chosen another solution).
    """
    which = state.choice()
    with st.sidebar:
        st.markdown(f"**Model** · {which.label}")
        try:
            weights = weights_words(which)
            used = tables_in_use(which)
        except LayerMergeError as exc:
            st.error(explain(exc))
            return st.empty()
        st.caption(f"weights: {weights} · data: {which.data_spec}")
        if used is None:
            st.markdown("**Tables** · none yet (Tables page)")
        else:
            st.markdown(f"**Tables** · {used.source}, {ms(used.original_ms)} in all")
            st.caption(short_path(used.directory))
        slot = st.empty()
        sidebar_solution(slot)
        following = _following(title)
        if following is not None:
            stem, name, _, purpose = following
            st.page_link(
                _page(stem), label=f"Next → {name}", icon=":material/arrow_forward:", help=purpose
            )
    return slot


def weights_words(which: ModelChoice) -> str:
    """Where the weights of ``which`` come from, in words: shipped, seeded, or the user's file."""
    if which.weights_key != "default":
        return f"your weights {which.weights_label}"
    if caches.bundle(which).weights_source == "shipped":
        return "its shipped trained weights"
    return "seeded initial weights (untrained: accuracy at chance)"


def sidebar_solution(slot: Any) -> None:
    """The solution in use (or why there is none yet), with its budget as the slider shows it."""
    try:
        used = tables_in_use()
        current = solution_or_default() if used is not None else None
    except LayerMergeError:
        return  # the sidebar and the page say why already
    box = slot.container()
    if used is None:
        box.markdown("**Solution** · none yet: the tables come first (Tables page)")
        return
    if current is None:
        box.markdown(
            f"**Solution** · none fits the {state.budget_label()} budget (Budget page: raise it)"
        )
        return
    box.markdown(f"**Solution** · {current.method} at the {state.budget_label()} budget")
    box.caption(
        f"{ms(current.latency_ms)} predicted (table sum) of {ms(used.original_ms)}, "
        f"{len(current.segments)} segments"
    )


def first_visit_hint(title: str) -> None:
    """Three lines on what the app does and the order of its pages, on a session's first page."""
    values = st.session_state
    first = values.setdefault("hint_page", title)
    if values.get("hint_done") or first != title:
        values.hint_done = True  # the user has moved on: the hint has served
        return
    order = " → ".join(name for _, name, _, _ in STEPS[:5])
    here = next((step for step in STEPS if step[1] == title), None)
    with st.container(border=True, key="first_visit_hint"):
        st.markdown(
            "**LayerMerge Studio** makes a CNN or a diffusion UNet shallower and faster: it removes "
            "activations, merges the convs between them into one, and prunes convs, choosing "
            "with an exact DP on measured latency tables.  \n"
            f"The steps, in order: **{order}**; Learn shows how it works on your model.  \n"
            + (f"Here, on {title}: {here[3]}." if here else "")
        )
        left, right = st.columns([1, 5])
        following = _following(title)
        if following is not None:
            left.page_link(_page(following[0]), label=f"Next → {following[1]}")
        right.button("Got it, hide this", key="hide_hint", on_click=_hide_hint)


def _hide_hint() -> None:
    st.session_state.hint_done = True


def _following(title: str) -> tuple[str, str, str, str] | None:
    """The step after the page titled ``title`` (None after the last)."""
    titles = [name for _, name, _, _ in STEPS]
    index = titles.index(title) if title in titles else len(titles)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def _page(stem: str) -> str:
    return f"pages/{stem}.py"
