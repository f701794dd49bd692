"""The tables job: measure the latency table, then estimate the importance table, in the background.

One job for every model family: it runs core's tables workflow (:mod:`core.workflows.tables`), the
very functions ``python -m core profile`` and ``importance`` run, with the settings the Tables
page's form collects (the generic importance options: ``mode``, ``steps``, ``eval_images``; the
family turns them into its own settings and refuses those that do not apply). So the app gets the
CLI's checks (data the model cannot learn from, an original at chance: one line each), its
meta.json, and its resumable tables. The settings are checked in the script thread, before the
job starts; the worker calls only ``core``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.errors import DataError, LayerMergeError
from core.latency import LatencyConfig
from core.runner import Runner
from core.workflows import tables
from pages._shared import caches, state
from pages._shared.jobs import Job, progress_reporter, registry
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import computed_tables_dir, forget_chosen_tables

__all__ = [
    "start_tables",
    "data_problem",
    "check_data",
]


def start_tables(
    *,
    batch: int,
    processes: int,
    threads: int = 1,
    settings: Mapping[str, Any] | None = None,
) -> Job:
    """The session model's tables: latency, then importance by the family's estimator.

    ``settings`` are the generic importance options the CLI's ``importance`` takes (``mode``,
    ``steps`` per entry, ``eval_images``, ...); None values take the family's defaults. Finished
    entries are saved as they come, so a stopped run resumes where it stopped.

    Raises:
        LayerMergeError: settings or data the family refuses, or another session is computing the
            same directory.
    """
    which = state.choice()
    options = dict(settings or {})
    check_data(which)
    caches.family(which).importance_config(**options)  # bad settings: refused before it starts
    weights = state.weights() if which.weights_key != "default" else None
    size = None if which.fixed_shape else which.input_size  # a UNet runs at its config's size
    model = {"weights": weights, "width": which.width, "input_size": size}
    out = computed_tables_dir(which)
    latency_config = LatencyConfig(batch=batch, threads=threads)
    runner = Runner(processes=processes)

    def work(job: Job) -> str:
        tables.profile(
            which.name,
            **model,
            out=out,
            config=latency_config,
            progress=progress_reporter(job, "latency"),
            cancel=job.cancel,
        )
        if job.cancel.is_set():
            return str(out)
        tables.importance(
            which.name,
            data=which.data_spec,
            **model,
            out=out,
            settings=options,
            runner=runner,
            progress=progress_reporter(job, "importance"),
            cancel=job.cancel,
        )
        return str(out)

    config = {"batch": batch, "processes": processes, "threads": threads, **options}
    return _start(which, out, work, config)


def data_problem(which: ModelChoice | None = None) -> str | None:
    """Why the session's data cannot train its model (importance, finetuning), or None.

    The family's answer (:meth:`core.families.ModelFamily.data_problem`), which the tables
    workflow also raises: a form says it instead of offering a job that would fail.
    """
    which = which or state.choice()
    return caches.family(which).data_problem(which.data_spec, caches.bundle(which))


def check_data(which: ModelChoice | None = None) -> None:
    """Raise :func:`data_problem`'s answer as a DataError (before a job starts)."""
    problem = data_problem(which)
    if problem is not None:
        raise DataError(problem)


def _start(
    which: ModelChoice, out: Path, work: Callable[[Job], Any], settings: dict[str, Any]
) -> Job:
    """Start ``work`` unless the same directory is being computed; remember the job's id."""
    if any(j.config.get("dir") == str(out) for j in registry().running("tables")):
        raise LayerMergeError(
            f"the tables of {which.label} are being computed right now; they appear here when done"
        )
    config = {"dir": str(out), "choice": which, **settings}
    forget_chosen_tables(which)  # the tables being computed are the ones to use when done
    job = registry().start("tables", f"tables of {which.label}", work, config=config)
    state.remember_job("tables", job.id)
    return job
