"""The surgery job: a solution's merged network, before any finetuning, tested in the background.

"After surgery" is what the merged network keeps with no training at all: the family's
``training_form`` then ``merge`` of the original weights, scored by the family's ``evaluate`` on
its test split (accuracy for a classifier, holdout ε-loss for a UNet; the task's quality figure
comes first). The Budget page asks for the current solution and every pinned one; a session runs
one such job at a time, the next starting when the last is collected and the solution has been
wanted a moment (:func:`tend`), so a slider drag neither piles up work nor competes with it.
Results are kept as the session's ``surgery`` measurements.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import streamlit as st

from core.families import ModelFamily
from core.solution import Solution
from pages._shared import caches, state
from pages._shared.jobs import Job, registry
from pages._shared.state import ModelChoice

__all__ = ["SURGERY", "start_surgery", "tend", "untested", "result_of", "count", "original_quality"]

SURGERY = "surgery"  # job kind and measurement kind
RUNNING_JOB = "surgery_job"  # session key: the id of the session's surgery job
WANTED_SINCE = "surgery_wanted"  # session key: solution key -> when the page first wanted it
SETTLE_S = 0.8  # seconds a solution is wanted before its test starts (a drag starts none)
_MEMO_SIZE = 4  # data splits and original figures kept per process
_MEMO: dict[tuple[Any, ...], Any] = {}
_MEMO_LOCK = threading.Lock()


def start_surgery(solution: Solution) -> Job:
    """Merge ``solution`` from the session's model and test it, in a background thread."""
    which = state.choice()
    owner = caches.family(which)
    bundle, traced = caches.bundle(which), caches.traced(which)  # cached: built already

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        data = _memo(
            ("data", which.key, which.data_spec), lambda: _load(owner, which, bundle, traced)
        )
        job.stage = "testing the original"
        original = _memo(
            ("original", which.key, which.data_spec),
            lambda: _first(owner.evaluate(bundle.model, data)),
        )
        job.stage = "merging"
        training = owner.training_form(bundle.model, traced, solution)  # a new module
        merged = owner.merge(training, traced, solution)
        job.stage = "testing"
        figures = owner.evaluate(merged, data)
        return {
            "quality": _first(figures),
            "figures": figures,
            "original": original,
            "params": sum(p.numel() for p in merged.parameters()),
        }

    return registry().start(
        SURGERY,
        f"test after surgery: {solution.method} at {solution.latency_ms:.4g} ms of {which.label}",
        work,
        config={"choice": which, "solution": solution, "key": state.solution_key(solution)},
    )


def tend(wanted: Sequence[Solution]) -> Job | None:
    """Collect the session's finished surgery job; start one for the first untested of ``wanted``.

    A solution's test starts once it has been wanted for :data:`SETTLE_S` (a later call: the
    page's polling fragment), so a slider drag starts no work that would slow the drag down.

    Returns:
        The session's running surgery job, if any.
    """
    values = st.session_state
    job = registry().get(values.get(RUNNING_JOB))
    if job is not None and not job.active:
        _collect(job)
        job = None
    now = time.monotonic()
    keys = [state.solution_key(s) for s in wanted]
    since = {k: t for k, t in values.get(WANTED_SINCE, {}).items() if k in keys}
    for key in keys:
        since.setdefault(key, now)
    values[WANTED_SINCE] = since
    if job is None:
        values[RUNNING_JOB] = None
        todo = next(
            (
                solution
                for solution, key in zip(wanted, keys, strict=True)
                if result_of(solution) is None and now - since[key] >= SETTLE_S
            ),
            None,
        )
        if todo is not None:
            job = start_surgery(todo)
            values[RUNNING_JOB] = job.id
    return job


def untested(wanted: Sequence[Solution]) -> bool:
    """True while some of ``wanted`` has no surgery result yet (the page keeps polling)."""
    return any(result_of(solution) is None for solution in wanted)


def result_of(solution: Solution) -> dict[str, Any] | None:
    """The session's surgery result for ``solution`` (``quality``, ``params``, or ``error``)."""
    return state.measurement(SURGERY, solution)


def count() -> int:
    """How many surgery results the session holds (the page redraws when this grows)."""
    return sum(key.startswith(f"{SURGERY}:") for key in st.session_state.get("measurements", {}))


def original_quality() -> float | None:
    """The original network's quality on the same split, once a surgery job has measured it."""
    for key, stored in st.session_state.get("measurements", {}).items():
        if key.startswith(f"{SURGERY}:") and stored.get("original") is not None:
            return float(stored["original"])
    return None


def _collect(job: Job) -> None:
    """Keep a finished job's result as a measurement, if it is of the session's model still."""
    which: ModelChoice = job.config["choice"]
    if which != state.choice():
        return  # the session changed model meanwhile; set_choice cleared the measurements
    solution = job.config["solution"]
    if job.status == "done" and isinstance(job.result, dict):
        result = {**job.result, "solution": solution}
    else:
        result = {"error": (job.error or job.status).splitlines()[0], "solution": solution}
    state.remember_measurement(SURGERY, solution, result)


def _load(owner: ModelFamily, which: ModelChoice, bundle: Any, traced: Any) -> Any:
    return owner.load_data(which.data_spec, bundle, traced)


def _first(figures: dict[str, float]) -> float:
    """The task's quality figure: a family's evaluate lists it first."""
    return float(next(iter(figures.values())))


def _memo(key: tuple[Any, ...], make: Any) -> Any:
    """A small process-wide memo for the workers (they run outside Streamlit's caches)."""
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    value = make()
    with _MEMO_LOCK:
        _MEMO[key] = value
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
    return value
