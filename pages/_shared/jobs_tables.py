"""The tables job: measure the latency table, then estimate the importance table, in the background.

A classifier's job runs core's tables workflow (:mod:`core.workflows.tables`), the very functions
``python -m core profile`` and ``importance`` run, with the settings the Tables page shows (mode,
steps, evaluation images): the same checks (an original at chance stops it with one line), the
same meta.json. A UNet's job still calls its family's pipeline directly. Each takes what it needs
from the session in the script thread (the cached model is shared: the worker gets a deep copy,
or core functions that return new modules), starts a :class:`~pages._shared.jobs.Job` and
remembers its id; the worker calls only ``core``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import LayerMergeError
from core.families.unet.data import load_diffusion_data
from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
from core.families.unet.latency import measure_unet_latency
from core.latency import LatencyConfig
from core.runner import Runner
from core.workflows import tables
from pages._shared import caches, state
from pages._shared.jobs import Job, progress_reporter, registry
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import computed_tables_dir, forget_chosen_tables

__all__ = ["start_classifier_tables", "start_unet_tables", "unet_data_problem", "check_unet_data"]


def start_classifier_tables(
    *,
    batch: int,
    mode: str,
    processes: int,
    threads: int = 1,
    steps: int | None = None,
    eval_images: int | None = None,
) -> Job:
    """A classifier's tables: latency, then importance by ``mode`` (finetune or distortion).

    ``steps`` (finetune steps per entry) and ``eval_images`` (holdout images each network is
    scored on) are the CLI's ``--steps`` and ``--eval-images``; None takes core's defaults.
    Finished entries are saved as they come, so a stopped run resumes where it stopped.

    Raises:
        LayerMergeError: bad settings, or another session is computing the same directory.
    """
    which = state.choice()
    weights = state.weights() if which.weights_key != "default" else None
    model = {"weights": weights, "width": which.width, "input_size": which.input_size}
    out = computed_tables_dir(which)
    latency_config = LatencyConfig(batch=batch, threads=threads)
    settings = {"mode": mode, "steps": steps, "eval_images": eval_images}
    caches.family(which).importance_config(**settings)  # bad settings: refused before it starts
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
        tables.importance(
            which.name,
            data=which.data_spec,
            **model,
            out=out,
            settings=settings,
            runner=runner,
            progress=progress_reporter(job, "importance"),
            cancel=job.cancel,
        )
        return str(out)

    config = {"batch": batch, "processes": processes, "threads": threads, **settings}
    return _start(which, out, work, config)


def start_unet_tables(
    *, batch: int, steps: int, holdout_images: int, processes: int, threads: int = 1
) -> Job:
    """A UNet's tables: latency, then the ε-loss importance (``steps`` of finetune per entry).

    The UNet's tables are written whole when each part is done: a stopped run starts again.

    Raises:
        LayerMergeError: bad settings, or another session is computing the same directory.
    """
    which = state.choice()
    bundle, uchain = caches.bundle(which), caches.traced(which)
    check_unet_data(bundle)
    out = computed_tables_dir(which)
    latency_config = LatencyConfig(batch=batch, threads=threads)
    importance_config = UNetImportanceConfig(steps=steps, holdout_images=holdout_images)

    def work(job: Job) -> str:
        measure_unet_latency(
            bundle, uchain, latency_config, out=out, progress=progress_reporter(job, "latency")
        )
        data = load_diffusion_data(which.data_spec, bundle.input_size)
        estimate_unet_importance(
            bundle,
            uchain,
            data,
            importance_config,
            out=out,
            jobs=processes,
            progress=progress_reporter(job, "importance"),
        )
        return str(out)

    settings = {"batch": batch, "steps": steps, "processes": processes, "threads": threads}
    return _start(which, out, work, settings)


def unet_data_problem(bundle: Any) -> str | None:
    """Why the bundled digits cannot train a UNet (importance, finetuning), or None."""
    if bundle.in_channels == 1:
        return None
    return (
        f"{bundle.name} takes {bundle.in_channels}-channel images, and the only diffusion data "
        "so far is the bundled digits (1 channel): importance and finetuning need images it can "
        "learn from"
    )


def check_unet_data(bundle: Any) -> None:
    """Raise :func:`unet_data_problem`'s answer as a LayerMergeError (before a job starts)."""
    problem = unet_data_problem(bundle)
    if problem is not None:
        raise LayerMergeError(problem)


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
