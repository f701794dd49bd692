"""The finetune workflow: training form -> finetune loop -> merge -> evaluate, resumable.

One job for every family: the family builds the training form of the solution, runs its own
finetune loop (``ModelFamily.finetune``: a classifier's SGD on cross-entropy, a UNet's Adam on the
ε-loss with EMA), and says where its figures go; this module does the rest the same way for all.
Into the output folder it writes:

- the loop's run state (``ModelFamily.finetune_state_path``), every few steps: running the job
  again with the same settings resumes from it, bit for bit;
- the finetuned training form (``ModelFamily.save_finetuned``), which ``compress --finetuned``
  merges;
- once the loop completes, ``compressed.pt`` (the merged network, the compressed-checkpoint
  format), ``compressed.onnx`` when asked;
- ``metrics.json``: :meth:`FinetuneOutcome.summary`, also what ``finetune --json`` prints,
  with the data the network was finetuned on (``data_spec``: the canonical ``--data`` spec and
  its preprocessing, also in every checkpoint written here) so later steps know what it expects.

With ``control=True`` a completed run is followed by its control (``core.workflows.control``):
the uncompressed original finetuned with the same recipe and evaluated the same way, reused from
its cache folder when the same original and recipe ran before. The summary then states the
compressed figure against the original's and against the control's (``comparison``), so a gain
that the finetune would have given the original as well is not read as the compression's.

A set ``cancel`` event stops the loop cleanly before its next step (state saved, status
``"cancelled"``); nothing is merged then, and the same call later resumes.

A caller that watches the run (the app's finetune job, drawing live curves) gets each network's
figures as soon as they are measured (``evaluated``: the original, the training form before
finetuning, the finetuned and merged networks) and, with ``evaluations``, quick figures of the run
state about that many times while it trains, for a family that evaluates its run states
(``ModelFamily.finetune_steps``): the same run the CLI makes, seen from the outside.

Example:
    >>> model = load_model("digits_resnet")  # doctest: +SKIP
    >>> data = load_data(model, "digits")  # doctest: +SKIP
    >>> config = model.family.finetune_config({"steps": 100}, data)  # doctest: +SKIP
    >>> done = finetune(model, solution, data, config, out="runs/ft")  # doctest: +SKIP
    >>> done.status, done.metrics["accuracy_after"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.families import FinetuneReport, ModelFamily
from core.files import (
    OutputFile,
    atomic_write_all,
    atomic_write_text,
    bytes_writer,
    jsonable,
    torch_bytes,
)
from core.solution import Solution
from core.workflows.control import (
    CONTROL_FIGURE,
    ControlOutcome,
    compressed_vs_control,
    default_control_cache,
    finetune_control,
)
from core.workflows.model import LoadedModel, check_finite_figures
from core.workflows.outputs import output_dir, written

__all__ = [
    "COMPRESSED_NAME",
    "ONNX_NAME",
    "METRICS_NAME",
    "FinetuneOutcome",
    "finetune",
    "data_record",
    "Evaluated",
]

COMPRESSED_NAME = "compressed.pt"
ONNX_NAME = "compressed.onnx"
METRICS_NAME = "metrics.json"
# (stage, step, figures): "original", "surgery" (step 0), "interim", "finetuned", "merged"
Evaluated = Callable[[str, int, Mapping[str, float]], None]


@dataclass(frozen=True)
class FinetuneOutcome:
    """How a finetune job ended, with its networks, figures and files."""

    model: str  # the model's name
    weights: str  # where its weights came from, for people
    solution: Solution
    solution_source: str | None  # where the solution was read from (recorded in the summary)
    status: str  # "completed" or "cancelled"
    step: int  # steps done, over every resume
    total_steps: int
    resumed_from: int | None  # the step this run resumed from; None for a fresh run
    device: str
    train_seconds: float  # this call's training time
    train_loss: float | None  # the last mean training loss
    train_figures: Mapping[str, float | None]  # the family's other training figures, by key
    config: dict[str, Any]  # the family's finetune settings, as recorded
    metrics: dict[str, Any]  # JSON-able: every figure, as metrics.json holds them
    state: Path  # the resumable run state
    finetuned: Path  # the finetuned training form (compress --finetuned)
    compressed: Path | None  # the compressed checkpoint, once completed
    onnx: Path | None
    network: nn.Module  # the finetuned training form (CPU, eval mode)
    merged: nn.Module | None  # the merged network, once completed
    fields: Mapping[str, Any]  # what the family adds to every summary (ModelFamily.result_fields)
    data_spec: Mapping[str, Any]  # the --data spec and its preprocessing (data_record)
    control: ControlOutcome | None = None  # the original finetuned the same way, when asked
    comparison: Mapping[str, Any] | None = None  # compressed vs original (and vs control)

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary: ``metrics.json`` and what ``finetune --json`` prints."""
        return {
            **self.fields,
            "model": self.model,
            "weights": self.weights,
            "solution": self.solution_source,
            "method": self.solution.method,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "device": self.device,
            "train_seconds": round(self.train_seconds, 2),
            "train_loss": self.train_loss,
            **self.train_figures,
            "finetuned": str(self.finetuned),
            "checkpoint": str(self.finetuned),
            "config": self.config,
            "compressed": str(self.compressed) if self.compressed else None,
            "onnx": str(self.onnx) if self.onnx else None,
            "data_spec": dict(self.data_spec),
            "control": None if self.control is None else self.control.to_dict(),
            "comparison": None if self.comparison is None else dict(self.comparison),
            "metrics": self.metrics,
        }


