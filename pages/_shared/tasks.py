"""The app's background work (tables, finetuning) and the fragment that watches a job.

Each ``start_*`` takes everything it needs from the session in the script thread (the model is a
shared cached object: workers get deep copies or core functions that return new modules), starts a
:class:`~pages._shared.jobs.Job`, and remembers its id. The worker calls only ``core``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from core.data import load_data
from core.errors import LayerMergeError
from core.finetune import FinetuneConfig, FinetuneProgress, evaluate, finetune
from core.importance import ImportanceConfig, estimate_importance
from core.latency import LatencyConfig, measure_latency
from core.merge import merge, merge_model
from core.solution import Solution
from core.surgery import build_training_network
from core.tables import Tables
from pages import _shared as shared
from pages._shared.jobs import Job, JobCancelled, registry

__all__ = [
    "start_tables",
    "start_finetune",
    "job_panel",
    "entries_frame",
    "progress_reporter",
]

MAX_HISTORY = 5000  # progress points kept per finetune job (every step up to this)


def start_tables(*, batch: int, mode: str, processes: int, threads: int = 1) -> Job:
    """Measure latency then estimate importance for the session's model, in the background.

    Raises:
        LayerMergeError: bad settings, or another session is computing the same directory.
    """
    which = shared.choice()
    private = dataclasses.replace(shared.bundle(which), model=shared.private_model(which))
    traced = shared.chain(which)
    out = shared.computed_tables_dir(which)
    latency_config = LatencyConfig(batch=batch, threads=threads)
    importance_config = ImportanceConfig(mode=mode)
    if any(j.config.get("dir") == str(out) for j in registry().running("tables")):
        raise LayerMergeError(
            f"the tables of {which.label} are being computed right now; they appear here when done"
        )

    def work(job: Job) -> str:
        measure_latency(
            private, traced, latency_config, out=out, progress=progress_reporter(job, "latency")
        )
        estimate_importance(
            private,
            traced,
            which.data_spec,
            importance_config,
            out=out,
            jobs=processes,
            progress=progress_reporter(job, "importance"),
        )
        return str(out)

    job = registry().start(
        "tables",
        f"tables of {which.label}",
        work,
        config={
            "dir": str(out),
            "batch": batch,
            "mode": mode,
            "processes": processes,
            "threads": threads,
        },
    )
    shared.remember_job("tables", job.id)
    return job


def start_finetune(
    solution: Solution, config: FinetuneConfig, *, resume_of: Job | None = None
) -> Job:
    """Finetune the training form of ``solution``, merge it, and test it, in the background.

    ``resume_of`` continues a stopped job from its checkpoint (same options).
    """
    which = shared.choice()
    model = shared.bundle(which).model  # shared: only read (core copies it before any change)
    traced = shared.chain(which)
    if resume_of is not None:
        checkpoint = resume_of.config["checkpoint"]
    else:
        checkpoint = str(shared.APP_RUNS / "finetune" / f"{_new_id()}" / "checkpoint.pt")

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        splits = load_data(which.data_spec, input_size=which.input_size)
        job.stage = "testing the original"
        before = evaluate(model, splits.test)
        unfinetuned = evaluate(merge_model(model, traced, solution), splits.test)
        training = build_training_network(model, traced, solution)
        job.stage = "finetuning"

        def progress(report: FinetuneProgress) -> None:
            job.report(report.step, report.total_steps, report.eta_s, "finetuning")
            if len(job.history) < MAX_HISTORY:
                job.history.append(
                    {"step": report.step, "loss": report.loss, "accuracy": report.accuracy}
                )

        result = finetune(
            training,
            splits.finetune,
            config=config,
            teacher=model if config.distill_alpha else None,
            checkpoint_path=checkpoint,
            resume=True,
            progress=progress,
            cancel=job.cancel,
            metadata={"model": which.name, "solution": solution.to_dict()},
        )
        if result.status != "completed":
            return {"status": result.status, "step": result.step}
        job.stage = "merging and testing"
        merged = merge(result.network, traced, solution)
        after = evaluate(merged, splits.test)
        return {
            "status": "completed",
            "merged": merged,
            "before": before,
            "unfinetuned": unfinetuned,
            "after": after,
            "steps": result.step,
            "seconds": result.elapsed_s,
        }

    job = registry().start(
        "finetune",
        f"finetune {solution.method} of {which.label}",
        work,
        config={
            "checkpoint": checkpoint,
            "solution": solution,
            "choice": which,
            "state_dict": st.session_state.get("state_dict"),
            "finetune": config,
        },
    )
    if resume_of is not None:
        job.history = list(resume_of.history)
    shared.remember_job("finetune", job.id)
    return job


def job_panel(
    job: Job,
    kind: str,
    *,
    cancel_label: str,
    extra: Callable[[Job], None] | None = None,
    stopped_note: str = "its finished work is saved.",
) -> None:
    """A live view of ``job``: polled every second while it runs, by a fragment.

    ``stopped_note`` ends the message shown once the job was stopped (what is kept of it).
    """
    seen = f"{kind}_job_seen_running"

    @st.fragment(run_every=1.0 if job.active else None)
    def poll() -> None:
        current = registry().get(job.id) or job
        if current.active:
            st.session_state[seen] = True
            eta = f", about {current.eta_s:.0f} s left" if current.eta_s is not None else ""
            stage = current.stage or "starting"
            st.progress(
                current.fraction,
                text=f"{current.title}: {stage} {current.done}/{current.total or '?'}{eta}",
            )
            if st.button(cancel_label, key=f"cancel_{kind}"):
                current.cancel.set()
        elif current.status == "failed":
            st.error(f"{current.title} failed: {(current.error or '').splitlines()[0]}")
        elif current.status == "cancelled":
            st.warning(
                f"{current.title} was stopped at {current.done}/{current.total}; {stopped_note}"
            )
        if extra is not None:
            extra(current)
        if not current.active and st.session_state.pop(seen, False):
            st.rerun(scope="app")  # it just finished: redraw the page around its result

    poll()


def entries_frame(tables: Tables) -> pd.DataFrame:
    """Every table entry as a sortable frame."""
    return pd.DataFrame(
        [
            {
                "start": e.start,
                "end": e.end,
                "kernel": e.kernel,
                "removal": e.kernel == 0,
                "depthwise": e.depthwise,
                "stride": e.stride,
                "kept convs": str(list(e.kept_convs)),
                "latency ms": e.latency_ms,
                "spread ms": e.latency_spread_ms,
                "importance": e.importance,
                "Δacc (pp)": e.delta_acc,
                "Δloss": e.delta_loss,
            }
            for e in tables.entries
        ]
    )


def progress_reporter(job: Job, stage: str) -> Callable[[int, int, float | None], None]:
    """A core progress callback that updates ``job`` and stops the work when it is cancelled."""

    def report(done: int, total: int, eta_s: float | None) -> None:
        if job.cancel.is_set():
            raise JobCancelled  # core saves finished entries before it stops
        job.report(done, total, eta_s, stage)

    return report


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
