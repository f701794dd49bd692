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

from core.errors import LayerMergeError
from core.families.unet.chain import unet_segments, unet_table_entries
from core.families.unet.finetune import UNetFinetuneConfig
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS
from core.families.unet.unet import DIFFUSERS_FOLDER_PREFIX, WEIGHT_FILES
from core.solution import Solution
from pages._shared import caches, jobs_finetune, jobs_tables, state
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
from pages._shared.panels.samples_results import export_view, finetune_view, measure_section
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
    tables_cancel_label = "Stop"
    speed_measurement = "step"
    tables_stopped_note = "start it again below."
    tables_saved_note = (
        "the latency table first, then the ε-loss importance of every entry; the tables appear "
        "when both are done"
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
        problem = jobs_tables.unet_data_problem(caches.bundle())
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
                jobs_tables.start_unet_tables(
                    batch=int(values.unet_tables_batch),
                    steps=int(values.unet_tables_steps),
                    holdout_images=int(values.unet_tables_holdout),
                    processes=int(values.unet_tables_jobs),
                    threads=int(values.unet_tables_threads),
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
        problem = jobs_tables.unet_data_problem(caches.bundle())
        if problem is not None:
            st.warning(f"This UNet cannot be finetuned here: {problem}.")
            return
        st.markdown(
            f"Finetune **{solution.method}** at {solution.latency_ms:.4g} ms "
            f"({len(solution.segments)} segments) of {state.choice().label} on the **digits** "
            "with the ε-prediction loss. The training form keeps a merged block's conv1 and "
            "conv2 apart (its inner GroupNorm → SiLU removed, a new post-norm after conv2); after "
            "training it merges exactly."
        )
        with st.form("unet_finetune_form"):
            cols = st.columns(6)
            cols[0].number_input("Steps", 1, 1_000_000, 300, key="uft_steps")
            cols[1].number_input("Learning rate", 1e-6, 1.0, 4e-4, format="%.5f", key="uft_lr")
            cols[2].number_input("Batch", 1, 1024, 64, key="uft_batch")
            cols[3].number_input(
                "Holdout loss every",
                1,
                100_000,
                50,
                key="uft_eval",
                help="steps between holdout ε-losses",
            )
            cols[4].number_input(
                "Samples for digits-FD",
                0,
                4096,
                128,
                key="uft_fd",
                help="DDIM samples per network for the digits-FD afterwards (0: none, only the "
                "16-image grids); more is steadier and slower",
            )
            cols[5].number_input(
                "DDIM steps",
                1,
                1000,
                DEFAULT_SAMPLING_STEPS,
                key="uft_sampling_steps",
                help="denoising steps per sample for the grids and the digits-FD afterwards",
            )
            start = st.form_submit_button("Start finetuning", key="start_finetune", type="primary")
        if start:
            values = st.session_state
            config = UNetFinetuneConfig(
                steps=int(values.uft_steps),
                lr=float(values.uft_lr),
                batch_size=int(values.uft_batch),
                eval_every=int(values.uft_eval),
            )
            jobs_finetune.start_unet_finetune(
                solution,
                config,
                fd_samples=int(values.uft_fd),
                sampling_steps=int(values.uft_sampling_steps),
            )
            st.rerun()

    def finetune_view(self, job: Job) -> None:
        finetune_view(job)

    def finetune_quality(self, result: dict) -> tuple[float | None, float | None]:
        return result["holdout_before"], result["holdout_after"]

    def resume_finetune(self, job: Job) -> Job:
        return jobs_finetune.start_unet_finetune(
            job.config["solution"],
            job.config["finetune"],
            fd_samples=job.config["fd_samples"],
            sampling_steps=job.config["sampling_steps"],
            resume_of=job,
        )

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
