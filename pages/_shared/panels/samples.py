"""The samples panel: what the pages show of a diffusion UNet (the unet family's task).

Samples stand in for accuracy: a diffusion model is judged by what it draws. The Model page shows
a grid of DDIM samples, the Budget page times the merged UNet and samples it from the same noise,
the Finetune page trains with the ε-prediction loss and reports the holdout ε-loss, grids and the
digits-FD (a Fréchet distance in our own digits classifier's features, never Inception FID).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

import pages._shared.panels.samples_finetune as samples_finetune
from core.errors import LayerMergeError
from core.families.unet.chain import unet_segments, unet_table_entries
from core.families.unet.unet import DIFFUSERS_FOLDER_PREFIX, WEIGHT_FILES
from core.solution import Solution
from pages._shared import caches, jobs_tables
from pages._shared.chain_figure import chain_figure
from pages._shared.grids import grid_caption, original_grid, show_grid
from pages._shared.jobs import Job
from pages._shared.panels.base import (
    ExportView,
    ModelRequest,
    ModelSource,
    Panel,
    register_panel,
)
from pages._shared.panels.samples_results import export_view, measure_section
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import TablesInUse
from pages._shared.views import solution_rows

__all__ = ["SamplesPanel", "folder_model_name"]


def folder_model_name(text: str) -> str:
    """``diffusers:ABSOLUTE_PATH`` for a folder path typed on the Model page."""
    text = (text or "").strip()
    if text.startswith(DIFFUSERS_FOLDER_PREFIX):
        text = text[len(DIFFUSERS_FOLDER_PREFIX) :]
    if not text:
        raise LayerMergeError(
            "give the path of a diffusers UNet2DModel folder (config.json and "
            f"{' or '.join(WEIGHT_FILES)})"
        )
    try:
        folder = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a NUL byte, a symlink loop, no $HOME
        raise LayerMergeError(f"{text!r} is not a usable folder path ({exc})") from exc
    return DIFFUSERS_FOLDER_PREFIX + str(folder)


FOLDER = ModelSource(
    option="diffusers folder…",
    key="unet_folder",
    label="Diffusers UNet2DModel folder (config.json + safetensors)",
    placeholder="/path/to/ddpm-cifar10/unet",
    help="a diffusers folder holds a diffusion UNet (UNet2DModel)",
    to_name=folder_model_name,
    text_of=lambda name: name.partition(":")[2] if name.startswith(DIFFUSERS_FOLDER_PREFIX) else "",
)


@register_panel
class SamplesPanel(Panel):
    """Diffusion UNets: samples, holdout ε-loss and digits-FD show what compression keeps."""

    name = "samples"
    sources = (FOLDER,)
    learn_note = (
        "Your model is a diffusion UNet. Its main-path convs are conv_in, each ResnetBlock2D's "
        "conv1 and conv2, and the down/upsample convs; its one removable activation is a "
        "block's inner GroupNorm → SiLU, so a merged segment spans one block. The time "
        "embedding added between conv1 and conv2 is pushed through conv2 when they merge "
        "(core.families.unet.merge); attention, skips and the time MLP stay as they are."
    )
    tables_cancel_label = "Stop (finished entries are kept)"
    speed_measurement = "step"
    tables_stopped_note = "its finished work is saved."
    tables_saved_note = (
        "the latency table first, then the ε-loss importance of every entry, each finished entry "
        "saved at once (a stopped run resumes where it stopped); the tables appear when both are "
        "done"
    )

    def choose(self, request: ModelRequest) -> tuple[ModelChoice, dict[str, torch.Tensor] | None]:
        """The UNet's config fixes its size and width; its weights come with it (a folder)."""
        if request.upload is not None:
            raise LayerMergeError(
                "a diffusion UNet takes its weights from a diffusers folder (choose 'diffusers "
                "folder…' and give its path), not from an uploaded state_dict"
            )
        if request.data_kind != "digits":
            raise LayerMergeError(
                "diffusion UNets train on the bundled digits only so far: choose 'Digits demo'"
            )
        key, label = _weights_stamp(request.name)
        new = ModelChoice(request.name, 1.0, 0, key, label, "digits", fixed_shape=True)
        size = caches.bundle(new).input_size
        new = ModelChoice(request.name, 1.0, size, key, label, "digits", fixed_shape=True)
        caches.chain(new)  # trace now: errors show on the Model page
        return new, None

    def model_summary(self) -> None:
        uchain, chain = caches.traced(), caches.chain()
        st.caption(
            "A diffusion UNet (diffusers UNet2DModel). LayerMerge may remove the inner GroupNorm "
            "→ SiLU of a ResnetBlock2D (merging its conv1 and conv2 into one conv) and may turn "
            "an upsample conv into the identity; attention, skips and the time embedding stay."
        )
        cols = st.columns(5)
        cols[0].metric("Convs on the main path", len(chain.convs))
        cols[1].metric("ResnetBlock2Ds", len(uchain.blocks))
        cols[2].metric("Upsample convs", len(uchain.upsample_convs))
        cols[3].metric("Valid segments", len(unet_segments(uchain)))
        cols[4].metric("Table entries", unet_table_entries(uchain))
        st.plotly_chart(chain_figure(chain, height=320), key="chain_chart")
        st.caption(
            "Boxes are the main-path convs in forward order (conv_in, each block's conv1 and "
            "conv2, the down/upsample convs); dots are the activation slots; dashed lines are "
            "breaks no merged segment may cross, so a segment is one conv or one whole "
            "ResnetBlock2D."
        )
        st.subheader("Samples")
        left, right = st.columns([2, 3])
        with left:
            show_grid(original_grid(), grid_caption("this UNet"))
        right.markdown(
            "Samples stand in for accuracy: a diffusion model is judged by what it draws. The "
            "same seed is used on the Budget and Finetune pages, so the compressed UNet's samples "
            "start from the same noise as these."
        )
        if caches.bundle().weights_source == "seeded":
            right.info("Seeded initial weights: the samples are noise until the UNet is trained.")

    def tables_form(self) -> None:
        problem = jobs_tables.data_problem()
        if problem is not None:
            st.warning(f"No tables can be computed here: {problem}.")
            return
        with st.form("unet_tables_form"):
            cols = st.columns(5)
            cols[0].number_input(
                "Batch (images per timed call)", 1, 512, 16, key="unet_tables_batch"
            )
            cols[1].number_input(
                "Importance steps",
                0,
                10_000,
                60,
                key="unet_tables_steps",
                help="Adam steps of the brief ε-loss finetune per entry (the paper's recipe, "
                "minutes); 0 scores the loss change with no training (seconds, a first look)",
            )
            cols[2].number_input(
                "Holdout images",
                2,
                10_000,
                128,
                key="unet_tables_holdout",
                help="held-out digits the ε-loss is measured on (seeded noise)",
            )
            cols[3].number_input("Timing threads", 1, 64, 1, key="unet_tables_threads")
            cols[4].number_input("Importance processes", 1, 64, 1, key="unet_tables_jobs")
            if st.form_submit_button("Compute the tables", key="compute_tables", type="primary"):
                values = st.session_state
                jobs_tables.start_tables(
                    batch=int(values.unet_tables_batch),
                    processes=int(values.unet_tables_jobs),
                    threads=int(values.unet_tables_threads),
                    settings={
                        "steps": int(values.unet_tables_steps),
                        "eval_images": int(values.unet_tables_holdout),
                    },
                )
                st.rerun(scope="app")

    def additivity_note(self, error: float) -> str:
        return (
            "The DP adds segment latencies. The UNet's table times each conv with what the "
            "solution changes around it (the time-embedding add, GroupNorm and SiLU after a "
            "block's conv1); it leaves out what no solution changes (conv_in, norm1, attention, "
            "skips, the time MLP, conv_out), so the sum is below one measured denoising step by "
            f"design. Budgets are shares of the table sum. Here it is off by {error:+.1%} of one "
            "step."
        )

    def solution_rows(self, solution: Solution) -> pd.DataFrame:
        """The merged layers, with each kept activation named as the UNet has it."""
        frame = solution_rows(solution, caches.chain())
        inner = {block.conv1 for block in caches.traced().blocks}
        frame["activation after"] = [
            "GroupNorm → SiLU" if seg.end in inner else "— (block output)"
            for seg in solution.segments
        ]
        return frame

    def quality_section(self, solution: Solution, used: TablesInUse) -> None:
        measure_section(solution, used)

    def finetune_form(self, solution: Solution) -> None:
        samples_finetune.finetune_form(solution)

    def finetune_view(self, job: Job) -> None:
        samples_finetune.finetune_view(job)

    def finetune_quality(self, result: dict) -> tuple[float | None, float | None]:
        return result["holdout_before"], result["holdout_after"]

    def export_view(self, solution: Solution, used: TablesInUse) -> ExportView:
        return export_view(solution, used)


def _weights_stamp(name: str) -> tuple[str, str]:
    """(weights_key, label): ``default`` for the demo; a folder's file stamps otherwise."""
    if not name.startswith(DIFFUSERS_FOLDER_PREFIX):
        return "default", "default"
    folder = Path(name[len(DIFFUSERS_FOLDER_PREFIX) :])
    stamp = hashlib.sha256(name.encode())
    for sub in (folder, folder / "unet"):
        for file in ("config.json", *WEIGHT_FILES):
            path = sub / file
            if path.is_file():
                info = path.stat()
                stamp.update(f"{path}:{info.st_mtime_ns}:{info.st_size}".encode())
    return f"folder-{stamp.hexdigest()[:16]}", str(folder)
