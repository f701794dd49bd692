"""The accuracy panel's tables settings: timing, importance mode, steps and images, a time estimate.

The importance settings are those of ``python -m core importance`` (``--mode``, ``--steps``,
``--eval-images``) and go to the same workflow. The estimate is core's
(:func:`core.importance_estimate.estimate_importance_seconds`): one finetune step and one image's
evaluation are timed on the session's model once per batch size and thread count, then every change
of the settings is re-estimated at once. Widgets are not in a form, so the estimate follows them
before anything starts. Split from :mod:`pages._shared.panels.accuracy`; only that module uses it.
"""

from __future__ import annotations

import os

import streamlit as st

from core.errors import LayerMergeError
from core.importance import MODES
from core.importance_estimate import (
    StepCosts,
    estimate_importance_seconds,
    job_threads,
    measure_step_costs,
)
from pages._shared import caches, jobs_tables, state
from pages._shared.messages import explain

__all__ = ["tables_form"]

COSTS = "importance_step_costs"  # session key: {(model key, data, batch, threads): StepCosts}


def tables_form() -> None:
    """Timing settings, importance settings with the estimated time, and the Compute button."""
    which, data, values = state.choice(), caches.data(), st.session_state
    cores = os.cpu_count() or 1
    st.markdown("**Latency table**")
    cols = st.columns(2)
    big = which.input_size >= 128
    cols[0].number_input(
        "Batch (images per timed call)", 1, 512, 1 if big else 64, key="tables_batch"
    )
    cols[1].number_input(
        "Timing threads",
        1,
        cores,
        1,
        key="tables_threads",
        help="torch threads while timing; 1 (as the shipped tables) is steadiest on a busy "
        "machine, and is what the Budget page's Measure button then uses too",
    )
    st.markdown("**Importance table** (as `python -m core importance` computes it)")
    cols = st.columns(4)
    mode = cols[0].radio(
        "Importance",
        MODES,
        key="tables_mode",
        horizontal=True,
        help="finetune: a brief finetune per entry (the paper, minutes to hours); "
        "distortion: output change with no training (seconds, a first look)",
    )
    trains = mode == "finetune"
    holdout = len(data.holdout)
    default_steps = caches.family(which).importance_config().resolved(len(data.finetune)).steps
    steps = cols[1].number_input(
        "Finetune steps per entry",
        1,
        10_000,
        int(default_steps or 1),
        key="tables_steps",
        disabled=not trains,
        help="SGD steps of each entry's brief finetune (--steps; the default is a quarter epoch "
        "of the finetune split)",
    )
    images = cols[2].number_input(
        "Evaluation images",
        1,
        holdout,
        holdout,
        key="tables_eval_images",
        disabled=not trains,
        help=f"holdout images each finetuned network is scored on (--eval-images; all {holdout} "
        "by default); distortion mode compares logits on 256 of them",
    )
    processes = cols[3].number_input("Importance processes", 1, cores, 1, key="tables_jobs")
    settings = {
        "mode": mode,
        "steps": int(steps) if trains else None,
        "eval_images": int(images) if trains and images < holdout else None,
    }
    _estimate(settings, int(processes))
    if st.button("Compute the tables", key="compute_tables", type="primary"):
        jobs_tables.start_tables(
            batch=int(values.tables_batch),
            processes=int(processes),
            threads=int(values.tables_threads),
            settings=settings,
        )
        st.rerun(scope="app")


def _estimate(settings: dict, processes: int) -> None:
    """Show how long importance will take with ``settings``, and say so when it is long."""
    which, family = state.choice(), caches.family()
    try:
        config = family.importance_config(**settings)
        data, threads = caches.data(), job_threads(processes)
        key = (which.key, which.data_spec, config.batch_size, threads)
        known: dict[tuple, StepCosts] = st.session_state.setdefault(COSTS, {})
        if key not in known:
            with st.spinner("Timing one finetune step of this model for the estimate…"):
                known[key] = measure_step_costs(
                    caches.bundle(), caches.traced(), data, config, threads=threads
                )
        estimate = estimate_importance_seconds(
            caches.bundle(),
            caches.traced(),
            data,
            config,
            family=family,
            processes=processes,
            costs=known[key],
        )
    except LayerMergeError as exc:
        st.caption(f"No time estimate: {explain(exc)}.")
        return
    st.caption(f"Importance will take {estimate.describe()}; the latency table is timed first.")
    if estimate.long:
        st.warning(
            f"This is long: about {estimate.duration} of importance. "
            "Distortion mode gives a first look in seconds; fewer steps or evaluation images, or "
            "more processes, shorten a finetune run.",
            icon=":material/schedule:",
        )