def finetune(
    model: LoadedModel,
    solution: Solution,
    data: Any,
    config: Any,
    *,
    out: str | Path,
    solution_source: str | Path | None = None,
    restart: bool = False,
    onnx: bool = False,
    progress: Callable[[FinetuneReport], None] | None = None,
    cancel: threading.Event | None = None,
    control: bool = False,
    control_cache: str | Path | None = None,
    control_progress: Callable[[FinetuneReport], None] | None = None,
    evaluated: Evaluated | None = None,
    evaluations: int = 0,
) -> FinetuneOutcome:
    """Finetune the training form of ``solution``, then merge, score and save it, in ``out``.

    Args:
        model: the original model (only read; the training form is a new module).
        solution: the kept activations and convs, valid for ``model.chain``.
        data: the family's data (``core.workflows.model.load_data``).
        config: the family's finetune settings (``model.family.finetune_config``).
        out: the output folder (created); a run state already there is resumed.
        solution_source: where the solution came from, recorded in the summary.
        restart: delete the run state first, so the run starts afresh.
        onnx: also export the merged network to ``out/compressed.onnx``.
        progress: called after every step with the family's report (``step``, ``total_steps``,
            ``eta_s``, ``readout()``); an exception it raises stops the run.
        cancel: once set, the loop stops before its next step with its state saved.
        control: once the run completes, also finetune the uncompressed original with the same
            ``config`` on the same ``data`` and evaluate it (or reuse it from the cache).
        control_cache: where controls are kept; by default ``controls/`` beside ``out``
            (:func:`core.workflows.control.default_control_cache`).
        control_progress: called after every step of the control's loop.
        evaluated: called with ``(stage, step, figures)`` as each network's figures
            (``ModelFamily.evaluate``) are measured: ``original`` and ``surgery`` at step 0,
            ``interim`` while it trains (see ``evaluations``), ``finetuned`` and ``merged`` after.
        evaluations: evaluate the run state about this many times while it trains
            (``ModelFamily.interim_figures``), for a family that evaluates its run states; the
            state is then written at that interval. 0: never.

    Raises:
        LayerMergeError: settings or a run state of other options, a file not writable, ...
    """
    family, bundle, traced = model.family, model.bundle, model.traced
    folder = output_dir(out)
    state = family.finetune_state_path(folder)
    if restart:
        state.unlink(missing_ok=True)
    resuming = state.is_file()
    training = family.training_form(bundle.model, traced, solution)
    names = family.metric_names("finetune")

    def figures(stage: str, network: nn.Module, step: int = 0) -> dict[str, float]:
        """``network``'s figures under the keys finetune records them at ``stage`` (none if
        unused), told to ``evaluated`` first."""
        template = names.get(stage)
        if template is None:
            return {}
        measured = family.evaluate(network, data)
        if evaluated is not None:
            evaluated(stage, step, measured)
        return {template.format(name): value for name, value in measured.items()}

    every = _interval(family, config, data, evaluations) if evaluated is not None else None
    if every is not None:
        config = dataclasses.replace(config, checkpoint_every=every)
    watched = (
        progress if every is None else _watching(progress, every, family, state, data, evaluated)
    )
    original = figures("original", bundle.model)
    check_finite_figures(original, what=f"the original {bundle.name} on {data.name}")
    record = data_record(data)
    metrics: dict[str, Any] = {
        "data": data.name,
        "data_spec": record,
        **original,
        **figures("surgery", training),
    }
    run = family.finetune(
        bundle,
        traced,
        training,
        data,
        config,
        checkpoint=state,
        metadata={"solution": solution.to_dict(), "data": record, "metrics": dict(metrics)},
        progress=watched,
        cancel=cancel,
    )
    metrics.update(figures("finetuned", run.network, run.step))
    metrics.update(
        finetune_steps=run.step,
        finetune_total_steps=run.total_steps,
        finetune_status=run.status,
        finetune_resumed=resuming,
        finetune_state=str(state),
        predicted_latency_ms=solution.latency_ms,
    )
    finetuned = written(
        lambda: family.save_finetuned(
            run.network, bundle, traced, solution, folder, metrics=jsonable(metrics)
        ),
        folder,
    )
    control_run = None
    if control and run.status == "completed":
        control_run = finetune_control(
            model,
            data,
            config,
            cache=default_control_cache(folder) if control_cache is None else control_cache,
            progress=control_progress,
            cancel=cancel,
        )
        metrics["control"] = control_run.to_dict()
        metrics.update({CONTROL_FIGURE.format(k): v for k, v in control_run.figures.items()})
    merged = compressed = onnx_path = None
    if run.status == "completed":
        merged = family.merge(run.network, traced, solution)
        metrics["merge_max_relative_error"] = family.merge_error(run.network, merged, traced)
        metrics.update(figures("merged", merged, run.step))
        metrics["original"] = family.network_summary(bundle.model, traced)
        metrics["compressed"] = family.network_summary(merged, traced)
        checkpoint = family.checkpoint(merged, bundle, traced, solution, metrics=jsonable(metrics))
        network = merged
        outputs = [
            OutputFile(
                folder / COMPRESSED_NAME,
                bytes_writer(torch_bytes(checkpoint)),
                "the compressed checkpoint",
            )
        ]
        if onnx:
            outputs.append(
                OutputFile(
                    folder / ONNX_NAME,
                    lambda tmp: family.export_onnx(network, tmp, traced),
                    "the ONNX file",
                )
            )
        paths = atomic_write_all(outputs)  # both, or (on a failure) neither
        compressed = paths[0]
        onnx_path = paths[1] if onnx else None
    outcome = FinetuneOutcome(
        model=bundle.name,
        weights=bundle.weights_note,
        solution=solution,
        solution_source=None if solution_source is None else str(solution_source),
        status=run.status,
        step=run.step,
        total_steps=run.total_steps,
        resumed_from=run.resumed_from if resuming else None,
        device=run.device,
        train_seconds=run.elapsed_s,
        train_loss=run.loss if math.isfinite(run.loss) else None,
        train_figures=dict(run.figures),
        config=config.to_dict(),
        metrics=jsonable(metrics, what="metrics"),
        state=state,
        finetuned=finetuned,
        compressed=compressed,
        onnx=onnx_path,
        network=run.network,
        merged=merged,
        fields=family.result_fields(),
        data_spec=record,
        control=control_run,
        comparison=compressed_vs_control(family, metrics),
    )
    text = json.dumps(outcome.summary(), indent=2, default=str)
    atomic_write_text(folder / METRICS_NAME, text, what="the finetune metrics")
    return outcome


