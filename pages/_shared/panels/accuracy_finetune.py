"""The accuracy panel's finetune: its settings with a recommendation and a duration, its live view.

Split from :mod:`pages._shared.panels.accuracy` to keep each file readable in one sitting; only
that module uses these.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.families.classifier.workflow import INTERIM_TEST_IMAGES
from core.finetune import Evaluation
from core.solution import Solution
from pages._shared import caches, finetune_plan, jobs_finetune, state
from pages._shared.curves import accuracy_curves
from pages._shared.jobs import Job
from pages._shared.numbers import count, duration, ms, percent
from pages._shared.panels.control_view import control_notes
from pages._shared.tables_in_use import tables_in_use

__all__ = ["finetune_form", "finetune_view", "finetune_result"]


def finetune_form(solution: Solution) -> None:
    """Steps (recommended for this solution), optimizer settings, the predicted duration, Start."""
    which, chain, used = state.choice(), caches.chain(), tables_in_use()
    values = st.session_state
    images = len(caches.data().finetune)
    batch = int(values.get("ft_batch", 64))
    plan = finetune_plan.classifier_recommendation(
        solution, chain, used, images=images, batch=batch
    )
    st.markdown(
        f"Finetune **{solution.method}** at {ms(solution.latency_ms)} predicted "
        f"({len(solution.segments)} segments) of {which.label} on **{which.data_spec}** "
        f"({count(images)} finetune images). The training form keeps every kept conv separate "
        "with its BN; after training it merges exactly."
    )
    finetune_plan.recommended_row(plan, "ft_steps")
    cols = st.columns(4)
    steps = cols[0].number_input(
        "Steps",
        1,
        1_000_000,
        max(1, plan.steps),
        key="ft_steps",
        help=f"optimizer steps in all; one epoch is {count(-(-images // batch))} steps here",
    )
    cols[1].number_input("Learning rate", 1e-5, 1.0, 0.02, format="%.4f", key="ft_lr")
    cols[2].number_input("Batch", 8, 1024, 64, step=8, key="ft_batch")
    cols[3].number_input(
        "Distillation weight",
        0.0,
        1.0,
        0.0,
        0.1,
        key="ft_distill",
        help="0: plain labels; Kim23 uses 0.3 with the original network as teacher",
    )
    control = finetune_plan.control_checkbox()
    seconds = finetune_plan.step_seconds(solution, used, batch=batch)
    st.markdown(finetune_plan.duration_note(int(steps), seconds, control=control))
    if st.button("Start finetuning", key="start_finetune", type="primary"):
        options = {
            "steps": int(values.ft_steps),
            "lr": float(values.ft_lr),
            "batch_size": int(values.ft_batch),
            "distill": float(values.ft_distill),
        }
        config = caches.family().finetune_config(options, caches.data())
        label = f"SGD, lr {config.lr:g}, batch {config.batch_size}, {count(config.steps)} steps"
        if config.distill_alpha:
            label += f", distillation {config.distill_alpha:g}"
        if control:
            label += ", with a control"
        estimate = seconds.seconds(config.steps) if seconds and config.batch_size == batch else None
        jobs_finetune.start_finetune(
            solution,
            config,
            result=finetune_result,
            label=label,
            estimate_s=estimate,
            control=control,
        )
        st.rerun()


def finetune_result(done: jobs_finetune.Completed) -> dict[str, Any]:
    """A completed job's accuracies as the views read them: the original's, the merged network's
    before finetuning (its training form, which merges exactly) and after, on the test split."""
    images = len(done.data.test)

    def tested(stage: str) -> Evaluation:
        figures = done.figures[stage]
        return Evaluation(accuracy=figures["accuracy"], loss=figures["loss"], count=images)

    return {
        "before": tested("original"),
        "unfinetuned": tested("surgery"),
        "after": tested("merged"),
    }


def finetune_view(job: Job) -> None:
    """Loss and accuracy so far (test accuracy at intervals, the original's as a line); results."""
    tests = list(job.live.get("tests", []))
    if job.history or tests:
        figure = accuracy_curves(
            list(job.history),
            tests,
            reference=job.live.get("reference"),
            total_steps=job.total or job.config["finetune"].steps or 1,
            test_images=min(len(_data_of(job).test), INTERIM_TEST_IMAGES),
        )
        st.plotly_chart(figure, key=f"curves_{job.id}")
    elif job.active:
        st.caption("The curves appear with the first steps (the original is tested first).")
    result = job.result
    if job.status != "done" or not isinstance(result, dict) or result.get("status") != "completed":
        return
    original = result["before"].accuracy
    cols = st.columns(3)
    cols[0].metric("Test accuracy, original", percent(original))
    cols[1].metric(
        "Merged, no finetune",
        percent(result["unfinetuned"].accuracy),
        f"{result['unfinetuned'].accuracy - original:+.2f} pp vs original",
    )
    cols[2].metric(
        "Merged, finetuned",
        percent(result["after"].accuracy),
        f"{result['after'].accuracy - original:+.2f} pp vs original",
    )
    control = result.get("control")
    if control is not None and control.status == "completed":
        after = result["after"].accuracy
        st.metric(
            "Control: the original finetuned the same way",
            percent(control.figures["accuracy"]),
            f"{after - control.figures['accuracy']:+.2f} pp: merged, finetuned vs control",
        )
    control_notes(result)
    estimate = job.config.get("estimate_s")
    predicted = f" (predicted {duration(estimate)})" if estimate else ""
    st.success(
        f"Finetuned {count(result['steps'])} steps in {duration(result['seconds'])}{predicted}, "
        f"tested on {count(result['after'].count)} test images."
    )


def _data_of(job: Job) -> Any:
    """The data the job's model is finetuned and tested on (cached by family, spec and size)."""
    return caches.data(job.config["choice"], weights=job.config.get("state_dict"))
