"""The finetune job: core's finetune workflow in the background, watched, for every family.

One starter for every model family: the job runs ``core.workflows.finetune.finetune``, the same
call the CLI's ``finetune`` verb makes (training form → the family's loop → merge → evaluate, its
run state, outputs and metrics in an output folder of the app's runs folder), and turns what the
workflow reports into the job's progress, curves and figures. A job checkpoints as it trains, so
:func:`resume_finetune` continues a cancelled job where it stopped, with the same model and
options, in the same folder.

What a family's panel shows beyond the shared figures (a UNet's sample grids and digits-FD, a
classifier's accuracies as ``Evaluation`` records) is the panel's ``result`` hook, run in the
worker once the workflow has completed; the job never asks which family it trains.

With ``control`` the workflow also finetunes the uncompressed original with the same recipe
(``core.workflows.control``, cached in the app's runs folder by original and recipe, so a second
job of the same model and settings reuses it) and sets the compressed figure against both.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.families import FinetuneReport
from core.solution import Solution
from core.workflows.finetune import finetune
from core.workflows.model import LoadedModel, load_data, loaded
from pages._shared import caches, state
from pages._shared.jobs import Job, registry
from pages._shared.paths import APP_RUNS
from pages._shared.state import ModelChoice

__all__ = [
    "CONTROL_STAGE",
    "CONTROLS",
    "EVALUATIONS",
    "Completed",
    "ResultHook",
    "start_finetune",
    "resume_finetune",
]

Weights = dict[str, torch.Tensor] | None  # a session's uploaded state_dict
MAX_HISTORY = 2000  # training-curve points kept per finetune job (every k-th step beyond)
EVALUATIONS = 10  # evaluations of the run state while it trains (plus one before, one at the end)
CONTROL_STAGE = "control: finetuning the original the same way"
CONTROLS = APP_RUNS / "controls"  # the controls' cache (core.workflows.control)
FINETUNES = APP_RUNS / "finetune"  # one output folder per job (a resumed job reuses its own)


@dataclass(frozen=True)
class Completed:
    """A completed finetune as a panel's result hook takes it (in the worker thread)."""

    job: Job
    model: LoadedModel  # the original
    solution: Solution
    data: Any  # the family's data the network was finetuned on
    figures: Mapping[str, Mapping[str, float]]  # by stage: original, surgery, finetuned, merged
    merged: nn.Module  # the finetuned network, merged


ResultHook = Callable[[Completed], dict[str, Any]]


def start_finetune(
    solution: Solution,
    config: Any,
    *,
    result: ResultHook | None = None,
    settings: Mapping[str, Any] | None = None,
    label: str = "",
    estimate_s: float | None = None,
    control: bool = False,
) -> Job:
    """Finetune the session's model's training form of ``solution`` with core's workflow.

    Args:
        solution: the solution to finetune.
        config: the family's finetune settings (``ModelFamily.finetune_config``).
        result: the panel's hook: what its view shows beyond the shared figures.
        settings: more of the panel's options, kept in the job's config (its hook reads them).
        label: the settings in words, shown with the job.
        estimate_s: the predicted duration, shown beside the real one.
        control: also finetune the original with the same recipe.
    """
    which, weights = state.choice(), state.weights()
    options = {"result_hook": result, "control": control, **(settings or {})}
    out = str(FINETUNES / uuid.uuid4().hex[:12])
    return _start(which, weights, solution, config, out, label, estimate_s, options, None)


def resume_finetune(job: Job) -> Job:
    """Continue a cancelled finetune job from its run state, with its model and options."""
    config = job.config
    options = {k: v for k, v in config.items() if k not in _OWN}
    return _start(
        config["choice"],
        config.get("state_dict"),
        config["solution"],
        config["finetune"],
        config["out"],
        config["label"],
        config.get("estimate_s"),
        options,
        job,
    )


_OWN = frozenset({"choice", "state_dict", "solution", "finetune", "out", "label", "estimate_s"})


