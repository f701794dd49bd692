"""The finetune job: the solution's training form trained, merged and evaluated, in the background.

One function per family's pipeline as core runs it today (surgery → finetune → merge →
evaluate); each is the single place to swap for core's finetune workflow. A job checkpoints as it
trains, so ``resume_of`` continues a cancelled job where it stopped, with the same model and
options.

With ``control`` a job, once its compressed network is finetuned and tested, also finetunes the
uncompressed original with the same recipe (``core.workflows.control``: the family's own loop
and evaluation, cached in the app's runs folder by original and recipe, so a second job of the
same model and settings reuses it) and sets the compressed figure against both.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.data import load_data
from core.errors import LayerMergeError
from core.families import family_for
from core.families.unet.data import load_diffusion_data
from core.families.unet.finetune import (
    UNetFinetuneConfig,
    UNetFinetuneProgress,
    UNetFinetuneSettings,
    finetune_unet,
)
from core.families.unet.flow import apply_unet_solution
from core.families.unet.loss import epsilon_loss
from core.families.unet.merge import merge_unet
from core.families.unet.quality import digits_fd
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS, ddim_sample, sample_grid
from core.finetune import (
    FinetuneConfig,
    FinetuneProgress,
    evaluate,
    finetune,
    load_finetune_checkpoint,
    network_from_finetune_checkpoint,
)
from core.merge import merge, merge_model
from core.solution import Solution
from core.surgery import build_training_network
from core.workflows.control import ControlOutcome, compare_figures, finetune_control
from core.workflows.model import LoadedModel, loaded
from pages._shared import caches, state
from pages._shared.grids import GRID_ROWS, SAMPLE_SEED, SAMPLES
from pages._shared.jobs import Job, progress_reporter, registry
from pages._shared.jobs_tables import check_unet_data
from pages._shared.paths import APP_RUNS
from pages._shared.state import ModelChoice

__all__ = ["CONTROL_STAGE", "CONTROLS", "start_classifier_finetune", "start_unet_finetune"]

Weights = dict[str, torch.Tensor] | None  # a session's uploaded state_dict
MAX_HISTORY = 2000  # training-loss points kept per finetune job (every k-th step beyond)
EVALUATIONS = 10  # test evaluations while a classifier trains (plus one before, one at the end)
INTERIM_TEST_IMAGES = 2000  # test images an interim evaluation reads (the final one reads all)
CONTROL_STAGE = "control: finetuning the original the same way"
CONTROLS = APP_RUNS / "controls"  # the controls' cache (core.workflows.control)


def start_classifier_finetune(
    solution: Solution,
    config: FinetuneConfig,
    *,
    label: str = "",
    estimate_s: float | None = None,
    resume_of: Job | None = None,
    control: bool = False,
) -> Job:
    """Finetune a classifier's training form of ``solution``, merge it, test it (accuracy).

    While it trains, the test accuracy is measured about ten times (at core's checkpoints, read
    back from the progress callback: core's loop is not changed), beside the original's accuracy.
    With ``control``, the original is then finetuned the same way (or reused) and tested too.
    """
    which, weights = _model_of(resume_of)
    control = _control_of(resume_of, control)
    model = caches.bundle(which, weights=weights).model  # shared: only read (core copies it)
    traced = caches.chain(which, weights=weights)
    checkpoint = _checkpoint_path(resume_of, "checkpoint.pt")
    original = _loaded(which, weights) if control else None

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        splits = load_data(which.data_spec, input_size=which.input_size)
        job.stage = "testing the original"
        before = evaluate(model, splits.test)
        unfinetuned = evaluate(merge_model(model, traced, solution), splits.test)
        job.live["reference"] = before.accuracy
        tests = job.live.setdefault("tests", [(0, unfinetuned.accuracy)])  # (step, accuracy %)
        job.live["test_images"] = min(len(splits.test), INTERIM_TEST_IMAGES)
        training = build_training_network(model, traced, solution)
        every = _evaluation_interval(config, len(splits.finetune))
        job.stage = "finetuning"

        def progress(report: FinetuneProgress) -> None:
            job.report(report.step, report.total_steps, report.eta_s, "finetuning")
            if report.step % max(1, report.total_steps // MAX_HISTORY) == 0:
                job.history.append(
                    {"step": report.step, "loss": report.loss, "accuracy": report.accuracy}
                )
            if report.step % every == 0 or report.step == report.total_steps:
                accuracy = _checkpoint_accuracy(checkpoint, report.step, splits.test)
                if accuracy is not None:
                    tests.append((report.step, accuracy))

        result = finetune(
            training,
            splits.finetune,
            config=dataclasses.replace(config, checkpoint_every=every),
            teacher=model if config.distill_alpha else None,
            checkpoint_path=checkpoint,
            resume=True,
            progress=progress,
            cancel=job.cancel,
            metadata={"model": which.name, "solution": solution.to_dict()},
        )
        if result.status != "completed":
            return {"status": result.status, "step": result.step}
        job.stage = "merging and testing"
        merged = merge(result.network, traced, solution)
        after = evaluate(merged, splits.test)
        outcome = {
            "status": "completed",
            "merged": merged,
            "before": before,
            "unfinetuned": unfinetuned,
            "after": after,
            "steps": result.step,
            "seconds": result.elapsed_s,
        }
        figures = {"accuracy": before.accuracy}, {"accuracy": after.accuracy}
        return {**outcome, **_with_control(job, original, splits, config, *figures)}

    return _start(
        which, weights, solution, config, work, resume_of, label, estimate_s, checkpoint,
        control=control,
    )  # fmt: skip


def start_unet_finetune(
    solution: Solution,
    config: UNetFinetuneConfig,
    *,
    fd_samples: int = 0,
    sampling_steps: int = DEFAULT_SAMPLING_STEPS,
    label: str = "",
    estimate_s: float | None = None,
    resume_of: Job | None = None,
    control: bool = False,
) -> Job:
    """Finetune a UNet's training form of ``solution`` with the ε-loss, merge it, sample it.

    The worker reports every step (training loss, holdout loss at evaluation steps, beside the
    original's holdout loss) and stops before its next step on cancel. Afterwards it draws the
    same-seed grids of the original, the merged UNet before finetuning and after, and
    (``fd_samples`` > 1) their digits-FD. With ``control``, the original is then finetuned with
    the same settings (or reused) and its holdout ε-loss set beside the compressed one's.
    """
    which, _ = _model_of(resume_of)
    control = _control_of(resume_of, control)
    bundle, uchain = caches.bundle(which), caches.traced(which)
    check_unet_data(bundle)
    model = bundle.model  # shared: only read (apply_unet_solution copies it)
    checkpoint = _checkpoint_path(resume_of, "state.pt")
    original = _loaded(which, None) if control else None

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        data = load_diffusion_data(which.data_spec, bundle.input_size)
        job.stage = "testing the original"
        job.live["reference"] = reference = epsilon_loss(model, data.holdout)
        job.stage = "building the training form"
        built = apply_unet_solution(model, uchain, solution)
        job.stage = "finetuning"

        def progress(report: UNetFinetuneProgress) -> None:
            job.report(report.step, report.steps, None, "finetuning")
            keep = report.step % max(1, report.steps // MAX_HISTORY) == 0
            if keep or report.holdout_loss is not None:
                job.history.append(
                    {"step": report.step, "loss": report.train_loss, "holdout": report.holdout_loss}
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
        figures = {"eps_loss": reference}, {"eps_loss": result.holdout_loss_after}
        settings = UNetFinetuneSettings(config=config, device="cpu")  # where the job trains
        compared = _with_control(job, original, data, settings, *figures)
        networks = {"original": model, "before": built.merged_network, "after": merged}
        grids, fd = _samples(job, networks, fd_samples, sampling_steps)
        return {
            **compared,
            "status": "completed",
            "merged": merged,
            "holdout_original": reference,
            "holdout_before": result.holdout_loss_before,
            "holdout_after": result.holdout_loss_after,
            "grids": grids,
            "fd": fd,
            "fd_samples": fd_samples,
            "sampling_steps": sampling_steps,
            "steps": result.steps_done,
            "seconds": result.elapsed_s,
        }

    options = {"fd_samples": fd_samples, "sampling_steps": sampling_steps, "control": control}
    return _start(
        which, None, solution, config, work, resume_of, label, estimate_s, checkpoint, **options
    )


def _samples(
    job: Job, networks: dict[str, Any], fd_samples: int, steps: int
) -> tuple[dict[str, np.ndarray], dict[str, float] | None]:
    """Same-seed sample grids of each network and, for ``fd_samples`` > 1, their digits-FD."""
    reporter = progress_reporter(job, "sampling")
    count = max(SAMPLES, fd_samples)
    grids: dict[str, np.ndarray] = {}
    fd: dict[str, float] | None = {} if fd_samples > 1 else None
    for index, (name, network) in enumerate(networks.items()):
        images = ddim_sample(
            network,
            count,
            steps=steps,
            seed=SAMPLE_SEED,
            progress=lambda done, total, i=index: reporter(i * total + done, 3 * total, None),
        )
        grids[name] = sample_grid(images[:SAMPLES], GRID_ROWS)
        if fd is not None:
            job.stage = "digits-FD"
            fd[name] = digits_fd(images[:fd_samples])
    return grids, fd


def _with_control(
    job: Job,
    original: LoadedModel | None,
    data: Any,
    config: Any,
    before: dict[str, float],
    after: dict[str, float],
) -> dict[str, Any]:
    """The control (when asked) and the compressed figure against the original's and its own.

    ``config`` is the family's finetune settings as its loop takes them, the recipe the
    compressed network was trained with; the control stops with the job's cancel.
    """
    family = family_for(job.config["choice"].name)
    control: ControlOutcome | None = None
    if original is not None:
        control = _run_control(job, original, data, config)
    figures = control.figures if control is not None and control.status == "completed" else None
    return {
        "control": control,
        "comparison": compare_figures(family, original=before, compressed=after, control=figures),
    }


def _run_control(job: Job, original: LoadedModel, data: Any, config: Any) -> ControlOutcome:
    """The original finetuned with ``config`` (or reused from the cache), reported to ``job``."""
    job.stage = CONTROL_STAGE

    def progress(report: Any) -> None:
        job.report(report.step, report.total_steps, report.eta_s, CONTROL_STAGE)

    outcome = finetune_control(
        original, data, config, cache=CONTROLS, progress=progress, cancel=job.cancel
    )
    return dataclasses.replace(outcome, network=None)  # the figures are what the page shows


def _loaded(which: ModelChoice, weights: Weights) -> LoadedModel:
    """The session's model as the workflows take it (built in the script thread, cached)."""
    bundle = caches.bundle(which, weights=weights)
    return loaded(bundle, caches.traced(which, weights=weights), family=caches.family(which))


def _control_of(resume_of: Job | None, control: bool) -> bool:
    """Whether the job runs a control: a resumed job keeps its own choice."""
    return bool(resume_of.config.get("control")) if resume_of is not None else control


def _model_of(resume_of: Job | None) -> tuple[ModelChoice, Weights]:
    """The model (and uploaded weights) to train: the resumed job's, else the session's."""
    if resume_of is not None:
        return resume_of.config["choice"], resume_of.config.get("state_dict")
    return state.choice(), state.weights()


def _checkpoint_path(resume_of: Job | None, file_name: str) -> str:
    if resume_of is not None:
        return resume_of.config["checkpoint"]
    return str(APP_RUNS / "finetune" / uuid.uuid4().hex[:12] / file_name)


def _start(
    which: ModelChoice,
    weights: Weights,
    solution: Solution,
    config: FinetuneConfig | UNetFinetuneConfig,
    work: Callable[[Job], dict[str, Any]],
    resume_of: Job | None,
    label: str,
    estimate_s: float | None,
    checkpoint: str,
    **settings: Any,
) -> Job:
    """Start ``work``, carrying a resumed job's curves on; remember the job's id.

    The job is labelled with its model, solution and settings (``label``) so that every view of
    it, on any model, says whose it is.
    """
    if resume_of is not None:
        label, estimate_s = resume_of.config["label"], resume_of.config.get("estimate_s")
    job = registry().start(
        "finetune",
        f"Finetune of {which.label}",
        work,
        config={
            "solution": solution,
            "choice": which,
            "state_dict": weights,
            "finetune": config,
            "label": label,
            "estimate_s": estimate_s,
            "checkpoint": checkpoint,
            **settings,
        },
    )
    if resume_of is not None:
        job.history = list(resume_of.history)
        job.live.update(
            {k: list(v) if isinstance(v, list) else v for k, v in resume_of.live.items()}
        )
    state.remember_job("finetune", job.id)
    return job


def _evaluation_interval(config: FinetuneConfig, images: int) -> int:
    """Steps between the test evaluations of a run: about EVALUATIONS of them in all."""
    total = config.steps or config.epochs * math.ceil(images / config.batch_size)
    return max(1, math.ceil(total / EVALUATIONS))


def _checkpoint_accuracy(path: str, step: int, test: Any) -> float | None:
    """Test accuracy (%) of the checkpoint core has just written at ``step`` (None: none there)."""
    try:
        saved = load_finetune_checkpoint(path)
    except LayerMergeError:
        return None
    if saved["step"] != step:  # core wrote no checkpoint at this step
        return None
    network = network_from_finetune_checkpoint(saved)
    return evaluate(network, test, limit=INTERIM_TEST_IMAGES).accuracy
