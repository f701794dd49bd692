"""Finetune: train the chosen solution's training form in the background, watch it, stop, resume.

Jobs belong to a model: this page shows the jobs of the model in use, and lists the others apart,
each one click away from its own model.
"""

from __future__ import annotations

import streamlit as st

from pages._shared import frame, job_list, jobs_finetune, panels, state
from pages._shared.budget_state import solution_or_default
from pages._shared.job_view import job_panel

frame.frame_guard()

st.title("Finetune")
panel = panels.current()
mine, others = job_list.split_by_model(job_list.session_jobs(), state.choice())
job = job_list.shown_job(mine)
solution = solution_or_default()
if job is not None:
    st.subheader("Finetune job")
    st.caption(f"Job {job.id}: {job_list.job_label(job)}")
    job_panel(
        job,
        "finetune",
        cancel_label="Cancel (a checkpoint is kept)",
        extra=panel.finetune_view,
        stopped_note="resume it from its checkpoint, or start again below.",
    )
    if job.status == "cancelled" and st.button("Resume from the checkpoint", key="resume_finetune"):
        jobs_finetune.resume_finetune(job)
        st.rerun()
    same = solution is not None and state.solution_key(solution) == state.solution_key(
        job.config["solution"]
    )
    if job.status == "done" and same:
        st.page_link("pages/export.py", label="Download it on the Export page →")
    elif job.status == "done":
        st.button(
            "Make this job's solution the current one (to export it)",
            key="use_job_solution",
            on_click=job_list.switch_to,
            args=(job,),
        )
    earlier = [j for j in mine if j is not job]
    job_list.jobs_section(
        earlier,
        title="Earlier finetunes of this model",
        note="Each keeps its own solution and settings.",
        button="Show it",
    )
job_list.jobs_section(
    others,
    title="Finetunes of other models",
    note="Started in this session on another model; they are not offered for this one.",
    button="Switch to {model}",
)
if job is not None and job.active:
    st.caption("It runs in the background: change page or reload, it keeps going.")
    st.stop()

st.subheader("New finetune")
solution = frame.require(
    solution, "Choose a solution on the Budget page first: finetuning starts from it."
)
panel.finetune_form(solution)
