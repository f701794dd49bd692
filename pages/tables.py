"""Tables: the latency and importance look-up tables the DP reads, and how honest their sum is.

The tables may be the app's own (computed here, or shipped) or any table directory on disk whose
chain is the model's: one the CLI wrote (``profile``/``importance --out DIR``), typed or picked
from those found under ``runs/`` and ``cached_tables/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.errors import LayerMergeError
from core.table_dirs import TableDirectory
from pages._shared import caches, figures, frame, jobs, panels, state, views
from pages._shared.job_view import job_panel
from pages._shared.messages import explain
from pages._shared.numbers import ms
from pages._shared.paths import short_path
from pages._shared.tables_in_use import (
    TablesInUse,
    choose_tables,
    computed_tables_dir,
    forget_chosen_tables,
    table_directories,
    tables_in_use,
)

NOTICE = "tables_notice"  # session key: what the last choice of a directory did (shown once)


def tables_from_disk(used: TablesInUse | None) -> None:
    """Point the page at a table directory: one found for this chain, or any typed path."""
    with st.expander("Use tables from disk (the CLI's, another run's)", expanded=used is None):
        found = table_directories()
        if found:
            labels = {str(d.path): _label(d) for d in found}
            current = str(used.directory) if used is not None else None
            options = list(labels)
            st.selectbox(
                f"Table directories for this model's chain, under runs/ and cached_tables/ "
                f"({len(options)})",
                options,
                index=options.index(current) if current in options else 0,
                format_func=labels.get,
                key="tables_found",
            )
            if st.button("Use these tables", key="use_found_tables"):
                _use(st.session_state.tables_found)
        else:
            st.caption(
                "No folder under runs/ or cached_tables/ holds tables of this model's chain."
            )
        st.text_input(
            "Or the path of a table directory",
            key="tables_dir",
            placeholder="runs/my_tables",
            help="a folder with latency.csv, importance.csv and meta.json, as `python -m core "
            "profile` and `importance --out DIR` write them, for this model (same chain: model, "
            "width, input size); relative paths start at the repository",
        )
        if st.button("Use this directory", key="use_tables_dir"):
            _use(st.session_state.tables_dir)
        if used is not None and used.source == "chosen":
            if st.button("Back to the app's own tables", key="forget_tables_dir"):
                forget_chosen_tables()
                st.rerun(scope="app")


def _use(directory: str) -> None:
    """Use ``directory`` when it fits (the whole app then shows it), or say why not."""
    try:
        chosen = choose_tables(directory)
    except LayerMergeError as exc:  # the tables in use stay in use
        st.error(f"Not used: {explain(exc)}")
        return
    st.session_state[NOTICE] = f"Using the tables in {short_path(chosen.directory)}."
    st.rerun(scope="app")


def _label(found: TableDirectory) -> str:
    mode = f"{found.importance_mode} importance" if found.importance_mode else "importance"
    data = f" on {found.data}" if found.data else ""
    return f"{short_path(Path(found.path))} · {found.model or 'model not recorded'} · {mode}{data}"


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
if st.session_state.get(NOTICE):
    st.success(st.session_state.pop(NOTICE))
tables_from_disk(used)
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
weights = meta.get("weights_digest")
if used.source == "chosen" and weights and weights != caches.bundle().weights_digest:
    st.caption(
        f"Their importance was measured with other weights (digest {weights}) than the model's "
        f"({caches.bundle().weights_digest}); the latency table does not depend on weights."
    )
if (job is None or not job.active) and st.toggle(
    "Compute new tables here", key="tables_recompute", help=panel.tables_saved_note
):
    panel.tables_form()

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
