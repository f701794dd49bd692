"""The compress workflow: a solution (and finetuned weights) merged into a compressed checkpoint.

The training form of the solution is built from the model (``ModelFamily.training_form``), or
read back from a finetune run (``ModelFamily.load_finetuned``), merged into one conv per segment,
checked against the training form, optionally scored on the task before and after, and written as
the family's compressed checkpoint (plus ONNX). What this does is the same for every family.

An ONNX export can be timed against the original's ONNX export on ONNX Runtime before it is
written (``time_onnx``; :func:`core.workflows.measure.measure_onnx`): the deployment format gets
its own measurement, recorded in the checkpoint's metrics as ``onnx_speed``, because a speed-up
measured or predicted in torch need not hold there.

Example:
    >>> model = load_model("digits_resnet")  # doctest: +SKIP
    >>> done = compress(model, load_solution(model, "solution.json"), out="c.pt")  # doctest: +SKIP
    >>> done.metrics["merge_max_relative_error"] < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import OutputWriteError
from core.families import FinetunedWeights
from core.files import OutputFile, atomic_write_all, bytes_writer, jsonable, torch_bytes
from core.solution import Solution
from core.workflows.evaluate import stage_metrics
from core.workflows.measure import OnnxSpeed, measure_onnx
from core.workflows.model import LoadedModel, check_finite_figures

__all__ = ["Compression", "compress"]


@dataclass(frozen=True)
class Compression:
    """What :func:`compress` made: both networks, their figures and the files written."""

    solution: Solution
    training: nn.Module  # the training form (finetuned weights when given), eval mode
    merged: nn.Module  # the deployable network, eval mode
    merge_error: float  # largest relative difference of the two on a seeded input
    metrics: dict[str, Any]  # JSON-able: what the checkpoint records, and the merged network's
    checkpoint: Path | None  # the compressed checkpoint written, if any
    onnx: Path | None
    finetuned: FinetunedWeights | None  # where the training form's weights came from
    onnx_speed: OnnxSpeed | None = None  # the ONNX file timed against the original's export


def compress(
    model: LoadedModel,
    solution: Solution,
    *,
    out: str | Path | None = None,
    finetuned: str | Path | None = None,
    data: Any = None,
    onnx: str | Path | None = None,
    time_onnx: bool = False,
    tables_meta: Mapping[str, Any] | None = None,
) -> Compression:
    """Merge ``solution`` into ``model``'s deployable network and write its checkpoint.

    Args:
        model: the original model (only read).
        solution: the kept activations and convs, valid for ``model.chain``.
        out: the compressed checkpoint to write (atomically, in an existing folder; never over
            a directory or a device); None writes nothing.
        finetuned: a finetune output folder or its training-form file: merge those weights.
        data: the family's data (``core.workflows.model.load_data``): score the original and the
            merged network on the task, under ``metric_names("compress")``.
        onnx: also export the merged network to ONNX here (checked against ONNX Runtime);
            written together with ``out``: both files, or on a failure neither.
        time_onnx: with ``onnx``: time the ONNX graph against the original's ONNX export on
            ONNX Runtime before anything is written (seconds on the demo models), and record
            it in the metrics as ``onnx_speed``.
        tables_meta: the meta.json of the tables ``solution`` came from: the timing uses their
            batch and threads and shows their predicted speed-up beside the measurement.

    Raises:
        InvalidSolutionError: the solution does not fit the model.
        UnsafeCheckpointError: the finetuned weights are unreadable or unsafe.
        LayerMergeError: finetuned weights of another model or solution; an original network
            whose figures on ``data`` are not finite.
        OutputWriteError: a file not writable (missing folder, a directory in the way, a full
            disk); the files already there are left as they were.
    """
    family, bundle, traced = model.family, model.bundle, model.traced
    training = family.training_form(bundle.model, traced, solution)
    weights = None
    if finetuned is not None:
        weights = family.load_finetuned(finetuned, training, bundle, traced, solution)
        training = weights.network
    merged = family.merge(training, traced, solution)
    error = family.merge_error(training, merged, traced)
    metrics: dict[str, Any] = {
        "original": family.network_summary(bundle.model, traced),
        "predicted_latency_ms": solution.latency_ms,
        "merge_max_relative_error": error,
        **(weights.metrics if weights is not None else {}),
    }
    if data is not None:
        metrics["data"] = data.name
        original = stage_metrics(family, "compress", "original", bundle.model, data)
        check_finite_figures(original, what=f"the original {bundle.name} on {data.name}")
        metrics.update(original)
        metrics.update(stage_metrics(family, "compress", "merged", merged, data))
    metrics["compressed"] = family.network_summary(merged, traced)
    onnx_data = speed = None
    if onnx is not None:
        onnx_data = _onnx_file(family, merged, traced, onnx)  # exported, checked, not yet written
        if time_onnx:
            speed = measure_onnx(model, onnx_data, solution=solution, tables_meta=tables_meta)
            metrics["onnx_speed"] = speed.to_dict()
    metrics = jsonable(metrics, what="metrics")
    # the checkpoint and its ONNX are written together: both, or (on a failure) neither
    outputs = []
    if out is not None:
        checkpoint = family.checkpoint(merged, bundle, traced, solution, metrics=metrics)
        serialized = bytes_writer(torch_bytes(checkpoint))  # before any file is touched
        outputs.append(OutputFile(out, serialized, "the compressed checkpoint"))
    if onnx is not None and onnx_data is not None:
        outputs.append(OutputFile(onnx, bytes_writer(onnx_data), "the ONNX file"))
    written = iter(atomic_write_all(outputs))
    path = next(written) if out is not None else None
    onnx_path = next(written) if onnx is not None else None
    return Compression(
        solution=solution,
        training=training.eval(),
        merged=merged,
        merge_error=error,
        metrics=metrics,
        checkpoint=path,
        onnx=onnx_path,
        finetuned=weights,
        onnx_speed=speed,
    )


def _onnx_file(family: Any, merged: nn.Module, traced: Any, target: str | Path) -> bytes:
    """The family's ONNX export of ``merged`` (checked against ONNX Runtime), as bytes: the
    graph that is timed is the very graph that is written to ``target``.

    Raises:
        OutputWriteError: the exporter's own file could not be written (a full disk).
    """
    try:
        with tempfile.TemporaryDirectory(prefix="lm-compress-") as folder:
            path = family.export_onnx(merged, Path(folder) / "compressed.onnx", traced)
            return path.read_bytes()
    except Exception as exc:
        # an exporter may wrap the OSError of its file in an error of its own
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if not isinstance(cause, OSError):
            raise
        reason = cause.strerror or " ".join(str(cause).split()) or type(cause).__name__
        raise OutputWriteError(f"cannot write the ONNX file to {target}: {reason}") from exc
