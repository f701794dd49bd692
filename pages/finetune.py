"""Finetune: train the chosen solution's training form in the background, watch it, stop, resume."""

from __future__ import annotations

import streamlit as st

from pages._shared import frame, jobs, panels, state
from pages._shared.job_view import job_panel
from pages._shared.tables_in_use import solution_or_default

frame.frame_guard()

st.title("Finetune")
job = jobs.registry().get(state.job_id("finetune"))
if job is not None:
    owner = panels.panel_of(job.config["choice"])  # the job's model, maybe not the session's
    job_panel(
        job,
        "finetune",
        cancel_label="Cancel (a checkpoint is kept)",
        extra=owner.finetune_view,
        stopped_note="resume it from its checkpoint, or start again below.",
    )
    if job.status == "cancelled" and st.button("Resume from the checkpoint", key="resume_finetune"):
        owner.resume_finetune(job)
        st.rerun()
    if job.active:
        st.caption("It runs in the background: change page or reload, it keeps going.")
        st.stop()

solution = frame.require(
    solution_or_default(),
    "Choose a solution on the Budget page first: finetuning starts from it.",
)
panels.current().finetune_form(solution)
