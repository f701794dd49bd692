"""The samples panel's finetune: settings with a recommendation and a duration, the live view.

Split from :mod:`pages._shared.panels.samples` to keep each file readable in one sitting; only
that module uses these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from core.families.unet.quality import digits_fd
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS, ddim_sample, sample_grid
from core.solution import Solution
from pages._shared import caches, finetune_plan, jobs_finetune, jobs_tables, state
from pages._shared.curves import eps_loss_curves
from pages._shared.grids import GRID_ROWS, SAMPLE_SEED, SAMPLES, grid_caption, show_grid
from pages._shared.jobs import Job, progress_reporter
from pages._shared.numbers import count, decimal, duration, ms
from pages._shared.panels.control_view import control_notes
from pages._shared.tables_in_use import tables_in_use

__all__ = ["FD_LABEL", "FD_NOTE", "finetune_form", "finetune_view", "finetune_result"]

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
    problem = jobs_tables.data_problem()
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
    finetune_plan.recommended_row(plan, "uft_steps")
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
    seconds = finetune_plan.step_seconds(solution, used, batch=int(batch))
    after = "; the holdout losses and the sampling afterwards (grids, digits-FD) add to it"
    st.markdown(finetune_plan.duration_note(int(steps), seconds, after=after, control=control))
    if st.button("Start finetuning", key="start_finetune", type="primary"):
        options = {
            "steps": int(values.uft_steps),
            "lr": float(values.uft_lr),
            "batch_size": int(values.uft_batch),
            "eval_every": int(values.uft_eval),
        }
        config = caches.family().finetune_config(options, caches.data())
        loop = config.config  # the loop's options, beside its device and checkpoint interval
        label = (
            f"Adam, lr {loop.lr:g}, batch {loop.batch_size}, {count(loop.steps)} steps, "
            f"{count(int(values.uft_fd))} samples for digits-FD"
        )
        if control:
            label += ", with a control"
        jobs_finetune.start_finetune(
            solution,
            config,
            result=finetune_result,
            settings={
                "fd_samples": int(values.uft_fd),
                "sampling_steps": int(values.uft_sampling_steps),
            },
            label=label,
            estimate_s=seconds.seconds(loop.steps) if seconds else None,
            control=control,
        )
        st.rerun()


def finetune_result(done: jobs_finetune.Completed) -> dict[str, Any]:
    """A completed job's holdout ε-losses, and same-seed sample grids (and digits-FD) of the
    original, the merged UNet before finetuning and after."""
    family, model, traced = done.model.family, done.model.bundle.model, done.model.traced
    training = family.training_form(model, traced, done.solution)  # before finetuning
    before = family.merge(training, traced, done.solution)
    fd_samples, steps = done.job.config["fd_samples"], done.job.config["sampling_steps"]
    networks = {"original": model, "before": before, "after": done.merged}
    grids, fd = _samples(done.job, networks, fd_samples, steps)
    return {
        "holdout_original": done.figures["original"]["eps_loss"],
        "holdout_before": done.figures["surgery"]["eps_loss"],
        "holdout_after": done.figures["finetuned"]["eps_loss"],
        "grids": grids,
        "fd": fd,
        "fd_samples": fd_samples,
        "sampling_steps": steps,
    }


def _samples(
    job: Job, networks: dict[str, Any], fd_samples: int, steps: int
) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
    """Same-seed sample grids of each network and, for ``fd_samples`` > 1, their digits-FD."""
    reporter = progress_reporter(job, "sampling")
    count_ = max(SAMPLES, fd_samples)
    grids: dict[str, np.ndarray] = {}
    fd: dict[str, float] | None = {} if fd_samples > 1 else None
    for index, (name, network) in enumerate(networks.items()):
        images = ddim_sample(
            network,
            count_,
            steps=steps,
            seed=SAMPLE_SEED,
            progress=lambda done, total, i=index: reporter(i * total + done, 3 * total, None),
        )
        grids[name] = sample_grid(images[:SAMPLES], GRID_ROWS)
        if fd is not None:
            job.stage = "digits-FD"
            fd[name] = digits_fd(images[:fd_samples])
    return grids, fd


def finetune_view(job: Job) -> None:
    """The ε-loss curves so far; when done, the grids before/after finetuning and the digits-FD."""
    if job.history:
        figure = eps_loss_curves(
            list(job.history),
            reference=job.live.get("reference"),
            total_steps=job.total or job.config["finetune"].config.steps,
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


def three_metrics(first: str, second: str, third: str, values: tuple[float, ...]) -> None:
    """Original, before and after finetuning, with after's change from before (lower is better)."""
    cols = st.columns(3)
    cols[0].metric(first, decimal(values[0]))
    cols[1].metric(second, decimal(values[1]))
    cols[2].metric(
        third, decimal(values[2]), f"{values[2] - values[1]:+.4g} vs before", delta_color="inverse"
    )
