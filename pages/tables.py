"""Tables: the latency and importance look-up tables the DP reads, and how honest their sum is."""

from __future__ import annotations

import streamlit as st

from pages._shared import figures, frame, jobs, panels, state, views
from pages._shared.job_view import job_panel
from pages._shared.paths import short_path
from pages._shared.tables_in_use import computed_tables_dir, tables_in_use

frame.frame_guard()

st.title("Latency and importance tables")
panel = panels.current()
job = jobs.registry().get(state.job_id("tables"))
if job is not None and (job.active or job.status in ("failed", "cancelled")):
    owner = panels.panel_of(job.config["choice"])  # the job's model, maybe not the session's
    job_panel(
        job,
        "tables",
        cancel_label=owner.tables_cancel_label,
        stopped_note=owner.tables_stopped_note,
    )
used = tables_in_use()
if used is None:
    st.info(
        f"No tables for {state.choice().label} yet: none ship for it and none were computed. "
        f"Compute them here: {panel.tables_saved_note} (written to {computed_tables_dir()})."
    )
    if job is None or not job.active:
        panel.tables_form()
    st.stop()

tables, meta = used.tables, used.tables.meta
st.caption(
    f"{used.source} tables in {short_path(used.directory)} · {meta.get('backend', '?')} on "
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
    st.caption(panel.additivity_note(error))
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
st.dataframe(views.entries_frame(tables), hide_index=True, key="entries_table")
with st.expander("meta.json"):
    st.json(meta, expanded=False)
