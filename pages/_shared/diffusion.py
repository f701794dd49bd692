"""The pages' diffusion-UNet side: cached UNet builders, sample grids, UNet jobs and panels.

A session whose model is a diffusers ``UNet2DModel`` (``digits_unet`` or ``diffusers:PATH``) goes
through the same pages as a CNN; each page asks :func:`is_unet` once and hands the UNet-specific
parts to this module. Where the CNN path shows accuracy, a UNet shows samples: a grid of DDIM
samples from a fixed seed (so original and compressed start from the same noise), and the
digits-FD, a Fréchet distance in our own digits classifier's features (never Inception FID).

Caching follows the package's rules: the UNet and its chain are ``st.cache_resource`` singletons
keyed by content (name and weights stamp), never modified; sample grids are ``st.cache_data``
keyed by the weights digest (and the solution); the background workers call only ``core``.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch
from torch import nn

from core.benchmark import measure_side_by_side, predicted_speedup
from core.errors import LayerMergeError
from core.families.unet.chain import UNetChain, trace_unet, unet_segments, unet_table_entries
from core.families.unet.data import load_diffusion_data
from core.families.unet.export import build_unet_checkpoint, count_convs
from core.families.unet.finetune import UNetFinetuneConfig, UNetFinetuneProgress, finetune_unet
from core.families.unet.flow import UNetCompression, apply_unet_solution
from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
from core.families.unet.latency import UNetForward, measure_unet_latency
from core.families.unet.loss import epsilon_loss
from core.families.unet.merge import merge_unet
from core.families.unet.quality import digits_fd
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS, ddim_sample, sample_grid
from core.families.unet.unet import (
    DEMO_UNET_NAME,
    DIFFUSERS_FOLDER_PREFIX,
    WEIGHT_FILES,
    UNetBundle,
    build_unet,
    is_unet_name,
)
from core.latency import LatencyConfig
from core.solution import Solution
from pages import _shared as shared
from pages._shared import figures
from pages._shared.jobs import Job, registry
from pages._shared.tasks import progress_reporter
from pages._shared.views import solution_rows as generic_solution_rows

__all__ = [
    "DEMO_UNET_NAME",
    "FD_LABEL",
    "is_unet",
    "folder_model_name",
    "unet_choice",
    "unet_bundle",
    "unet_chain",
    "original_grid",
    "show_grid",
    "model_overview",
    "solution_rows",
    "tables_form",
    "start_tables",
    "measure_panel",
    "finetune_form",
    "start_finetune",
    "finetune_extra",
    "finetuned_result",
    "export_panel",
    "checkpoint_bytes",
]

SAMPLES = 16  # images in a preview grid
GRID_ROWS = 4
SAMPLE_SEED = 0  # every grid starts from this noise: original and compressed compare image by image
GRID_WIDTH_PX = 280  # a grid is scaled up (nearest neighbour) to about this width
FD_LABEL = "digits-FD (our digits classifier's features, not Inception FID)"
FD_NOTE = (
    "digits-FD is a Fréchet distance between DDIM samples and the digits test split in the "
    "features of our own digits classifier (digits_resnet): lower is better, comparable only "
    "between runs with the same sample count. It is not the Inception FID papers report."
)
HISTORY_LIMIT = 5000  # progress points kept per finetune job
ADDITIVITY_NOTE = (
    "The DP adds segment latencies. The UNet's table times each conv with what the solution "
    "changes around it (the time-embedding add, GroupNorm and SiLU after a block's conv1); it "
    "leaves out what no solution changes (conv_in, norm1, attention, skips, the time MLP, "
    "conv_out), so the sum is below one measured denoising step by design. Budgets are shares "
    "of the table sum."
)


# ----------------------------------------------------------------------------- the model


def is_unet(which: shared.ModelChoice | None = None) -> bool:
    """True when the session's model (or ``which``) is a diffusion UNet."""
    return is_unet_name((which or shared.choice()).name)


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


