"""The accuracy panel's export: the compressed classifier beside the original, and its files.

Split from :mod:`pages._shared.panels.accuracy` (the settings side) to keep each file readable in
one sitting; only that module uses these.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from torch import nn

from core.export import export_onnx, network_metrics
from core.finetune import evaluate
from core.solution import Solution
from pages._shared import caches, job_list, jobs_measure, state, views
from pages._shared.numbers import count, decimal, percent, speedup
from pages._shared.panels.base import ExportView
from pages._shared.panels.control_view import comparison_line
from pages._shared.tables_in_use import TablesInUse

__all__ = ["export_view", "onnx_bytes"]


def export_view(solution: Solution, used: TablesInUse) -> ExportView:
    """Depth, size, accuracy and measured speed of the compressed classifier beside the original."""
    finetuned = job_list.finetuned_result(solution)
    if finetuned is not None:
        job, result = finetuned
        network = result["merged"]
        form = f"finetuned {count(result['steps'])} steps (job {job.id}), then merged"
        accuracy = {"before": result["before"].accuracy, "after": result["after"].accuracy}
    else:
        network, form = caches.merged(solution), "merged without finetuning"
        accuracy = state.measurement("accuracy", solution)
    views.export_header(solution, form)
    line = comparison_line(finetuned[1]) if finetuned is not None else None
    if line:
        st.caption(f"{line[0].upper()}{line[1:]}.")
    if finetuned is None:
        st.info(
            "This solution has not been finetuned on this model (Finetune page): the export is "
            "the merged network straight from the original weights, so it keeps less accuracy."
        )
    before, after = network_metrics(caches.bundle().model), network_metrics(network)
    speed = state.measurement("speed", solution)
    rows = [
        ("main-path convs (depth)", count(len(caches.chain().convs)), count(after["depth"])),
        ("parameters", count(before["params"]), count(after["params"])),
        ("test accuracy", *views.cells(accuracy, "before", "after", percent)),
        ("measured ms per batch", *views.cells(speed, "original_ms", "merged_ms", decimal)),
    ]
    frame = pd.DataFrame(rows, columns=["", "original", "compressed"])
    st.dataframe(frame, hide_index=True, key="export_table")
    cols = st.columns(3)
    if speed is not None:  # the measurement beside its prediction, neither a "gain" on the other
        cols[0].metric("Speed-up, measured", speedup(speed["measured_speedup"]))
        cols[1].metric("Speed-up, predicted (tables)", speedup(speed["predicted_speedup"]))
    elif cols[0].button("Measure the speed-up", key="export_measure"):
        with st.spinner("Timing the original and the compressed network side by side…"):
            measured = jobs_measure.measure(solution, used)
        state.remember_measurement("speed", solution, measured)
        st.rerun()
    if accuracy is None and cols[2].button("Test the accuracy", key="export_accuracy"):
        with st.spinner("Evaluating both networks on the test split…"):
            tested = _test_accuracy(network)
        state.remember_measurement("accuracy", solution, tested)
        st.rerun()
    input_shape = caches.chain().input_shape  # read now: the click runs outside the session
    metrics = {
        "accuracy": accuracy,
        "speed": speed,
        "form": form,
        "predicted_latency_ms": solution.latency_ms,
    }
    return ExportView(
        network=network,
        metrics=metrics,
        onnx=lambda: onnx_bytes(network, input_shape),
        onnx_label="Download ONNX",
        notes="The checkpoint loads with torch.load(weights_only=True); core.export.load(path) "
        "rebuilds the merged network as an ordinary nn.Module. The ONNX graph is checked "
        "against ONNX Runtime before it is offered.",
        tag="finetuned" if finetuned is not None else "merged",
    )


def onnx_bytes(network: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The merged classifier as ONNX bytes, verified with ONNX Runtime (core.export)."""
    with tempfile.TemporaryDirectory(prefix="lm-export-") as folder:
        return export_onnx(network, Path(folder) / "model.onnx", input_shape).read_bytes()


def _test_accuracy(network: nn.Module) -> dict[str, float]:
    """Test accuracy (%) of the original classifier and of ``network`` on the test split."""
    test = caches.data().test
    return {
        "before": evaluate(caches.bundle().model, test).accuracy,
        "after": evaluate(network, test).accuracy,
    }
