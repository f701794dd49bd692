"""Export: the compressed checkpoint (and ONNX) with its depth, size, speed and accuracy."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
import torch

from core.export import build_checkpoint, export_onnx, network_metrics
from core.finetune import evaluate
from pages import _shared as shared
from pages._shared import diffusion, jobs


def finetuned_result(solution_key: str) -> dict[str, Any] | None:
    """The session's finished finetune of this solution, if there is one."""
    job = jobs.registry().get(shared.job_id("finetune"))
    if job is None or job.status != "done" or not isinstance(job.result, dict):
        return None
    if job.result.get("status") != "completed":
        return None
    if shared.solution_key(job.config["solution"]) != solution_key:
        return None
    return job.result


def checkpoint_bytes(network: torch.nn.Module, info: dict[str, Any]) -> bytes:
    """The compressed checkpoint as bytes (runs on click, in a thread: no session access)."""
    buffer = io.BytesIO()
    torch.save(build_checkpoint(network, **info), buffer)
    return buffer.getvalue()


def onnx_bytes(network: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="lm-export-") as folder:
        return export_onnx(network, Path(folder) / "model.onnx", input_shape).read_bytes()


shared.frame_guard()
st.title("Export")
used = shared.require(shared.tables_in_use(), "No tables for this model: see the Tables page.")
solution = shared.require(
    shared.solution_or_default(), "No solution fits: choose a budget on the Budget page."
)
if diffusion.is_unet():  # samples instead of accuracy, the UNet checkpoint, no ONNX yet
    diffusion.export_panel(solution)
    st.stop()
key = shared.solution_key(solution)
finetuned = finetuned_result(key)
if finetuned is not None:
    network, form = finetuned["merged"], "finetuned, then merged"
    accuracy = {"before": finetuned["before"].accuracy, "after": finetuned["after"].accuracy}
else:
    network, form = shared.merged_network(solution), "merged without finetuning"
    accuracy = st.session_state.measurements.get(f"accuracy:{key}")
    st.info(
        "This solution has not been finetuned (Finetune page): the export is the merged network "
        "straight from the original weights, so it keeps less of the accuracy."
    )

original = shared.bundle().model
before, after = network_metrics(original), network_metrics(network)
speed = st.session_state.measurements.get(key)
st.markdown(f"**{solution.method}** at {solution.latency_ms:.4g} ms predicted · {form}")
rows = [
    {
        "": "main-path convs (depth)",
        "original": len(shared.chain().convs),
        "compressed": after["depth"],
    },
    {"": "parameters", "original": before["params"], "compressed": after["params"]},
    {
        "": "test accuracy %",
        "original": accuracy["before"] if accuracy else None,
        "compressed": accuracy["after"] if accuracy else None,
    },
    {
        "": "measured ms per batch",
        "original": speed["original_ms"] if speed else None,
        "compressed": speed["merged_ms"] if speed else None,
    },
]
st.dataframe(pd.DataFrame(rows), hide_index=True, key="export_table")
cols = st.columns(2)
if speed is not None:
    cols[0].metric(
        "Measured speed-up",
        f"{speed['measured_speedup']:.2f}×",
        f"predicted {speed['predicted_speedup']:.2f}×",
        delta_color="off",
    )
elif cols[0].button("Measure the speed-up", key="export_measure"):
    with st.spinner("Timing the original and the compressed network side by side…"):
        st.session_state.measurements[key] = shared.measure_solution(solution, used)
    st.rerun()
if accuracy is None and cols[1].button("Test the accuracy", key="export_accuracy"):
    with st.spinner("Evaluating both networks on the test split…"):
        test = shared.data_splits().test
        st.session_state.measurements[f"accuracy:{key}"] = {
            "before": evaluate(original, test).accuracy,
            "after": evaluate(network, test).accuracy,
        }
    st.rerun()

which = shared.choice()
info = {
    "solution": solution,
    "model_name": which.name,
    "width": which.width,
    "input_size": which.input_size,
    "num_classes": shared.bundle().num_classes,
    "metrics": {
        "accuracy": accuracy,
        "speed": speed,
        "form": form,
        "predicted_latency_ms": solution.latency_ms,
    },
}
input_shape = shared.chain().input_shape
stem = f"{which.name}-{solution.method}-{solution.latency_ms:.3g}ms"
left, right = st.columns(2)
left.download_button(
    "Download the compressed checkpoint (.pt)",
    data=lambda: checkpoint_bytes(network, info),
    file_name=f"{stem}.pt",
    mime="application/octet-stream",
    on_click="ignore",
    key="download_checkpoint",
    type="primary",
)
right.download_button(
    "Download ONNX",
    data=lambda: onnx_bytes(network, input_shape),
    file_name=f"{stem}.onnx",
    mime="application/octet-stream",
    on_click="ignore",
    key="download_onnx",
)
st.caption(
    "The checkpoint loads with torch.load(weights_only=True); core.export.load(path) rebuilds "
    "the merged network as an ordinary nn.Module."
)