def _start(
    which: ModelChoice,
    weights: Weights,
    solution: Solution,
    config: Any,
    out: str,
    label: str,
    estimate_s: float | None,
    options: dict[str, Any],
    resume_of: Job | None,
) -> Job:
    """Start the worker, carrying a resumed job's curves on; remember the job's id.

    The job is labelled with its model, solution and settings (``label``) so that every view of
    it, on any model, says whose it is. The model is built in the script thread (cached).
    """
    model = _loaded(which, weights)
    hook: ResultHook | None = options.get("result_hook")
    control = bool(options.get("control"))

    def work(job: Job) -> dict[str, Any]:
        job.stage = "loading the data"
        data = load_data(model, which.data_spec)
        job.stage = "testing the original"
        figures: dict[str, Mapping[str, float]] = {}
        outcome = finetune(
            model,
            solution,
            data,
            config,
            out=out,
            progress=lambda report: _progress(job, model, report),
            cancel=job.cancel,
            control=control,
            control_cache=CONTROLS,
            control_progress=lambda report: job.report(
                report.step, report.total_steps, report.eta_s, CONTROL_STAGE
            ),
            evaluated=lambda stage, step, measured: _evaluated(
                job, model, figures, stage, step, measured
            ),
            evaluations=EVALUATIONS,
        )
        if outcome.status != "completed" or outcome.merged is None:
            return {"status": outcome.status, "steps": outcome.step}
        control_run = outcome.control
        shared = {
            "status": "completed",
            "merged": outcome.merged,
            "figures": figures,
            "steps": outcome.step,
            "seconds": outcome.train_seconds,
            "out": str(outcome.compressed.parent) if outcome.compressed else out,
            # the figures are what the pages show: the control's network is not kept
            "control": None
            if control_run is None
            else dataclasses.replace(control_run, network=None),
            "comparison": outcome.comparison,
        }
        if hook is None:
            return shared
        done = Completed(job, model, solution, data, figures, outcome.merged)
        return {**shared, **hook(done)}

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
            "out": out,
            "label": label,
            "estimate_s": estimate_s,
            **options,
        },
    )
    if resume_of is not None:
        job.history = list(resume_of.history)
        job.live.update(
            {k: list(v) if isinstance(v, list) else v for k, v in resume_of.live.items()}
        )
    state.remember_job("finetune", job.id)
    return job


def _progress(job: Job, model: LoadedModel, report: FinetuneReport) -> None:
    """One training step: the job's progress, and a curve point (every k-th of a long run)."""
    job.report(report.step, report.total_steps, report.eta_s, "finetuning")
    point, measured = model.family.curve_point(report)
    if measured or report.step % max(1, report.total_steps // MAX_HISTORY) == 0:
        job.history.append({"step": report.step, **point})


def _evaluated(
    job: Job,
    model: LoadedModel,
    figures: dict[str, Mapping[str, float]],
    stage: str,
    step: int,
    measured: Mapping[str, float],
) -> None:
    """A network's figures, measured by the workflow: kept by stage, and shown while it runs.

    ``live["reference"]`` is the original's quality figure (the family's first); ``live["tests"]``
    the (step, quality figure) of the compressed network before, while and after it trains.
    """
    figures[stage] = dict(measured)
    quality = next(iter(model.family.figures()), None)
    value = measured.get(quality) if quality else None
    if stage == "original":
        job.live["reference"] = value
        job.stage = "testing the training form before finetuning"
    elif stage == "finetuned":
        job.stage = "merging and testing"
    elif value is not None:
        tests = job.live.setdefault("tests", [])
        if all(at != step for at, _ in tests):  # a resumed job has its first ones already
            tests.append((step, value))
            tests.sort(key=lambda t: t[0])


def _loaded(which: ModelChoice, weights: Weights) -> LoadedModel:
    """The model as the workflows take it (built in the script thread, cached; only read)."""
    bundle = caches.bundle(which, weights=weights)
    return loaded(bundle, caches.traced(which, weights=weights), family=caches.family(which))
