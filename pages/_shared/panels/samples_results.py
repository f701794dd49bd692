"""The samples panel's results: a UNet measured and sampled, its finetune job, its export.

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
from pages._shared import caches, jobs_finetune, jobs_measure, state
from pages._shared.figures import eps_loss_curves
from pages._shared.grids import grid_caption, merged_grid, original_grid, show_grid
from pages._shared.jobs import Job
from pages._shared.panels.base import ExportView
from pages._shared.tables_in_use import TablesInUse
from pages._shared.views import pair_or_blanks

__all__ = ["FD_LABEL", "measure_section", "finetune_view", "export_view", "onnx_bytes"]

FD_LABEL = "digits-FD (our digits classifier's features, not Inception FID)"
FD_NOTE = (
    "digits-FD is a Fréchet distance between DDIM samples and the digits test split in the "
    "features of our own digits classifier (digits_resnet): lower is better, comparable only "
    "between runs with the same sample count. It is not the Inception FID papers report."
)
STAGES = (  # the finetune job's grids: result key, caption
    ("original", "original"),
    ("before", "compressed, before finetuning"),
    ("after", "compressed, finetuned"),
)


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
            stored = jobs_measure.measure_unet(solution, used)
        state.remember_measurement("step", solution, stored)
    if stored is None:
        st.caption(
            "Prediction only: the table sum. Press the button to time the merged UNet and see "
            "its samples beside the original's (same seed)."
        )
        return
    columns = ["UNet", "table sum ms", "predicted step ms", "measured step ms", "convs"]
    rows = [
        ("original", used.original_ms, stored["table_network_ms"], stored["original_ms"]),
        ("merged", solution.latency_ms, stored["predicted_merged_ms"], stored["merged_ms"]),
    ]
    convs = [stored["original_convs"], stored["merged_convs"]]
    frame = pd.DataFrame([(*row, n) for row, n in zip(rows, convs, strict=True)], columns=columns)
    st.dataframe(frame, hide_index=True, key="measure_table")
    st.markdown(
        f"Speed-up of one denoising step: predicted **{stored['predicted_speedup']:.2f}×**, "
        f"measured **{stored['measured_speedup']:.2f}×** ({stored['how']}). The prediction "
        "counts what the table leaves out (attention, skips, the time MLP) as unchanged; "
        "'predicted step ms' uses the whole UNet timed when the tables were made."
    )
    left, right = st.columns(2)
    with left:
        show_grid(original_grid(), grid_caption("original"))
    with right:
        show_grid(merged_grid(solution), grid_caption("merged, not finetuned"))


def finetune_view(job: Job) -> None:
    """The ε-loss curves so far; when done, the grids before/after finetuning and the digits-FD."""
    if job.history:
        st.plotly_chart(eps_loss_curves(job.history), key=f"unet_curves_{job.id}")
    config, solution = job.config["finetune"], job.config["solution"]
    st.caption(
        f"Job {job.id}: {solution.method} at {solution.latency_ms:.4g} ms predicted, "
        f"{len(solution.segments)} segments · Adam, lr {config.lr:g}, batch {config.batch_size}, "
        f"{config.steps} steps"
    )
    result = job.result
    if job.status != "done" or not isinstance(result, dict) or result.get("status") != "completed":
        return
    _three_metrics(
        "Holdout ε-loss, original",
        "Compressed, before finetuning",
        "Compressed, finetuned",
        (result["holdout_original"], result["holdout_before"], result["holdout_after"]),
    )
    steps = result["sampling_steps"]
    for column, (name, what) in zip(st.columns(3), STAGES, strict=True):
        with column:
            show_grid(result["grids"][name], grid_caption(what, steps))
    if result["fd"]:
        fd = result["fd"]
        st.markdown(f"**{FD_LABEL}**, lower is better")
        _three_metrics(
            "digits-FD, original",
            "digits-FD, before finetuning",
            "digits-FD, finetuned",
            (fd["original"], fd["before"], fd["after"]),
        )
        st.caption(f"{FD_NOTE} Here: {result['fd_samples']} samples per network, {steps} steps.")
    st.success(
        f"Finetuned {result['steps']} steps in {result['seconds']:.0f} s. "
        "Download it on the Export page."
    )


def export_view(solution: Solution, used: TablesInUse) -> ExportView:
    """Convs, depth, size, ε-loss, digits-FD and step time: compressed UNet beside original."""
    original = caches.bundle().model
    finetuned = jobs_finetune.finetuned_result(solution)
    if finetuned is not None:
        network, form = finetuned["merged"], "finetuned, then merged"
    else:
        network, form = caches.merged(solution), "merged without finetuning"
        st.info(
            "This solution has not been finetuned (Finetune page): the export is the merged UNet "
            "straight from the original weights, so its samples are worse than they could be."
        )
    speed = state.measurement("step", solution)
    fd = finetuned["fd"] if finetuned else None
    params = [sum(p.numel() for p in m.parameters()) for m in (original, network)]
    rows = [
        ("Conv2d modules", count_convs(original), count_convs(network)),
        (
            "main-path convs (depth)",
            len(caches.chain().convs),
            1 + sum(1 for s in solution.segments if s.kernel),
        ),
        ("parameters", *params),
        ("holdout ε-loss", *pair_or_blanks(finetuned, "holdout_original", "holdout_after")),
        (FD_LABEL, *pair_or_blanks(fd, "original", "after")),
        ("measured ms per denoising step", *pair_or_blanks(speed, "original_ms", "merged_ms")),
    ]
    st.markdown(f"**{solution.method}** at {solution.latency_ms:.4g} ms predicted · {form}")
    frame = pd.DataFrame(rows, columns=["", "original", "compressed"])
    st.dataframe(frame, hide_index=True, key="export_table")
    if speed is None:
        st.caption("Time the merged UNet with the Budget page's 'Measure and sample' button.")
    input_shape = caches.chain().input_shape  # read now: the click runs outside the session
    metrics = {
        "form": form,
        "predicted_latency_ms": solution.latency_ms,
        "speed": speed,
        "holdout_eps_loss": finetuned["holdout_after"] if finetuned else None,
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
    )


def onnx_bytes(network: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The merged UNet as ONNX bytes, verified with ONNX Runtime (core.families.unet)."""
    with tempfile.TemporaryDirectory(prefix="lm-unet-onnx-") as folder:
        return export_unet_onnx(network, Path(folder) / "unet.onnx", input_shape).read_bytes()


def _three_metrics(first: str, second: str, third: str, values: tuple[float, float, float]) -> None:
    """Original, before and after finetuning, with after's change from before (lower is better)."""
    cols = st.columns(3)
    cols[0].metric(first, f"{values[0]:.4g}")
    cols[1].metric(second, f"{values[1]:.4g}")
    cols[2].metric(
        third, f"{values[2]:.4g}", f"{values[2] - values[1]:+.4g}", delta_color="inverse"
    )
