"""The live view of a background job: progress, a cancel button, and what stopped it.

A fragment polls the job every POLL_S seconds while it runs and draws only from the job's plain fields
(the worker never calls Streamlit); when the job ends, the whole page reruns around its result.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from pages._shared.jobs import Job, registry
from pages._shared.numbers import count, duration

__all__ = ["job_panel", "failure"]

POLL_S = 2.0  # seconds between redraws of a running job (each redraws its curves: not free)


def job_panel(
    job: Job,
    kind: str,
    *,
    cancel_label: str,
    extra: Callable[[Job], None] | None = None,
    stopped_note: str = "its finished work is saved.",
) -> None:
    """A live view of ``job``, with ``extra(job)`` drawn under it (curves, results).

    ``stopped_note`` ends the message shown once the job was stopped (what is kept of it).
    """
    seen = f"{kind}_job_seen_running"

    @st.fragment(run_every=POLL_S if job.active else None)
    def poll() -> None:
        current = registry().get(job.id) or job
        if current.active:
            st.session_state[seen] = True
            eta = f", about {duration(current.eta_s)} left" if current.eta_s is not None else ""
            stage = current.stage or "starting"
            done = f"{count(current.done)}/{count(current.total)}" if current.total else ""
            st.progress(current.fraction, text=f"{current.title}: {stage} {done}{eta}")
            if st.button(cancel_label, key=f"cancel_{kind}"):
                current.cancel.set()
        elif current.status == "failed":
            st.error(f"{current.title} failed: {failure(current)}")
        elif current.status == "cancelled":
            st.warning(
                f"{current.title} was stopped at {count(current.done)}/{count(current.total)}; "
                f"{stopped_note}"
            )
        if extra is not None:
            extra(current)
        if not current.active and st.session_state.pop(seen, False):
            st.rerun(scope="app")  # it just finished: redraw the page around its result

    poll()


def failure(job: Job) -> str:
    """Why ``job`` failed, in one line: a refused input's message, or a bug said plainly."""
    error = job.error or ""
    if error.startswith("unexpected "):  # a bug: its traceback is in job.error for the report
        return "an unexpected error in the app (a bug; the server log has its traceback)"
    return error.splitlines()[0] if error else "no reason recorded"
