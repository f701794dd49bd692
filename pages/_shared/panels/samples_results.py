"""The samples panel's results: a UNet measured and sampled, and its export.

Split from :mod:`pages._shared.panels.samples` (the settings side) to keep each file readable in
one sitting; only that module uses these.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from torch import nn

from core.families.unet.export import count_convs
from core.families.unet.onnx_export import export_unet_onnx
from core.solution import Solution
from pages._shared import caches, job_list, jobs_measure, state, views
from pages._shared.grids import grid_caption, merged_grid, original_grid, show_grid
from pages._shared.numbers import count, decimal, ms, speedup
from pages._shared.panels.base import ExportView
from pages._shared.panels.control_view import comparison_line
from pages._shared.panels.samples_finetune import FD_LABEL
from pages._shared.tables_in_use import TablesInUse

__all__ = ["measure_section", "export_view", "onnx_bytes"]


def measure_section(solution: Solution, used: TablesInUse) -> None:
    """On request: the merged UNet's measured step time beside the prediction, and its samples."""
    stored = state.measurement("step", solution)
    if st.button(
        "Measure and sample the merged UNet",
        key="measure_unet",
        help="merges the UNet (core.families.unet), times one denoising step of it beside the "
        "original, and draws 16 samples of each from the same noise",
    ):
        with st.spinner("Merging, timing and sampling…"):
            stored = jobs_measure.measure(solution, used)
        state.remember_measurement("step", solution, stored)
    if stored is None:
        st.caption(
            "Prediction only: the table sum. Press the button to time the merged UNet and see "
            "its samples beside the original's (same seed)."
        )
        return
    columns = ["UNet", "table sum", "predicted step", "measured step", "convs"]
    rows = [
        ("original", used.original_ms, stored["table_network_ms"], stored["original_ms"]),
        ("merged", solution.latency_ms, stored["predicted_merged_ms"], stored["merged_ms"]),
    ]
    convs = [stored["original_convs"], stored["merged_convs"]]
    frame = pd.DataFrame(
        [(name, *map(ms, row), count(n)) for (name, *row), n in zip(rows, convs, strict=True)],
        columns=columns,
    )
    st.dataframe(frame, hide_index=True, key="measure_table")
    st.markdown(
        f"Speed-up of one denoising step: predicted **{speedup(stored['predicted_speedup'])}**, "
        f"measured **{speedup(stored['measured_speedup'])}** ({stored['how']}). The prediction "
        "counts what the table leaves out (attention, skips, the time MLP) as unchanged; "
        "'predicted step ms' uses the whole UNet timed when the tables were made."
    )
    left, right = st.columns(2)
    with left:
        show_grid(original_grid(), grid_caption("original"))
    with right:
        show_grid(merged_grid(solution), grid_caption("merged, not finetuned"))


def export_view(solution: Solution, used: TablesInUse) -> ExportView:
    """Convs, depth, size, ε-loss, digits-FD and step time: compressed UNet beside original."""
    original = caches.bundle().model
    finetuned = job_list.finetuned_result(solution)
    result = finetuned[1] if finetuned else None
    if finetuned is not None:
        network = result["merged"]
        form = f"finetuned {count(result['steps'])} steps (job {finetuned[0].id}), then merged"
    else:
        network, form = caches.merged(solution), "merged without finetuning"
    views.export_header(solution, form)
    line = comparison_line(finetuned[1]) if finetuned is not None else None
    if line:
        st.caption(f"{line[0].upper()}{line[1:]}.")
    if finetuned is None:
        st.info(
            "This solution has not been finetuned on this model (Finetune page): the export is "
            "the merged UNet straight from the original weights, so its samples are worse than "
            "they could be."
        )
    speed = state.measurement("step", solution)
    fd = result["fd"] if result else None
    params = [sum(p.numel() for p in m.parameters()) for m in (original, network)]
    depth = 1 + sum(1 for s in solution.segments if s.kernel)
    rows = [
        ("Conv2d modules", count(count_convs(original)), count(count_convs(network))),
        ("main-path convs (depth)", count(len(caches.chain().convs)), count(depth)),
        ("parameters", *map(count, params)),
        ("holdout ε-loss", *views.cells(result, "holdout_original", "holdout_after", decimal)),
        (FD_LABEL, *views.cells(fd, "original", "after", decimal)),
        (
            "measured ms per denoising step",
            *views.cells(speed, "original_ms", "merged_ms", decimal),
        ),
    ]
    frame = pd.DataFrame(rows, columns=["", "original", "compressed"])
    st.dataframe(frame, hide_index=True, key="export_table")
    if speed is None:
        st.caption("Time the merged UNet with the Budget page's 'Measure and sample' button.")
    input_shape = caches.chain().input_shape  # read now: the click runs outside the session
    metrics = {
        "form": form,
        "predicted_latency_ms": solution.latency_ms,
        "speed": speed,
        "holdout_eps_loss": result["holdout_after"] if result else None,
        "digits_fd": fd,
    }
    return ExportView(
        network=network,
        metrics=metrics,
        onnx=lambda: onnx_bytes(network, input_shape),
        onnx_label="Download ONNX (inputs sample, timestep)",
        notes="The checkpoint holds the UNet's diffusers config, the merged structure and plain "
        "tensors: torch.load(weights_only=True) reads it, and core.export.load(path) rebuilds "
        "the merged UNet as an ordinary nn.Module (call it as unet(x, t).sample). The ONNX "
        "graph is checked against ONNX Runtime before it is offered (relative error below 1e-4).",
        tag="finetuned" if finetuned is not None else "merged",
    )


def onnx_bytes(network: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The merged UNet as ONNX bytes, verified with ONNX Runtime (core.families.unet)."""
    with tempfile.TemporaryDirectory(prefix="lm-unet-onnx-") as folder:
        return export_unet_onnx(network, Path(folder) / "unet.onnx", input_shape).read_bytes()