def data_record(data: Any) -> dict[str, Any]:
    """What a network finetuned on ``data`` expects of its inputs, for summaries and checkpoints.

    The canonical ``--data`` spec, and where the data says so its preprocessing (normalisation
    name, mean and std, resize, crop) and input size: plain strings, numbers and lists, which
    ``torch.load(weights_only=True)`` reads back.
    """
    record: dict[str, Any] = {"spec": data.name}
    size = getattr(data, "input_size", getattr(data, "size", None))
    if isinstance(size, int):
        record["input_size"] = size
    preprocessing = getattr(data, "preprocessing", None)
    if isinstance(preprocessing, Mapping):
        record.update(preprocessing)
    return jsonable(record, what="the data spec")


def _interval(family: ModelFamily, config: Any, data: Any, evaluations: int) -> int | None:
    """Steps between the run-state evaluations ``evaluations`` asks for (None: none)."""
    if evaluations < 1:
        return None
    total = family.finetune_steps(config, data)
    return None if not total else max(1, math.ceil(total / evaluations))


def _watching(
    progress: Callable[[FinetuneReport], None] | None,
    every: int,
    family: ModelFamily,
    state: Path,
    data: Any,
    evaluated: Evaluated,
) -> Callable[[FinetuneReport], None]:
    """``progress``, then every ``every`` steps (the last excepted: the merged network's figures
    follow it) the figures of the run state the loop has just written."""

    def report(step: FinetuneReport) -> None:
        if progress is not None:
            progress(step)
        if step.step % every or step.step >= step.total_steps:
            return
        network = family.interim_network(state, step.step)
        if network is not None:
            evaluated("interim", step.step, family.interim_figures(network, data))

    return report
