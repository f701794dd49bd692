"""Finetune: train the chosen solution's training form in the background, watch it, stop, resume."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.finetune import FinetuneConfig
from pages import _shared as shared
from pages._shared import diffusion, jobs, tasks

shared.frame_guard()


def curves(job: jobs.Job) -> None:
    """Training loss and accuracy so far, then the test accuracies when the job is done."""
    if job.history:
        frame = pd.DataFrame(job.history)
        figure = make_subplots(specs=[[{"secondary_y": True}]])
        figure.add_trace(go.Scatter(x=frame.step, y=frame.loss, name="loss"), secondary_y=False)
        figure.add_trace(
            go.Scatter(x=frame.step, y=frame.accuracy, name="train accuracy %"), secondary_y=True
        )
        figure.update_layout(
            height=300,
            margin={"l": 10, "r": 10, "t": 30, "b": 10},
            xaxis_title="step",
            legend={"orientation": "h", "y": 1.15},
        )
        st.plotly_chart(figure, key=f"curves_{job.id}")
    solution = job.config["solution"]
    st.caption(
        f"Job {job.id}: {solution.method} at {solution.latency_ms:.4g} ms predicted, "
        f"{len(solution.segments)} segments · {job.config['finetune'].optimizer}, lr "
        f"{job.config['finetune'].lr:g}, batch {job.config['finetune'].batch_size}"
    )
    result = job.result
    if job.status == "done" and isinstance(result, dict) and result.get("status") == "completed":
        cols = st.columns(3)
        cols[0].metric("Test accuracy, original", f"{result['before'].accuracy:.2f}%")
        cols[1].metric("Merged, no finetune", f"{result['unfinetuned'].accuracy:.2f}%")
        cols[2].metric(
            "Merged, finetuned",
            f"{result['after'].accuracy:.2f}%",
            f"{result['after'].accuracy - result['before'].accuracy:+.2f} pp",
        )
        st.success(
            f"Finetuned {result['steps']} steps in {result['seconds']:.0f} s. "
            "Download it on the Export page."
        )


st.title("Finetune")
job = jobs.registry().get(shared.job_id("finetune"))
if job is not None and job.config.get("model_kind") == "unet":  # ε-loss and samples
    tasks.job_panel(
        job,
        "finetune",
        cancel_label="Cancel (a checkpoint is kept)",
        extra=diffusion.finetune_extra,
        stopped_note="resume it from its checkpoint, or start again below.",
    )
    if job.status == "cancelled" and st.button("Resume from the checkpoint", key="resume_finetune"):
        diffusion.start_finetune(
            job.config["solution"],
            job.config["finetune"],
            fd_samples=job.config["fd_samples"],
            sampling_steps=job.config["sampling_steps"],
            resume_of=job,
        )
        st.rerun()
elif job is not None:
    tasks.job_panel(job, "finetune", cancel_label="Cancel (a checkpoint is kept)", extra=curves)
    if job.status == "cancelled" and st.button("Resume from the checkpoint", key="resume_finetune"):
        tasks.start_finetune(job.config["solution"], job.config["finetune"], resume_of=job)
        st.rerun()
if job is not None and job.active:
    st.caption("It runs in the background: change page or reload, it keeps going.")
    st.stop()

solution = shared.require(
    shared.solution_or_default(),
    "Choose a solution on the Budget page first: finetuning starts from it.",
)
if diffusion.is_unet():
    diffusion.finetune_form(solution)
    st.stop()
st.markdown(
    f"Finetune **{solution.method}** at {solution.latency_ms:.4g} ms ({len(solution.segments)} "
    f"segments) of {shared.choice().label} on **{shared.choice().data_spec}**. The training form "
    "keeps every kept conv separate with its BN; after training it merges exactly."
)
with st.form("finetune_form"):
    cols = st.columns(5)
    cols[0].number_input("Epochs", 1, 100, 1, key="ft_epochs")
    cols[4].number_input(
        "Steps (empty: the epochs)",
        1,
        1_000_000,
        None,
        key="ft_steps",
        help="optimizer steps in all; overrides the epochs (a quick try: 20)",
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
    start = st.form_submit_button("Start finetuning", key="start_finetune", type="primary")
if start:
    state = st.session_state
    config = FinetuneConfig(
        epochs=int(state.ft_epochs),
        steps=int(state.ft_steps) if state.ft_steps else None,
        lr=float(state.ft_lr),
        batch_size=int(state.ft_batch),
        distill_alpha=float(state.ft_distill),
    )
    tasks.start_finetune(solution, config)
    st.rerun()
