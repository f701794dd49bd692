"""Background jobs: long work (tables, finetuning) runs in a thread, never in the script thread.

A script run is interrupted whenever the user moves a widget or changes page, so long work runs in
a :class:`Job` thread whose handle sits in a process-wide registry (``st.cache_resource``). The
session keeps only the job's id (in ``st.session_state`` and the URL), so a page change or a reload
finds the job again, running or finished; other sessions never learn the id. Pages poll a job from
an ``st.fragment(run_every=...)`` and draw from its plain fields; the worker never calls Streamlit.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from core.errors import LayerMergeError
from pages._shared.messages import explain

__all__ = ["Job", "JobCancelled", "JobRegistry", "registry", "progress_reporter"]

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
_LOG = logging.getLogger(__name__)
MAX_FINISHED = 64  # finished jobs kept per server process (the oldest go first)


class JobCancelled(Exception):
    """Raised inside a worker (from a progress callback) to stop it when the user cancels."""


@dataclass
class Job:
    """One background job. The worker writes these fields; pages only read them."""

    id: str
    kind: str  # "tables" or "finetune"
    title: str
    config: dict[str, Any] = field(default_factory=dict)  # what the job was started with
    status: str = RUNNING
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    stage: str = ""  # what it is doing now, in words
    history: list[dict[str, Any]] = field(default_factory=list)  # e.g. loss per step
    live: dict[str, Any] = field(default_factory=dict)  # what a view shows while it runs
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    _anchor: tuple[float, int] | None = field(default=None, repr=False)  # (time, done) of a stage

    @property
    def active(self) -> bool:
        return self.status == RUNNING

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def report(self, done: int, total: int, eta_s: float | None = None, stage: str = "") -> None:
        """Progress of the current stage; the ETA is the stage's own average pace so far.

        The pace is measured from the stage's first report, so start-up work (loading, copying,
        a first evaluation) does not inflate it, and averaged over the whole stage, so periodic
        pauses (evaluations, checkpoints) spread evenly instead of making it jump. ``eta_s`` (the
        worker's own guess) is used until two reports have come.
        """
        now = time.monotonic()
        restart = self._anchor is None or done < self._anchor[1] or total != self.total
        if restart or stage and stage != self.stage:
            self._anchor = (now, done)
        if stage:
            self.stage = stage
        since, first = self._anchor
        if done > first and now > since:
            eta_s = (now - since) / (done - first) * max(0, total - done)
        self.done, self.total, self.eta_s = done, total, eta_s


class JobRegistry:
    """Jobs by id, for the whole server process (thread-safe)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(
        self,
        kind: str,
        title: str,
        work: Callable[[Job], Any],
        *,
        config: dict[str, Any] | None = None,
    ) -> Job:
        """Run ``work(job)`` in a daemon thread; its return value becomes ``job.result``.

        A :class:`LayerMergeError` becomes the job's one-line ``error``; any other exception is a
        bug, and its traceback is kept in ``error`` so it can be reported.
        """
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, title=title, config=dict(config or {}))

        def run() -> None:
            try:
                job.result = work(job)
                job.status = CANCELLED if job.cancel.is_set() else DONE
            except JobCancelled:
                job.status = CANCELLED
            except LayerMergeError as exc:
                job.error, job.status = explain(exc), FAILED
            except Exception as exc:  # a bug: keep the traceback for the report, and log it
                job.error = f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                job.status = FAILED
                _LOG.error("job %s (%s) failed:\n%s", job.id, title, job.error)
            finally:
                job.finished = time.time()

        job.thread = threading.Thread(target=run, name=f"layermerge-{kind}-{job.id}", daemon=True)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        job.thread.start()
        return job

    def _forget_old(self) -> None:
        """Keep at most MAX_FINISHED finished jobs (their results hold networks); lock held."""
        finished = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.started)
        for job in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._jobs[job.id]

    def get(self, job_id: str | None) -> Job | None:
        if not job_id:
            return None
        with self._lock:
            return self._jobs.get(job_id)

    def running(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.active and kind in (None, j.kind)]


@st.cache_resource
def registry() -> JobRegistry:
    """The one registry of this server process."""
    return JobRegistry()


def progress_reporter(job: Job, stage: str) -> Callable[[int, int, float | None], None]:
    """A core progress callback that updates ``job`` and stops the work when it is cancelled."""

    def report(done: int, total: int, eta_s: float | None) -> None:
        if job.cancel.is_set():
            raise JobCancelled  # core saves finished entries before it stops
        job.report(done, total, eta_s, stage)

    return report
