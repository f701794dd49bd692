"""Tables: the latency and importance look-up tables the DP reads, and how honest their sum is."""

from __future__ import annotations

import os

import streamlit as st

from core.importance import MODES
from pages import _shared as shared
from pages._shared import diffusion, figures, jobs, tasks

shared.frame_guard()


def compute_panel() -> None:
    """Settings and a start button; the work runs in a background job (tasks.start_tables)."""
    with st.form("tables_form"):
        cols = st.columns(4)
        big = shared.choice().input_size >= 128
        cols[0].number_input(
            "Batch (images per timed call)", 1, 512, 1 if big else 64, key="tables_batch"
        )
        cols[1].radio(
            "Importance",
            MODES,
            key="tables_mode",
            horizontal=True,
            help="finetune: a brief finetune per entry (the paper, minutes); "
            "distortion: output change with no training (seconds, a first look)",
        )
        cols[2].number_input(
            "Timing threads",
            1,
            os.cpu_count() or 1,
            1,
            key="tables_threads",
            help="torch threads while timing; 1 (as the shipped tables) is steadiest on a busy "
            "machine, and is what the Budget page's Measure button then uses too",
        )
        cols[3].number_input("Importance processes", 1, os.cpu_count() or 1, 1, key="tables_jobs")
        if st.form_submit_button("Compute the tables", key="compute_tables", type="primary"):
            tasks.start_tables(
                batch=int(st.session_state.tables_batch),
                mode=st.session_state.tables_mode,
                processes=int(st.session_state.tables_jobs),
                threads=int(st.session_state.tables_threads),
            )
            st.rerun(scope="app")


st.title("Latency and importance tables")
job = jobs.registry().get(shared.job_id("tables"))
unet = diffusion.is_unet()
if job is not None and (job.active or job.status in ("failed", "cancelled")):
    if unet:  # UNet tables are written whole: a stopped run starts again
        tasks.job_panel(job, "tables", cancel_label="Stop", stopped_note="start it again below.")
    else:
        tasks.job_panel(job, "tables", cancel_label="Stop (finished entries are kept)")
used = shared.tables_in_use()
if used is None:
    saved = (
        "the latency table first, then the ε-loss importance of every entry; the tables appear "
        "when both are done"
        if unet
        else "every finished entry is saved at once, so a stopped run resumes where it stopped"
    )
    st.info(
        f"No tables for {shared.choice().label} yet: none ship for it and none were computed. "
        f"Compute them here: {saved} (written to {shared.computed_tables_dir()})."
    )
    if (job is None or not job.active) and unet:
        diffusion.tables_form()
    elif job is None or not job.active:
        compute_panel()
    st.stop()

tables, meta = used.tables, used.tables.meta
st.caption(
    f"{used.source} tables in {shared.short_path(used.directory)} · {meta.get('backend', '?')} on "
    f"{meta.get('device', '?')} ({meta.get('cpu', '')}), batch {meta.get('batch', '?')}, "
    f"{meta.get('threads', '?')} thread(s) · importance: "
    f"{meta.get('importance_mode') or meta.get('importance_kind', '?')} "
    f"({meta.get('importance_normalization', '?')}) on {meta.get('data', '?')}"
)

st.subheader("Additivity: is the table sum the network's latency?")
table_ms, network_ms = tables.original_latency_ms, meta.get("network_latency_ms")
cols = st.columns(3)
cols[0].metric("Table sum, keep everything", f"{table_ms:.4g} ms")
if network_ms:
    error = (table_ms - network_ms) / network_ms
    cols[1].metric("Whole network, measured", f"{network_ms:.4g} ms")
    cols[2].metric("Surrogate error", f"{error:+.1%}")
    if unet:
        st.caption(f"{diffusion.ADDITIVITY_NOTE} Here it is off by {error:+.1%} of one step.")
    else:
        st.caption(
            "The DP adds segment latencies. The table times each merged conv with its "
            "activation; it leaves out BN, residual adds, pooling and the classifier, and timing "
            f"pieces alone differs from timing them in sequence. Here the sum is off by "
            f"{error:+.1%} of the measured network: budgets are shares of the table sum, not of "
            "the measured time."
        )
else:
    cols[1].metric("Whole network, measured", "not recorded")
    st.caption("meta.json records no whole-network time, so the sum cannot be checked.")

st.subheader("Per kernel option, over segments (i, j]")
options = sorted({(e.kernel, e.depthwise) for e in tables.entries if e.kernel})
choice = st.selectbox(
    "Kernel option",
    options,
    key="table_option",
    format_func=lambda o: f"{o[0]}×{o[0]}{' depthwise' if o[1] else ''}",
)
left, right = st.columns(2)
left.plotly_chart(
    figures.table_heatmap(tables, "latency_ms", *choice, title="latency (ms)"),
    key="latency_heatmap",
)
right.plotly_chart(
    figures.table_heatmap(tables, "importance", *choice, title="importance"),
    key="importance_heatmap",
)
st.caption(
    "Row i, column j is segment (i, j] merged into one conv of this kernel; blank cells "
    "are segments that cannot take it (breaks, residual spans, other kernel sizes)."
)

st.subheader("All entries")
st.dataframe(tasks.entries_frame(tables), hide_index=True, key="entries_table")
with st.expander("meta.json"):
    st.json(meta, expanded=False)