def unet_choice(name: str, *, upload: Any, data_kind: str) -> shared.ModelChoice:
    """The session choice for a UNet, built and traced now (errors surface on the Model page).

    Raises:
        LayerMergeError: weights uploaded as a state_dict, data other than the digits, or a
            folder that is not a UNet2DModel (core's message, naming the folder).
    """
    if upload is not None:
        raise LayerMergeError(
            "a diffusion UNet takes its weights from a diffusers folder (choose 'diffusers "
            "folder…' and give its path), not from an uploaded state_dict"
        )
    if data_kind != "digits":
        raise LayerMergeError(
            "diffusion UNets train on the bundled digits only so far: choose 'Digits demo'"
        )
    key, label = _weights_stamp(name)
    bundle = _build_unet(name, key)
    which = shared.ModelChoice(name, 1.0, bundle.input_size, key, label, "digits")
    unet_chain(which)
    return which


@st.cache_resource(show_spinner="Loading the UNet…", max_entries=6)
def _build_unet(name: str, weights_key: str) -> UNetBundle:
    return build_unet(name)


@st.cache_resource(show_spinner="Tracing the UNet…", max_entries=8)
def _trace_unet(name: str, weights_key: str, _model: nn.Module) -> UNetChain:
    return trace_unet(_model)


def unet_bundle(which: shared.ModelChoice | None = None) -> UNetBundle:
    """The session's UNet (shared by every session: never modify ``.model``)."""
    which = which or shared.choice()
    return _build_unet(which.name, which.weights_key)


def unet_chain(which: shared.ModelChoice | None = None) -> UNetChain:
    """The traced UNet: ``.chain`` is the generic chain the tables, DP and figures use."""
    which = which or shared.choice()
    return _trace_unet(which.name, which.weights_key, unet_bundle(which).model)


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


# ----------------------------------------------------------------------------- sample grids


@st.cache_data(show_spinner="Sampling 16 images (DDIM)…", max_entries=64)
def _grid(key: str, steps: int, _unet: nn.Module) -> np.ndarray:
    return sample_grid(ddim_sample(_unet, SAMPLES, steps=steps, seed=SAMPLE_SEED), GRID_ROWS)


def original_grid(which: shared.ModelChoice | None = None) -> np.ndarray:
    """16 DDIM samples of the session's UNet (cached by its weights digest)."""
    bundle = unet_bundle(which)
    return _grid(f"original:{bundle.weights_digest}", DEFAULT_SAMPLING_STEPS, bundle.model)


def merged_grid(solution: Solution) -> np.ndarray:
    """The same 16 samples (same noise) from the merged, not finetuned, UNet of ``solution``."""
    key = f"merged:{unet_bundle().weights_digest}:{shared.solution_key(solution)}"
    return _grid(key, DEFAULT_SAMPLING_STEPS, compression(solution).merged_network)


def show_grid(grid: np.ndarray, caption: str, *, where: Any = st) -> None:
    """Draw a greyscale grid, scaled up with square pixels so the digits stay sharp."""
    scale = max(1, round(GRID_WIDTH_PX / grid.shape[1]))
    scaled = np.kron(grid, np.ones((scale, scale), dtype=np.uint8))  # (H * scale, W * scale)
    where.image(scaled, caption=caption, width=int(scaled.shape[1]))


def _grid_caption(what: str, steps: int = DEFAULT_SAMPLING_STEPS) -> str:
    return f"{what}: {SAMPLES} samples, {steps} DDIM steps, seed {SAMPLE_SEED}"


# ----------------------------------------------------------------------------- Model page


def model_overview() -> None:
    """The UNet's chain in numbers and pictures, and a grid of its samples."""
    which, bundle, uchain = shared.choice(), unet_bundle(), unet_chain()
    chain = uchain.chain
    st.caption(
        "A diffusion UNet (diffusers UNet2DModel). LayerMerge may remove the inner GroupNorm → "
        "SiLU of a ResnetBlock2D (merging its conv1 and conv2 into one conv) and may turn an "
        "upsample conv into the identity; attention, skips and the time embedding stay."
    )
    cols = st.columns(5)
    cols[0].metric("Convs on the main path", len(chain.convs))
    cols[1].metric("ResnetBlock2Ds", len(uchain.blocks))
    cols[2].metric("Upsample convs", len(uchain.upsample_convs))
    cols[3].metric("Valid segments", len(unet_segments(uchain)))
    cols[4].metric("Table entries", unet_table_entries(uchain))
    st.plotly_chart(figures.chain_figure(chain, height=320), key="chain_chart")
    st.caption(
        "Boxes are the main-path convs in forward order (conv_in, each block's conv1 and conv2, "
        "the down/upsample convs); dots are the activation slots; dashed lines are breaks no "
        "merged segment may cross, so a segment is one conv or one whole ResnetBlock2D."
    )
    st.subheader("Samples")
    left, right = st.columns([2, 3])
    with left:
        show_grid(original_grid(which), _grid_caption("this UNet"))
    right.markdown(
        "Samples stand in for accuracy: a diffusion model is judged by what it draws. The same "
        "seed is used on the Budget and Finetune pages, so the compressed UNet's samples start "
        "from the same noise as these."
    )
    if bundle.weights_source == "seeded":
        right.info("Seeded initial weights: the samples are noise until the UNet is trained.")


