"""The session's own state: the model choice, uploaded weights, the solution, measurements, jobs.

Everything here is per browser-tab session (``st.session_state``), never shared: two sessions may
compress two models at once. Job ids are also kept in the URL (``st.query_params``), so a reload,
which starts a new session, finds its jobs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from core.models import default_input_size
from core.solution import Solution
from pages._shared.jobs import registry

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_BUDGET_PERCENT",
    "ModelChoice",
    "init_session",
    "choice",
    "weights",
    "set_choice",
    "solution",
    "set_solution",
    "solution_key",
    "measurement",
    "remember_measurement",
    "remember_job",
    "job_id",
    "remember_finetune",
    "finetune_history",
]

DEFAULT_MODEL = "digits_resnet"
DEFAULT_BUDGET_PERCENT = 60  # the Budget slider's starting point
JOB_PARAMS = {"tables": "tables_job", "finetune": "finetune_job"}  # job kind -> query parameter


@dataclass(frozen=True)
class ModelChoice:
    """What the session compresses: a model, its weights and the data to finetune on.

    ``fixed_shape`` marks a model whose own config fixes its width and input size (a diffusers
    UNet): the label leaves the width out, and the cache key leaves the size out, so the model is
    built once, before its size is known.
    """

    name: str = DEFAULT_MODEL
    width: float = 1.0
    input_size: int = 32
    weights_key: str = "default"  # "default" (seeded / shipped) or a digest of the given weights
    weights_label: str = "default"  # what the sidebar calls the weights (a file or folder name)
    data_spec: str = "digits"
    fixed_shape: bool = False

    @property
    def key(self) -> tuple[str, float, int | None, str]:
        """Cache key of the built model: what the build depends on."""
        size = None if self.fixed_shape else self.input_size
        return (self.name, self.width, size, self.weights_key)

    @property
    def label(self) -> str:
        if self.fixed_shape:
            return f"{self.name} at {self.input_size}px"
        return f"{self.name} ×{self.width:g} at {self.input_size}px"


def init_session() -> None:
    """Session defaults, and the jobs a reloaded page carries in its URL.

    A reload starts a new session; when its URL names a finetune job, the session takes that job's
    model, weights and solution back, so the pages around the job's result make sense again.
    """
    state = st.session_state
    fresh = "choice" not in state
    if fresh:
        state.choice = ModelChoice(input_size=default_input_size(DEFAULT_MODEL))
        state.state_dict = None  # uploaded weights of this session only
    state.setdefault("solution", None)
    state.setdefault("jobs", {})
    state.setdefault("measurements", {})
    if fresh:
        _restore_from_url()  # the Budget page's block below
    for kind, param in JOB_PARAMS.items():
        found = state.jobs.get(kind) or st.query_params.get(param)
        if not found:
            continue
        state.jobs[kind] = found
        if st.query_params.get(param) != found:
            st.query_params[param] = found  # page switches clear the URL; put it back
        if fresh and kind == "finetune":
            _adopt(found)
    _sync_url()


def choice() -> ModelChoice:
    return st.session_state.choice


def weights() -> dict[str, torch.Tensor] | None:
    """The state_dict this session uploaded for its model (None: the model's default weights)."""
    return st.session_state.get("state_dict")


def set_choice(new: ModelChoice, state_dict: dict[str, torch.Tensor] | None) -> None:
    """Switch the session to another model: its solution and measurements no longer apply."""
    st.session_state.choice = new
    st.session_state.state_dict = state_dict
    st.session_state.solution = None
    st.session_state.measurements = {}
    st.session_state.pop("picked", None)


def solution() -> Solution | None:
    return st.session_state.get("solution")


def set_solution(value: Solution | None) -> None:
    st.session_state.solution = value


def solution_key(value: Solution) -> str:
    """A short content key of a solution (measurements and jobs are matched by it)."""
    return json.dumps(
        [value.method, list(value.kept_activations), [s.to_dict() for s in value.segments]],
        sort_keys=True,
    )


def measurement(kind: str, value: Solution) -> dict[str, Any] | None:
    """What was measured of ``value`` (``kind``: "speed", "accuracy", ...) in this session."""
    return st.session_state.measurements.get(f"{kind}:{solution_key(value)}")


def remember_measurement(kind: str, value: Solution, result: dict[str, Any]) -> None:
    st.session_state.measurements[f"{kind}:{solution_key(value)}"] = result


def remember_job(kind: str, new_id: str | None) -> None:
    """Keep a job id in the session and in the URL (a reload finds the job again)."""
    param = JOB_PARAMS[kind]
    if new_id is None:
        st.session_state.jobs.pop(kind, None)
        st.query_params.pop(param, None)
    else:
        st.session_state.jobs[kind] = new_id
        st.query_params[param] = new_id
        if kind == "finetune":
            remember_finetune(new_id)


def job_id(kind: str) -> str | None:
    return st.session_state.jobs.get(kind)


def _adopt(found: str) -> None:
    job = registry().get(found)
    if job is None or "choice" not in job.config:
        return
    st.session_state.choice = job.config["choice"]
    st.session_state.state_dict = job.config.get("state_dict")
    st.session_state.solution = job.config.get("solution")


# ---------------------------------------------------------------------------------------------
# The Budget page's state: the URL a session started with, and every finetune job it started
# (the page overlays their measured results on the frontier). Keys: "url_at_start",
# "finetune_history"; the Budget page's own widgets and pins live in pages/_shared/budget_state.py
# and pins.py.

FINETUNE_HISTORY = "finetune_history"  # session key: ids of the finetune jobs this session started


def remember_finetune(new_id: str) -> None:
    """Add a finetune job to the session's list of its own finetune jobs."""
    history = st.session_state.setdefault(FINETUNE_HISTORY, [])
    if new_id not in history:
        history.append(new_id)


def finetune_history() -> list[str]:
    """Ids of every finetune job this session started (or found in its URL), oldest first."""
    found = job_id("finetune")
    if found:
        remember_finetune(found)
    return list(st.session_state.get(FINETUNE_HISTORY, []))


def _restore_from_url() -> None:
    """A new session: keep the URL it started with, and take the model it names."""
    from pages._shared import url_state  # imports the panels, which import this module

    url_state.remember_start()
    problem = url_state.restore_model()
    if problem is not None:
        st.error(problem)


def _sync_url() -> None:
    from pages._shared import url_state

    url_state.sync_model()
