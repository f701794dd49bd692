"""The samples panel's finetune: settings with a recommendation and a duration, the live view.

Split from :mod:`pages._shared.panels.samples` to keep each file readable in one sitting; only
that module uses these.
"""

from __future__ import annotations

import streamlit as st

from core.families.unet.finetune import UNetFinetuneConfig
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS
from core.solution import Solution
from pages._shared import caches, finetune_plan, jobs_finetune, jobs_tables, state
from pages._shared.curves import eps_loss_curves
from pages._shared.grids import grid_caption, show_grid
from pages._shared.jobs import Job
from pages._shared.numbers import count, decimal, duration, ms
from pages._shared.panels.control_view import control_notes
from pages._shared.tables_in_use import tables_in_use

__all__ = ["FD_LABEL", "FD_NOTE", "finetune_form", "finetune_view", "resume"]

FD_LABEL = "digits-FD (our digits classifier's features, not Inception FID)"
FD_NOTE = (
    "digits-FD is a Fréchet distance between DDIM samples and the digits test split in the "
    "features of our own digits classifier (digits_resnet): lower is better, comparable only "
    "between runs with the same sample count. It is not the Inception FID papers report."
)
STAGES = (  # the finetune job's grids: result key, caption
    ("original", "original"),
    ("before", "compressed, before finetuning"),
    ("after", "compressed, finetuned"),
)


def finetune_form(solution: Solution) -> None:
    """Steps (recommended for this solution), the ε-loss settings, the predicted duration, Start."""
    problem = jobs_tables.unet_data_problem(caches.bundle())
    if problem is not None:
        st.warning(f"This UNet cannot be finetuned here: {problem}.")
        return
    values, used = st.session_state, tables_in_use()
    plan = finetune_plan.unet_recommendation(solution, caches.chain())
    st.markdown(
        f"Finetune **{solution.method}** at {ms(solution.latency_ms)} predicted "
        f"({len(solution.segments)} segments) of {state.choice().label} on the **digits** with "
        "the ε-prediction loss. The training form keeps a merged block's conv1 and conv2 apart "
        "(its inner GroupNorm → SiLU removed, a new post-norm after conv2); after training it "
        "merges exactly."
    )
    left, right = st.columns([5, 1], vertical_alignment="center")
    left.markdown(f"**Recommended: {count(plan.steps)} steps**: {plan.reason}.")
    if plan.steps:
        right.button(
            f"Use {count(plan.steps)} steps",
            key="use_recommended",
            on_click=lambda: values.update(uft_steps=plan.steps),
        )
    cols = st.columns(6)
    steps = cols[0].number_input("Steps", 1, 1_000_000, max(1, plan.steps), key="uft_steps")
    cols[1].number_input("Learning rate", 1e-6, 1.0, 4e-4, format="%.5f", key="uft_lr")
    batch = cols[2].number_input("Batch", 1, 1024, 64, key="uft_batch")
    cols[3].number_input(
        "Holdout loss every", 1, 100_000, 50, key="uft_eval", help="steps between holdout ε-losses"
    )
    cols[4].number_input(
        "Samples for digits-FD",
        0,
        4096,
        128,
        key="uft_fd",
        help="DDIM samples per network for the digits-FD afterwards (0: none, only the 16-image "
        "grids); more is steadier and slower",
    )
    cols[5].number_input(
        "DDIM steps",
        1,
        1000,
        DEFAULT_SAMPLING_STEPS,
        key="uft_sampling_steps",
        help="denoising steps per sample for the grids and the digits-FD afterwards",
    )
    control = finetune_plan.control_checkbox()
    seconds = finetune_plan.step_seconds(
        solution, used, batch=int(batch), timer=finetune_plan.time_unet_steps
    )
    after = "; the holdout losses and the sampling afterwards (grids, digits-FD) add to it"
    st.markdown(finetune_plan.duration_note(int(steps), seconds, after=after, control=control))
    if st.button("Start finetuning", key="start_finetune", type="primary"):
        config = UNetFinetuneConfig(
            steps=int(values.uft_steps),
            lr=float(values.uft_lr),
            batch_size=int(values.uft_batch),
            eval_every=int(values.uft_eval),
        )
        label = (
            f"Adam, lr {config.lr:g}, batch {config.batch_size}, {count(config.steps)} steps, "
            f"{count(int(values.uft_fd))} samples for digits-FD"
        )
        if control:
            label += ", with a control"
        jobs_finetune.start_unet_finetune(
            solution,
            config,
            fd_samples=int(values.uft_fd),
            sampling_steps=int(values.uft_sampling_steps),
            label=label,
            estimate_s=seconds.seconds(config.steps) if seconds else None,
            control=control,
        )
        st.rerun()


def finetune_view(job: Job) -> None:
    """The ε-loss curves so far; when done, the grids before/after finetuning and the digits-FD."""
    if job.history:
        figure = eps_loss_curves(
            list(job.history),
            reference=job.live.get("reference"),
            total_steps=job.total or job.config["finetune"].steps,
        )
        st.plotly_chart(figure, key=f"unet_curves_{job.id}")
    elif job.active:
        st.caption("The curves appear with the first steps (the original is tested first).")
    result = job.result
    if job.status != "done" or not isinstance(result, dict) or result.get("status") != "completed":
        return
    three_metrics(
        "Holdout ε-loss, original",
        "Compressed, before finetuning",
        "Compressed, finetuned",
        (result["holdout_original"], result["holdout_before"], result["holdout_after"]),
    )
    control = result.get("control")
    if control is not None and control.status == "completed":
        reference = control.figures["eps_loss"]
        st.metric(
            "Control: the original finetuned the same way",
            decimal(reference),
            f"{result['holdout_after'] - reference:+.4g}: compressed, finetuned vs control",
            delta_color="inverse",
        )
    control_notes(result)
    steps = result["sampling_steps"]
    for column, (name, what) in zip(st.columns(3), STAGES, strict=True):
        with column:
            show_grid(result["grids"][name], grid_caption(what, steps))
    if result["fd"]:
        fd = result["fd"]
        st.markdown(f"**{FD_LABEL}**, lower is better")
        three_metrics(
            "digits-FD, original",
            "digits-FD, before finetuning",
            "digits-FD, finetuned",
            (fd["original"], fd["before"], fd["after"]),
        )
        st.caption(f"{FD_NOTE} Here: {result['fd_samples']} samples per network, {steps} steps.")
    estimate = job.config.get("estimate_s")
    predicted = f" (predicted {duration(estimate)} for the steps alone)" if estimate else ""
    st.success(
        f"Finetuned {count(result['steps'])} steps in {duration(result['seconds'])}{predicted}."
    )


def resume(job: Job) -> Job:
    """Continue a stopped UNet finetune from its checkpoint, with its settings."""
    return jobs_finetune.start_unet_finetune(
        job.config["solution"],
        job.config["finetune"],
        fd_samples=job.config["fd_samples"],
        sampling_steps=job.config["sampling_steps"],
        resume_of=job,
    )


def three_metrics(first: str, second: str, third: str, values: tuple[float, ...]) -> None:
    """Original, before and after finetuning, with after's change from before (lower is better)."""
    cols = st.columns(3)
    cols[0].metric(first, decimal(values[0]))
    cols[1].metric(second, decimal(values[1]))
    cols[2].metric(
        third, decimal(values[2]), f"{values[2] - values[1]:+.4g} vs before", delta_color="inverse"
    )