def solution_rows(solution: Solution) -> pd.DataFrame:
    """The merged layers of a UNet solution (views.solution_rows, activations named as a UNet's)."""
    frame = generic_solution_rows(solution, unet_chain().chain)
    inner = {b.conv1 for b in unet_chain().blocks}
    frame["activation after"] = [
        "GroupNorm → SiLU" if seg.end in inner else "— (block output)" for seg in solution.segments
    ]
    return frame


# ----------------------------------------------------------------------------- Tables page


def tables_form() -> None:
    """The UNet's table settings; the work runs in a background job (:func:`start_tables`)."""
    problem = _digits_problem(unet_bundle())
    if problem is not None:
        st.warning(f"No tables can be computed here: {problem}.")
        return
    with st.form("unet_tables_form"):
        cols = st.columns(5)
        cols[0].number_input("Batch (images per timed call)", 1, 512, 16, key="unet_tables_batch")
        cols[1].number_input(
            "Importance steps",
            0,
            10_000,
            60,
            key="unet_tables_steps",
            help="Adam steps of the brief ε-loss finetune per entry (the paper's recipe, minutes); "
            "0 scores the loss change with no training (seconds, a first look)",
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
            state = st.session_state
            start_tables(
                batch=int(state.unet_tables_batch),
                steps=int(state.unet_tables_steps),
                holdout_images=int(state.unet_tables_holdout),
                processes=int(state.unet_tables_jobs),
                threads=int(state.unet_tables_threads),
            )
            st.rerun(scope="app")


def start_tables(
    *, batch: int, steps: int, holdout_images: int, processes: int, threads: int
) -> Job:
    """Measure the UNet's latency table, then its ε-loss importance table, in the background.

    Raises:
        LayerMergeError: bad settings, a UNet the digits cannot train, or the same tables being
            computed by another session.
    """
    which = shared.choice()
    bundle, uchain = unet_bundle(which), unet_chain(which)
    _check_digits_fit(bundle)
    out = shared.computed_tables_dir(which)
    latency_config = LatencyConfig(batch=batch, threads=threads)
    importance_config = UNetImportanceConfig(steps=steps, holdout_images=holdout_images)
    if any(j.config.get("dir") == str(out) for j in registry().running("tables")):
        raise LayerMergeError(
            f"the tables of {which.label} are being computed right now; they appear here when done"
        )

    def work(job: Job) -> str:
        measure_unet_latency(
            bundle, uchain, latency_config, out=out, progress=progress_reporter(job, "latency")
        )
        data = load_diffusion_data(which.data_spec, bundle.input_size)
        estimate_unet_importance(
            bundle,
            uchain,
            data,
            importance_config,
            out=out,
            jobs=processes,
            progress=progress_reporter(job, "importance"),
        )
        return str(out)

    job = registry().start(
        "tables",
        f"tables of {which.label}",
        work,
        config={"dir": str(out), "batch": batch, "steps": steps, "model_kind": "unet"},
    )
    shared.remember_job("tables", job.id)
    return job


def _digits_problem(bundle: UNetBundle) -> str | None:
    """Why the bundled digits cannot train ``bundle`` (importance, finetuning), or None."""
    if bundle.in_channels == 1:
        return None
    return (
        f"{bundle.name} takes {bundle.in_channels}-channel images, and the only diffusion data "
        "so far is the bundled digits (1 channel): importance and finetuning need images it can "
        "learn from"
    )


def _check_digits_fit(bundle: UNetBundle) -> None:
    problem = _digits_problem(bundle)
    if problem is not None:
        raise LayerMergeError(problem)


# ----------------------------------------------------------------------------- Budget page


@st.cache_resource(show_spinner="Building the compressed UNet…", max_entries=16)
def _compression(
    model_key: tuple[str, float, int, str], key: str, _solution: Solution
) -> UNetCompression:
    return apply_unet_solution(unet_bundle().model, unet_chain(), _solution)


def compression(solution: Solution) -> UNetCompression:
    """The training form and merged UNet of ``solution`` (shared: read them, never change them)."""
    return _compression(shared.choice().key, shared.solution_key(solution), solution)


def measure(solution: Solution, used: shared.TablesInUse) -> dict[str, Any]:
    """One denoising step of the original and the merged UNet, timed side by side."""
    meta = used.tables.meta
    batch = int(meta.get("batch") or 1)
    threads = int(meta["threads"]) if meta.get("threads") else None
    merged = compression(solution).merged_network
    result = measure_side_by_side(
        UNetForward(unet_bundle().model),
        UNetForward(merged),
        input_shape=unet_chain().chain.input_shape,
        batch=batch,
        threads=threads,
        rounds=7,
    )
    network_ms = float(meta["network_latency_ms"]) if meta.get("network_latency_ms") else None
    speedup = predicted_speedup(
        solution.latency_ms, used.original_ms, network_latency_ms=network_ms
    )
    return {
        "original_ms": result.original_ms,
        "merged_ms": result.compressed_ms,
        "measured_speedup": result.speedup,
        "predicted_speedup": speedup,
        "predicted_merged_ms": network_ms / speedup if network_ms else None,
        "table_network_ms": network_ms,
        "original_convs": count_convs(unet_bundle().model),
        "merged_convs": count_convs(merged),
        "how": (
            f"one UNet forward (a denoising step) at batch {result.batch}, {result.threads} "
            f"thread(s), torch eager, median of {result.rounds} alternating rounds"
        ),
    }


def measure_panel(solution: Solution, used: shared.TablesInUse) -> None:
    """On request: the merged UNet's measured step time beside the prediction, and its samples."""
    key = f"unet:{shared.solution_key(solution)}"
    stored = st.session_state.measurements.get(key)
    if st.button(
        "Measure and sample the merged UNet",
        key="measure_unet",
        help="merges the UNet (core.families.unet), times one denoising step of it beside the "
        "original, and draws 16 samples of each from the same noise",
    ):
        with st.spinner("Merging, timing and sampling…"):
            stored = measure(solution, used)
        st.session_state.measurements[key] = stored
    if stored is None:
        st.caption(
            "Prediction only: the table sum. Press the button to time the merged UNet and see "
            "its samples beside the original's (same seed)."
        )
        return
    predicted = stored["predicted_merged_ms"]
    frame = pd.DataFrame(
        [
            {
                "UNet": "original",
                "table sum ms": used.original_ms,
                "predicted step ms": stored["table_network_ms"],
                "measured step ms": stored["original_ms"],
                "convs": stored["original_convs"],
            },
            {
                "UNet": "merged",
                "table sum ms": solution.latency_ms,
                "predicted step ms": predicted,
                "measured step ms": stored["merged_ms"],
                "convs": stored["merged_convs"],
            },
        ]
    )
    st.dataframe(frame, hide_index=True, key="measure_table")
    st.markdown(
        f"Speed-up of one denoising step: predicted **{stored['predicted_speedup']:.2f}×**, "
        f"measured **{stored['measured_speedup']:.2f}×** ({stored['how']}). The prediction "
        "counts what the table leaves out (attention, skips, the time MLP) as unchanged; "
        "'predicted step ms' uses the whole UNet timed when the tables were made."
    )
    left, right = st.columns(2)
    with left:
        show_grid(original_grid(), _grid_caption("original"))
    with right:
        show_grid(merged_grid(solution), _grid_caption("merged, not finetuned"))


# ----------------------------------------------------------------------------- Finetune page


def finetune_form(solution: Solution) -> None:
    """What the finetune of a UNet solution runs with; starts it in the background."""
    which = shared.choice()
    problem = _digits_problem(unet_bundle())
    if problem is not None:
        st.warning(f"This UNet cannot be finetuned here: {problem}.")
        return
    st.markdown(
        f"Finetune **{solution.method}** at {solution.latency_ms:.4g} ms ({len(solution.segments)} "
        f"segments) of {which.label} on the **digits** with the ε-prediction loss. The training "
        "form keeps a merged block's conv1 and conv2 apart (its inner GroupNorm → SiLU removed, "
        "a new post-norm after conv2); after training it merges exactly."
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
        state = st.session_state
        config = UNetFinetuneConfig(
            steps=int(state.uft_steps),
            lr=float(state.uft_lr),
            batch_size=int(state.uft_batch),
            eval_every=int(state.uft_eval),
        )
        start_finetune(
            solution,
            config,
            fd_samples=int(state.uft_fd),
            sampling_steps=int(state.uft_sampling_steps),
        )
        st.rerun()


def start_finetune(
    solution: Solution,
    config: UNetFinetuneConfig,
    *,
    fd_samples: int = 0,
    sampling_steps: int = DEFAULT_SAMPLING_STEPS,
    resume_of: Job | None = None,
) -> Job:
    """Finetune the training form of ``solution`` with the ε-loss, merge it, sample it.

    The whole run state is checkpointed (core.families.unet.finetune), so ``resume_of`` continues a
    cancelled job exactly where it stopped, with the same options.

    The worker reports every step (training loss, holdout loss at evaluation steps) and stops
    before its next step on cancel. Afterwards it draws the same-seed grids of the original, the
    merged UNet before finetuning and after, and (``fd_samples`` > 1) their digits-FD.
    """
    which = shared.choice()
    bundle, uchain = unet_bundle(which), unet_chain(which)
    _check_digits_fit(bundle)
    model = bundle.model  # shared: only read (apply_unet_solution copies it)
    if resume_of is not None:
        checkpoint = resume_of.config["checkpoint"]
    else:
        checkpoint = str(
            shared.APP_RUNS / "finetune" / f"unet-{uuid.uuid4().hex[:12]}" / "state.pt"
        )

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        data = load_diffusion_data(which.data_spec, bundle.input_size)
        job.stage = "building the training form"
        built = apply_unet_solution(model, uchain, solution)
        unfinetuned = built.merged_network
        job.stage = "finetuning"

        def progress(report: UNetFinetuneProgress) -> None:
            job.report(report.step, report.steps, _eta(report), "finetuning")
            if len(job.history) < HISTORY_LIMIT:
                job.history.append(
                    {
                        "step": report.step,
                        "loss": report.train_loss,
                        "holdout": report.holdout_loss,
                    }
                )

        result = finetune_unet(
            built.training_network,
            data,
            config,
            progress=progress,
            should_stop=job.cancel.is_set,
            checkpoint=checkpoint,
        )
        if result.stopped:
            return {"status": "stopped", "steps": result.steps_done}
        job.stage = "merging"
        merged = merge_unet(result.unet)
        reporter = progress_reporter(job, "sampling")
        networks = {"original": model, "before": unfinetuned, "after": merged}
        count = max(SAMPLES, fd_samples)
        grids: dict[str, np.ndarray] = {}
        fd: dict[str, float] | None = {} if fd_samples > 1 else None
        for index, (name, network) in enumerate(networks.items()):
            images = ddim_sample(
                network,
                count,
                steps=sampling_steps,
                seed=SAMPLE_SEED,
                progress=lambda done, total, i=index: reporter(i * total + done, 3 * total, None),
            )
            grids[name] = sample_grid(images[:SAMPLES], GRID_ROWS)
            if fd is not None:
                job.stage = "digits-FD"
                fd[name] = digits_fd(images[:fd_samples])
        return {
            "status": "completed",
            "merged": merged,
            "structure": built.merged_structure,
            "config": dict(bundle.config),
            "holdout_original": epsilon_loss(model, data.holdout),
            "holdout_before": result.holdout_loss_before,
            "holdout_after": result.holdout_loss_after,
            "grids": grids,
            "fd": fd,
            "fd_samples": fd_samples,
            "sampling_steps": sampling_steps,
            "steps": result.steps_done,
            "seconds": result.elapsed_s,
        }

    job = registry().start(
        "finetune",
        f"finetune {solution.method} of {which.label}",
        work,
        config={
            "model_kind": "unet",
            "solution": solution,
            "choice": which,
            "state_dict": None,
            "finetune": config,
            "checkpoint": checkpoint,
            "fd_samples": fd_samples,
            "sampling_steps": sampling_steps,
        },
    )
    if resume_of is not None:
        job.history = list(resume_of.history)
    shared.remember_job("finetune", job.id)
    return job


def _eta(report: UNetFinetuneProgress) -> float | None:
    if report.step == 0:
        return None
    return report.elapsed_s / report.step * (report.steps - report.step)


def finetune_extra(job: Job) -> None:
    """The ε-loss curves so far; when done, the grids before/after finetuning and the digits-FD."""
    if job.history:
        frame = pd.DataFrame(job.history)
        figure = go.Figure()
        figure.add_trace(go.Scatter(x=frame.step, y=frame.loss, name="training ε-loss (MSE)"))
        marks = frame.dropna(subset=["holdout"])
        if len(marks):
            figure.add_trace(
                go.Scatter(
                    x=marks.step,
                    y=marks.holdout,
                    name="holdout ε-loss (sum over pixels)",
                    mode="lines+markers",
                    yaxis="y2",
                )
            )
        figure.update_layout(
            height=300,
            margin={"l": 10, "r": 10, "t": 30, "b": 10},
            xaxis_title="step",
            yaxis={"title": "training"},
            yaxis2={"title": "holdout", "overlaying": "y", "side": "right"},
            legend={"orientation": "h", "y": 1.15},
        )
        st.plotly_chart(figure, key=f"unet_curves_{job.id}")
    config, solution = job.config["finetune"], job.config["solution"]
    st.caption(
        f"Job {job.id}: {solution.method} at {solution.latency_ms:.4g} ms predicted, "
        f"{len(solution.segments)} segments · Adam, lr {config.lr:g}, batch {config.batch_size}, "
        f"{config.steps} steps"
    )
    result = job.result
    if job.status != "done" or not isinstance(result, dict) or result.get("status") != "completed":
        return
    cols = st.columns(3)
    cols[0].metric("Holdout ε-loss, original", f"{result['holdout_original']:.4g}")
    cols[1].metric("Compressed, before finetuning", f"{result['holdout_before']:.4g}")
    cols[2].metric(
        "Compressed, finetuned",
        f"{result['holdout_after']:.4g}",
        f"{result['holdout_after'] - result['holdout_before']:+.4g}",
        delta_color="inverse",
    )
    steps = result["sampling_steps"]
    grids = st.columns(3)
    for column, (name, what) in zip(
        grids,
        (
            ("original", "original"),
            ("before", "compressed, before finetuning"),
            ("after", "compressed, finetuned"),
        ),
        strict=True,
    ):
        with column:
            show_grid(result["grids"][name], _grid_caption(what, steps))
    if result["fd"]:
        fd = result["fd"]
        st.markdown(f"**{FD_LABEL}**, lower is better")
        cols = st.columns(3)
        cols[0].metric("digits-FD, original", f"{fd['original']:.4g}")
        cols[1].metric("digits-FD, before finetuning", f"{fd['before']:.4g}")
        cols[2].metric(
            "digits-FD, finetuned",
            f"{fd['after']:.4g}",
            f"{fd['after'] - fd['before']:+.4g}",
            delta_color="inverse",
        )
        st.caption(f"{FD_NOTE} Here: {result['fd_samples']} samples per network, {steps} steps.")
    st.success(
        f"Finetuned {result['steps']} steps in {result['seconds']:.0f} s. "
        "Download it on the Export page."
    )


def finetuned_result(solution: Solution) -> dict[str, Any] | None:
    """The session's completed UNet finetune of ``solution`` for the current model, if any."""
    job = registry().get(shared.job_id("finetune"))
    if job is None or job.status != "done" or job.config.get("model_kind") != "unet":
        return None
    if not isinstance(job.result, dict) or job.result.get("status") != "completed":
        return None
    if job.config.get("choice") != shared.choice():
        return None
    if shared.solution_key(job.config["solution"]) != shared.solution_key(solution):
        return None
    return job.result


# ----------------------------------------------------------------------------- Export page


def checkpoint_bytes(network: nn.Module, info: dict[str, Any]) -> bytes:
    """The compressed UNet checkpoint as bytes (runs on click, in a thread: no session access)."""
    buffer = io.BytesIO()
    torch.save(build_unet_checkpoint(network, **info), buffer)
    return buffer.getvalue()


def export_panel(solution: Solution) -> None:
    """The compressed UNet: what it is, how it compares, and its checkpoint to download."""
    which, bundle = shared.choice(), unet_bundle()
    finetuned = finetuned_result(solution)
    if finetuned is not None:
        network, structure, form = (
            finetuned["merged"],
            finetuned["structure"],
            "finetuned, then merged",
        )
    else:
        built = compression(solution)
        network, structure = built.merged_network, built.merged_structure
        form = "merged without finetuning"
        st.info(
            "This solution has not been finetuned (Finetune page): the export is the merged UNet "
            "straight from the original weights, so its samples are worse than they could be."
        )
    speed = st.session_state.measurements.get(f"unet:{shared.solution_key(solution)}")
    params = [sum(p.numel() for p in m.parameters()) for m in (bundle.model, network)]
    rows = [
        {
            "": "Conv2d modules",
            "original": count_convs(bundle.model),
            "compressed": count_convs(network),
        },
        {
            "": "main-path convs (depth)",
            "original": len(unet_chain().chain.convs),
            "compressed": 1 + sum(1 for s in solution.segments if s.kernel),
        },
        {"": "parameters", "original": params[0], "compressed": params[1]},
        {
            "": "holdout ε-loss",
            "original": finetuned["holdout_original"] if finetuned else None,
            "compressed": finetuned["holdout_after"] if finetuned else None,
        },
        {
            "": FD_LABEL,
            "original": finetuned["fd"]["original"] if finetuned and finetuned["fd"] else None,
            "compressed": finetuned["fd"]["after"] if finetuned and finetuned["fd"] else None,
        },
        {
            "": "measured ms per denoising step",
            "original": speed["original_ms"] if speed else None,
            "compressed": speed["merged_ms"] if speed else None,
        },
    ]
    st.markdown(f"**{solution.method}** at {solution.latency_ms:.4g} ms predicted · {form}")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="export_table")
    if speed is None:
        st.caption("Time the merged UNet with the Budget page's 'Measure and sample' button.")
    info = {
        "config": dict(bundle.config),
        "structure": structure,
        "solution": solution,
        "model_name": which.name,
        "metrics": {
            "form": form,
            "predicted_latency_ms": solution.latency_ms,
            "speed": speed,
            "holdout_eps_loss": finetuned["holdout_after"] if finetuned else None,
            "digits_fd": finetuned["fd"] if finetuned else None,
        },
    }
    stem = f"{Path(which.name).name}-{solution.method}-{solution.latency_ms:.3g}ms".replace(
        ":", "-"
    )
    st.download_button(
        "Download the compressed UNet checkpoint (.pt)",
        data=lambda: checkpoint_bytes(network, info),
        file_name=f"{stem}.pt",
        mime="application/octet-stream",
        on_click="ignore",
        key="download_checkpoint",
        type="primary",
    )
    st.caption(
        "The checkpoint holds the UNet's diffusers config, the merged structure and plain "
        "tensors: torch.load(weights_only=True) reads it, and core.export.load(path) rebuilds "
        "the merged UNet as an ordinary nn.Module (call it as unet(x, t).sample)."
    )
    input_shape = unet_chain().chain.input_shape  # read now: the click runs outside the session
    st.download_button(
        "Download ONNX (inputs sample, timestep)",
        data=lambda: unet_onnx_bytes(network, input_shape),
        file_name=f"{stem}.onnx",
        mime="application/octet-stream",
        on_click="ignore",
        key="download_onnx",
    )
    st.caption(
        "The ONNX graph is checked against ONNX Runtime before it is offered (relative error "
        "below 1e-4)."
    )


def unet_onnx_bytes(network: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The merged UNet as ONNX bytes, verified with ONNX Runtime (core.families.unet.onnx_export)."""
    import tempfile

    from core.families.unet.onnx_export import export_unet_onnx

    with tempfile.TemporaryDirectory(prefix="lm-unet-onnx-") as folder:
        path = export_unet_onnx(network, Path(folder) / "unet.onnx", input_shape)
        return path.read_bytes()
