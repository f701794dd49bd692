"""Export: the compressed checkpoint and its ONNX graph, with how they compare to the original.

The header names the model, the solution and how the network was made (finetuned by which job,
or merged straight from the original); the files hold exactly that network. On request, the ONNX
graph is timed against the original's ONNX export on ONNX Runtime (a deployment format gets its
own measurement: a speed-up in torch need not hold there), and the result is recorded in the
checkpoint's metrics as ``onnx_speed``.
"""

from __future__ import annotations

import streamlit as st

from core.workflows.measure import (
    backend_warning,
    onnx_speed_how,
    onnx_speed_line,
    onnx_speed_warning,
)
from pages._shared import frame, jobs_onnx, panels, state
from pages._shared.budget_state import solution_or_default
from pages._shared.downloads import checkpoint_download, file_stem
from pages._shared.numbers import speedup
from pages._shared.tables_in_use import tables_in_use

frame.frame_guard()

st.title("Export")
used = frame.require(tables_in_use(), "No tables for this model: see the Tables page.")
solution = frame.require(
    solution_or_default(), "No solution fits: choose a budget on the Budget page."
)
view = panels.current().export_view(solution, used)
which = state.choice()
onnx_kind = f"onnx_speed_{view.tag}"  # the merged and the finetuned network are timed apart
onnx_speed = state.measurement(onnx_kind, solution)
metrics = {**view.metrics, "onnx_speed": onnx_speed} if onnx_speed else view.metrics
stem = f"{file_stem(which, solution)}-{view.tag}"
left, right = st.columns(2)
left.download_button(
    "Download the compressed checkpoint (.pt)",
    data=checkpoint_download(which, view.network, solution, metrics),
    file_name=f"{stem}.pt",
    mime="application/octet-stream",
    on_click="ignore",
    key="download_checkpoint",
    type="primary",
)
right.download_button(
    view.onnx_label,
    data=view.onnx,
    file_name=f"{stem}.onnx",
    mime="application/octet-stream",
    on_click="ignore",
    key="download_onnx",
)
st.caption(view.notes)

if jobs_onnx.offers_onnx_timing(which):
    st.subheader("In ONNX Runtime")
    mismatch = backend_warning(str(used.tables.meta.get("backend") or "torch"))
    if onnx_speed is None:
        st.write(
            "A speed-up in torch need not hold in ONNX Runtime: time the ONNX file against the "
            "original network's ONNX export (BN folded, exported the same way)."
        )
        if st.button("Time the ONNX file against the original's", key="export_onnx_measure"):
            with st.spinner("Timing both ONNX graphs side by side in ONNX Runtime…"):
                measured = jobs_onnx.measure_onnx_export(which, view.onnx, solution, used)
            state.remember_measurement(onnx_kind, solution, measured)
            st.rerun()
    else:
        st.metric("Speed-up in ONNX Runtime, measured", speedup(onnx_speed["speedup"]))
        st.markdown(onnx_speed_line(onnx_speed))
        st.caption(onnx_speed_how(onnx_speed) + "; recorded in the checkpoint's metrics")
        slower = onnx_speed_warning(onnx_speed)
        if slower:
            st.warning(slower.removeprefix("warning: "))
    if mismatch:
        st.caption(mismatch)
