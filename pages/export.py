"""Export: the compressed checkpoint and its ONNX graph, with how they compare to the original.

The header names the model, the solution and how the network was made (finetuned by which job,
or merged straight from the original); the files hold exactly that network.
"""

from __future__ import annotations

import streamlit as st

from pages._shared import frame, panels, state
from pages._shared.budget_state import solution_or_default
from pages._shared.downloads import checkpoint_download, file_stem
from pages._shared.tables_in_use import tables_in_use

frame.frame_guard()

st.title("Export")
used = frame.require(tables_in_use(), "No tables for this model: see the Tables page.")
solution = frame.require(
    solution_or_default(), "No solution fits: choose a budget on the Budget page."
)
view = panels.current().export_view(solution, used)
which = state.choice()
stem = f"{file_stem(which, solution)}-{view.tag}"
left, right = st.columns(2)
left.download_button(
    "Download the compressed checkpoint (.pt)",
    data=checkpoint_download(which, view.network, solution, view.metrics),
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
