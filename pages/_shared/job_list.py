"""The session's finetune jobs, each belonging to one model: labels, the split, the way back.

A job is started on one model (architecture, width, input size, weights and data: the session's
``ModelChoice``) and one solution, and keeps both in its config. The Finetune page shows only the
jobs of the model in use; the others are listed apart, each with one button that switches the
session back to that job's model, weights and solution. The Export page offers a finetuned network
only from a job of exactly its model and solution (:func:`finetuned_result`).
"""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from core.errors import LayerMergeError
from core.solution import Solution
from pages._shared import state
from pages._shared.jobs import Job, registry
from pages._shared.numbers import count, duration, ms
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import frontiers, tables_in_use

__all__ = [
    "session_jobs",
    "split_by_model",
    "shown_job",
    "job_label",
    "status_words",
    "finetuned_result",
    "switch_to",
    "jobs_section",
]


def session_jobs() -> list[Job]:
    """The finetune jobs this session started (or reloaded), newest first, still registered."""
    found = (registry().get(job_id) for job_id in reversed(state.finetune_job_ids()))
    return [job for job in found if job is not None and "choice" in job.config]


def split_by_model(jobs: list[Job], which: ModelChoice) -> tuple[list[Job], list[Job]]:
    """(jobs of the model ``which``, jobs of other models), each newest first."""
    mine = [job for job in jobs if state.same_model(job.config["choice"], which)]
    return mine, [job for job in jobs if job not in mine]


def shown_job(mine: list[Job]) -> Job | None:
    """The job the Finetune page shows: the one the URL names if it is this model's, else the
    newest of this model's."""
    named = state.job_id("finetune")
    return next((job for job in mine if job.id == named), mine[0] if mine else None)


def job_label(job: Job) -> str:
    """Whose job it is and how it trains: model, solution, settings."""
    which, solution = job.config["choice"], job.config["solution"]
    settings = job.config.get("label") or ""
    return (
        f"{which.label} · {solution.method} at {ms(solution.latency_ms)} predicted "
        f"({len(solution.segments)} segments)" + (f" · {settings}" if settings else "")
    )


def status_words(job: Job) -> str:
    """Where the job stands, in a few words."""
    if job.active:
        left = f", about {duration(job.eta_s)} left" if job.eta_s is not None else ""
        return f"running, {count(job.done)}/{count(job.total)} {job.stage}{left}"
    if job.status == "done":
        took = job.finished - job.started if job.finished else None
        return f"done in {duration(took)}"
    if job.status == "cancelled":
        return f"stopped at {count(job.done)}/{count(job.total)} (can resume)"
    return "failed"


def finetuned_result(solution: Solution) -> tuple[Job, dict[str, Any]] | None:
    """The session's newest completed finetune of ``solution`` on the current model, if any.

    Only a job of exactly this model (architecture, width, size, weights, data) and this solution
    counts: the Export page offers what it names, never another model's network.
    """
    key = state.solution_key(solution)
    for job in session_jobs():
        result = job.result
        if job.status != "done" or not isinstance(result, dict):
            continue
        if result.get("status") != "completed":
            continue
        if state.same_model(job.config["choice"], state.choice()):
            if state.solution_key(job.config["solution"]) == key:
                return job, result
    return None


def switch_to(job: Job) -> None:
    """Make ``job``'s model, weights and solution the session's (an on_click callback)."""
    state.set_choice(job.config["choice"], job.config.get("state_dict"))
    state.remember_job("finetune", job.id)
    solution = job.config["solution"]
    state.set_solution(solution)
    _align_budget(solution)


def jobs_section(jobs: list[Job], *, title: str, note: str, button: str) -> None:
    """A list of jobs, each with its label, its state and a button that switches to it."""
    if not jobs:
        return
    st.subheader(title)
    st.caption(note)
    for job in jobs:
        left, right = st.columns([5, 1], vertical_alignment="center")
        left.markdown(f"{job_label(job)}  \n*{status_words(job)}*")
        name = job.config["choice"].name
        right.button(
            button.format(model=name), key=f"switch_{job.id}", on_click=switch_to, args=(job,)
        )


def _align_budget(solution: Solution) -> None:
    """Point the Budget page's method, budget and pick at ``solution`` (so it stays chosen)."""
    try:
        used = tables_in_use()
    except LayerMergeError:
        return
    if used is None or not used.original_ms:
        return
    values = st.session_state
    values.method = solution.method
    share = solution.latency_ms / used.original_ms * 100
    values.budget = int(min(100, max(5, math.ceil(share - 1e-9))))
    key = state.solution_key(solution)
    points = frontiers(used).get(solution.method, [])
    for index, point in enumerate(points):
        if state.solution_key(point.solution()) == key:
            values.picked = (used.tables.digest, solution.method, index)
            return
