"""The accuracy panel's results: a classifier's finetune job and its export, in accuracies.

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
from core.solution import Solution
from pages._shared import caches, jobs_finetune, jobs_measure, state
from pages._shared.figures import accuracy_curves
from pages._shared.jobs import Job
from pages._shared.panels.base import ExportView
from pages._shared.tables_in_use import TablesInUse
from pages._shared.views import pair_or_blanks

__all__ = ["finetune_view", "export_view", "onnx_bytes"]


def finetune_view(job: Job) -> None:
    """Training loss and accuracy so far, then the test accuracies when the job is done."""
    if job.history:
        st.plotly_chart(accuracy_curves(job.history), key=f"curves_{job.id}")
    solution, config = job.config["solution"], job.config["finetune"]
    st.caption(
        f"Job {job.id}: {solution.method} at {solution.latency_ms:.4g} ms predicted, "
        f"{len(solution.segments)} segments · {config.optimizer}, lr {config.lr:g}, "
        f"batch {config.batch_size}"
    )
    result = job.result
    if job.status != "done" or not isinstance(result, dict) or result.get("status") != "completed":
        return
    cols = st.columns(3)
    cols[0].metric("Test accuracy, original", f"{result['before'].accuracy:.2f}%")
    cols[1].metric("Merged, no finetune", f"{result['unfinetuned'].accuracy:.2f}%")
    cols[2].metric(
        "Merged, finetuned",
        f"{result['after'].accuracy:.2f}%",
        f"{result['after'].accuracy - result['before'].accuracy:+.2f} pp",
    )
    st.success(
        f"Finetuned {result['steps']} steps in {result['seconds']:.0f} s. "
        "Download it on the Export page."
    )


def export_view(solution: Solution, used: TablesInUse) -> ExportView:
    """Depth, size, accuracy and measured speed of the compressed classifier beside the original."""
    finetuned = jobs_finetune.finetuned_result(solution)
    if finetuned is not None:
        network, form = finetuned["merged"], "finetuned, then merged"
        accuracy = {"before": finetuned["before"].accuracy, "after": finetuned["after"].accuracy}
    else:
        network, form = caches.merged(solution), "merged without finetuning"
        accuracy = state.measurement("accuracy", solution)
        st.info(
            "This solution has not been finetuned (Finetune page): the export is the merged "
            "network straight from the original weights, so it keeps less of the accuracy."
        )
    before, after = network_metrics(caches.bundle().model), network_metrics(network)
    speed = state.measurement("speed", solution)
    st.markdown(f"**{solution.method}** at {solution.latency_ms:.4g} ms predicted · {form}")
    rows = [
        ("main-path convs (depth)", len(caches.chain().convs), after["depth"]),
        ("parameters", before["params"], after["params"]),
        ("test accuracy %", *pair_or_blanks(accuracy, "before", "after")),
        ("measured ms per batch", *pair_or_blanks(speed, "original_ms", "merged_ms")),
    ]
    frame = pd.DataFrame(rows, columns=["", "original", "compressed"])
    st.dataframe(frame, hide_index=True, key="export_table")
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
            measured = jobs_measure.measure_classifier(solution, used)
        state.remember_measurement("speed", solution, measured)
        st.rerun()
    if accuracy is None and cols[1].button("Test the accuracy", key="export_accuracy"):
        with st.spinner("Evaluating both networks on the test split…"):
            tested = jobs_measure.evaluate_accuracy(network)
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
    )


def onnx_bytes(network: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The merged classifier as ONNX bytes, verified with ONNX Runtime (core.export)."""
    with tempfile.TemporaryDirectory(prefix="lm-export-") as folder:
        return export_onnx(network, Path(folder) / "model.onnx", input_shape).read_bytes()
