"""Tables: the latency and importance look-up tables the DP reads, and how honest their sum is."""

from __future__ import annotations

import streamlit as st

from pages._shared import figures, frame, jobs, panels, state, views
from pages._shared.job_view import job_panel
from pages._shared.numbers import ms
from pages._shared.paths import short_path
from pages._shared.tables_in_use import computed_tables_dir, tables_in_use

frame.frame_guard()

st.title("Latency and importance tables")
panel = panels.current()
job = jobs.registry().get(state.job_id("tables"))
if job is not None and not state.same_model(job.config["choice"], state.choice()):
    if job.active:  # another model's: it belongs there, not here
        st.caption(f"{job.title} is running in the background; switch back to see it.")
    job = None
if job is not None and (job.active or job.status in ("failed", "cancelled")):
    job_panel(
        job,
        "tables",
        cancel_label=panel.tables_cancel_label,
        stopped_note=panel.tables_stopped_note,
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
recorded = {key: meta.get(key) or "not recorded" for key in ("backend", "device", "batch", "data")}
cpu, threads = meta.get("cpu"), meta.get("threads")
mode = meta.get("importance_mode") or meta.get("importance_kind") or "not recorded"
scale = f" ({meta['importance_normalization']})" if meta.get("importance_normalization") else ""
st.caption(
    f"{used.source} tables in {short_path(used.directory)} · {recorded['backend']} on "
    f"{recorded['device']}{f' ({cpu})' if cpu else ''}, batch {recorded['batch']}"
    f"{f', {threads} thread' + ('s' if threads != 1 else '') if threads else ''} · importance: "
    f"{mode}{scale} on "
    f"{recorded['data']}"
)

st.subheader("Additivity: is the table sum the network's latency?")
table_ms, network_ms = tables.original_latency_ms, meta.get("network_latency_ms")
cols = st.columns(3)
cols[0].metric("Table sum, keep everything", ms(table_ms))
if network_ms:
    error = (table_ms - network_ms) / network_ms
    cols[1].metric("Whole network, measured", ms(network_ms))
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
st.dataframe(
    views.entries_frame(tables),
    hide_index=True,
    key="entries_table",
    column_config={
        name: st.column_config.NumberColumn(format=spec)
        for name, spec in views.ENTRY_FORMATS.items()
    },
)
with st.expander("meta.json"):
    st.json(meta, expanded=False)
