"""What the URL carries, so that a reload (which starts a new session) comes back to the same place.

Every page keeps the session's model in the URL (``model``, plus ``width`` and ``size`` when they
are not the model's defaults); the Budget page adds its ``method`` and ``budget``. A new session
reads them back from the URL it started with (:func:`remember_start`), since a page switch clears
the URL. Only registry names are read back: a URL never names a module to import or a folder to
open, and uploaded weights or a data folder cannot travel in a URL, so a session using those keeps
no model in its URL.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import streamlit as st

from core.errors import LayerMergeError
from core.families import family_for, list_models
from core.models import default_input_size
from pages._shared import panels, state

__all__ = ["MODEL", "WIDTH", "SIZE", "remember_start", "at_start", "restore_model", "sync_model"]

MODEL, WIDTH, SIZE = "model", "width", "size"  # query parameters
STARTED_WITH = "url_at_start"  # session key: the query parameters the session started with


def remember_start() -> None:
    """Keep the query parameters a new session starts with (a page switch clears the URL)."""
    st.session_state[STARTED_WITH] = {name: st.query_params.get(name) for name in st.query_params}


def at_start(name: str) -> str | None:
    """The value of the query parameter ``name`` when the session started, or None."""
    return st.session_state.get(STARTED_WITH, {}).get(name)


def restore_model() -> str | None:
    """Switch a new session to the model its URL named; the reason why not, when it cannot."""
    name = at_start(MODEL)
    if not name or name == state.choice().name and not (at_start(WIDTH) or at_start(SIZE)):
        return None
    if name not in list_models():
        return (
            f"The link names the model {name!r}, which is not in the registry "
            f"({', '.join(list_models())}); showing {state.choice().label} instead."
        )
    width = _number(at_start(WIDTH), float, 0.25, 4.0)
    size = _number(at_start(SIZE), int, 8, 1024)
    request = panels.ModelRequest(
        name=name,
        width=1.0 if width is None else width,
        input_size=size,
        upload=None,
        data_kind="digits",
        data_path="",
    )
    try:
        new, weights = panels.panel_for(family_for(name)).choose(request)
    except LayerMergeError as exc:
        return (
            f"The link's model {name} could not be loaded ({exc}); showing {state.choice().label}."
        )
    state.set_choice(new, weights)
    return None


def sync_model() -> None:
    """Put the session's model in the URL, or take it out (the default, or it cannot travel)."""
    which = state.choice()
    wanted: dict[str, str] = {}
    portable = which.weights_key == "default" and which.data_spec == "digits"
    if portable and which.name in list_models():
        default = which.name == state.DEFAULT_MODEL and which.width == 1.0
        if not which.fixed_shape and which.input_size != default_input_size(which.name):
            wanted[SIZE] = str(which.input_size)
            default = False
        if which.width != 1.0:
            wanted[WIDTH] = f"{which.width:g}"
        if not default:
            wanted[MODEL] = which.name
    for name in (MODEL, WIDTH, SIZE):
        if name in wanted and st.query_params.get(name) != wanted[name]:
            st.query_params[name] = wanted[name]
        elif name not in wanted and name in st.query_params:
            del st.query_params[name]


def _number(
    text: str | None, kind: Callable[[str], float], low: float, high: float
) -> float | None:
    """``text`` as a number in [low, high], or None (absent, malformed or out of range)."""
    try:
        value = kind(text) if text else None
    except ValueError:
        return None
    if value is None or not math.isfinite(value) or not low <= value <= high:
        return None
    return value
