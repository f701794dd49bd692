"""The measure workflow: the original and the compressed network timed side by side.

What ``bench`` does, for every family: the family names the fair baseline (a classifier's
original with BN folded, as the paper measures; a UNet's module as built), wraps both networks so
the benchmark can time them (``ModelFamily.timing_module``: a UNet runs one denoising step), and
adds what it measures beyond one forward pass (a UNet's DDIM sampling time and digits FD). The
timing protocol is :mod:`core.benchmark`'s: both networks in one process, alternating rounds,
medians and their ratio, beside the speed model's prediction (:mod:`core.speed`) when the tables'
meta.json is given. With the tables given, the measurement reuses their settings (batch,
threads) unless told otherwise, and says whether this process has their allocator setting.

Example:
    >>> model = load_model("digits_mobilenet")  # doctest: +SKIP
    >>> done = measure(model, load_solution(model, "solution.json"), rounds=5)  # doctest: +SKIP
    >>> done.comparisons[0].speedup  # doctest: +SKIP
    1.4
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.benchmark import (
    DEFAULT_ROUNDS,
    Comparison,
    TimingSettings,
    allocator_in_effect,
    compare,
    measure_onnx_side_by_side,
    predicted_from_meta,
)
from core.errors import LayerMergeError, TableMismatchError
from core.solution import Solution
from core.workflows.model import LoadedModel

__all__ = [
    "Measurement",
    "measure",
    "OnnxSpeed",
    "measure_onnx",
    "times_onnx",
    "onnx_speed_line",
    "onnx_speed_how",
    "onnx_speed_warning",
    "backend_warning",
]

ONNX_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class Measurement:
    """Original vs compressed, measured in one run."""

    status: str  # "completed", or "cancelled" (the comparisons done so far)
    baseline: str  # which original the speed-up is against, for people
    input_shape: tuple[int, ...]  # one input, without the batch
    original: dict[str, int]  # the baseline's params, conv layers and main-path depth
    compressed: dict[str, int]
    comparisons: tuple[Comparison, ...]  # one per backend, in the order timed
    predicted: dict[str, Any] | None  # the table's prediction (core.benchmark.predicted_from_meta)
    extra: dict[str, Any]  # the family's other measurements (ModelFamily.measure_extra)
    compressed_network: nn.Module
    allocator: str = "default"  # this process's allocator setting (core.benchmark)
    settings_note: str | None = None  # how the settings differ from the tables', when they do


def measure(
    model: LoadedModel,
    solution: Solution,
    *,
    compressed: nn.Module | str | Path | None = None,
    baseline: str | None = None,
    backends: Sequence[str] | None = None,
    batch: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    threads: int | None = None,
    tables_meta: Mapping[str, Any] | None = None,
    extra: Any = None,
    progress: Callable[[int, int, float | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> Measurement:
    """Time ``model`` against its network compressed by ``solution``, side by side.

    Args:
        model: the original model (only read).
        solution: the solution the compressed network was made for.
        compressed: the compressed network, or a compressed checkpoint file of this model; by
            default ``solution`` merged afresh.
        baseline: the family's baseline choice (a classifier: ``folded`` or ``module``).
        backends: ``torch`` and/or ``onnxruntime``; by default the family's.
        batch: inputs per forward pass; None: the tables' batch (1 without tables).
        rounds: timed rounds per network and backend.
        threads: intra-op threads; None: the tables' count (the current setting without).
        tables_meta: the meta.json of the tables the solution came from: adds their prediction.
        extra: the family's extra measurement settings (``ModelFamily.measure_config``); None
            measures nothing beyond the speed table.
        progress: called ``(done, total, None)`` after each backend and the extras.
        cancel: once set, no further backend or extra starts; the result says "cancelled".

    Raises:
        TableMismatchError: ``tables_meta`` belongs to another network.
        LayerMergeError: a checkpoint of another model, an unknown backend or baseline, or a
            count below 1.
    """
    family, bundle, traced = model.family, model.bundle, model.traced
    predicted = None
    if tables_meta is not None:
        recorded = tables_meta.get("chain_digest")
        if recorded not in (None, traced.digest()):
            raise TableMismatchError(
                f"the tables hold another network (chain digest {recorded}, this model "
                f"{traced.digest()})"
            )
        predicted = predicted_from_meta(tables_meta, solution)
    settings = TimingSettings.from_meta(tables_meta) if tables_meta is not None else None
    if batch is None:
        batch = settings.batch if settings is not None else 1
    if threads is None and settings is not None:
        threads = settings.threads
    note = _settings_note(settings, batch, threads) if settings is not None else None
    if compressed is None:
        training = family.training_form(bundle.model, traced, solution)
        network = family.merge(training, traced, solution)
    elif isinstance(compressed, nn.Module):
        network = compressed
    else:
        network = family.load_compressed(compressed, bundle, traced)
    original, label = family.speed_baseline(bundle, traced, baseline)
    backends = tuple(backends or family.bench_backends())
    total = len(backends) + (extra is not None)
    input_shape = tuple(model.chain.input_shape)
    comparisons: list[Comparison] = []
    status = "completed"
    for backend in backends:
        if cancel is not None and cancel.is_set():
            status = "cancelled"
            break
        comparisons += compare(
            family.timing_module(original),
            family.timing_module(network),
            input_shape=input_shape,
            batch=batch,
            backends=(backend,),
            rounds=rounds,
            threads=threads,
        )
        if progress is not None:
            progress(len(comparisons), total, None)
    extras: dict[str, Any] = {}
    if extra is not None and status == "completed":
        if cancel is not None and cancel.is_set():
            status = "cancelled"
        else:
            extras = family.measure_extra(extra, original, network, threads=threads)
            if progress is not None:
                progress(total, total, None)
    return Measurement(
        status=status,
        baseline=label,
        input_shape=input_shape,
        original=family.network_summary(original, traced),
        compressed=family.network_summary(network, traced),
        comparisons=tuple(comparisons),
        predicted=predicted,
        extra=extras,
        compressed_network=network,
        allocator=allocator_in_effect(),
        settings_note=note,
    )


@dataclass(frozen=True)
class OnnxSpeed:
    """An ONNX export timed against the original's ONNX export on ONNX Runtime, in one run.

    Why apart from the torch measurement: the deployment format is its own runtime. A merged
    network with large kernels (11x11) measured 1.49x faster in torch eager and 0.55x in ONNX
    Runtime, so the torch figure and the tables' prediction say nothing certain about the ONNX
    file.
    """

    comparison: Comparison  # backend "onnxruntime": original_ms, compressed_ms, speedup
    baseline: str  # which original was exported (the family's speed baseline)
    predicted_speedup: float | None  # the tables' speed model, when the tables are known
    predicted_backend: str | None  # the backend those tables were timed on

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what the compressed checkpoint and the CLI's JSON record."""
        return {
            **self.comparison.to_dict(),
            "baseline": self.baseline,
            "predicted_speedup": self.predicted_speedup,
            "predicted_backend": self.predicted_backend,
            "slower": self.comparison.speedup < 1.0,
        }


def times_onnx(model: LoadedModel) -> bool:
    """Whether this model's family exports ONNX graphs the benchmark can time (one input)."""
    return ONNX_BACKEND in model.family.bench_backends()


def measure_onnx(
    model: LoadedModel,
    onnx: bytes | str | Path,
    *,
    solution: Solution | None = None,
    tables_meta: Mapping[str, Any] | None = None,
    batch: int | None = None,
    threads: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
) -> OnnxSpeed:
    """Time the ONNX graph ``onnx`` against the original network's ONNX export, side by side.

    The original is the family's speed baseline (a classifier's: BN folded), exported by the
    family's own exporter (:mod:`core.onnx_export`) into a temporary folder, so both graphs are
    made the same way; they alternate in rounds on ONNX Runtime (:mod:`core.benchmark`).

    Args:
        model: the original model (only read).
        onnx: the exported graph of the compressed network (a file or its bytes).
        solution: with ``tables_meta``: adds the tables' predicted speed-up.
        tables_meta: the meta.json of the tables the solution came from; their batch and thread
            count are the defaults here, so the prediction and the measurement compare.
        batch: inputs per call; None: the tables' batch, else 1.
        threads: intra-op threads; None: the tables' count, else one.
        rounds: timed rounds per graph.

    Raises:
        LayerMergeError: the family's graphs are not timed on ONNX Runtime, the export of the
            original fails, or a bad count.
    """
    if not times_onnx(model):
        raise LayerMergeError(
            f"the {model.family.name} family's ONNX graphs are not timed on ONNX Runtime"
        )
    settings = TimingSettings.from_meta(tables_meta) if tables_meta is not None else None
    batch = batch if batch is not None else (settings.batch if settings else 1)
    threads = threads if threads is not None else (settings.threads if settings else 1)
    family, bundle, traced = model.family, model.bundle, model.traced
    original, label = family.speed_baseline(bundle, traced, None)
    with tempfile.TemporaryDirectory(prefix="lm-onnx-") as folder:
        baseline = family.export_onnx(original, Path(folder) / "original.onnx", traced)
        comparison = measure_onnx_side_by_side(
            baseline,
            onnx,
            input_shape=tuple(model.chain.input_shape),
            batch=batch,
            rounds=rounds,
            threads=threads,
        )
    predicted = backend = None
    if tables_meta is not None and solution is not None:
        predicted = float(predicted_from_meta(tables_meta, solution)["speedup"])
        backend = str(tables_meta.get("backend") or "torch")
    return OnnxSpeed(comparison, label, predicted, backend)


def onnx_speed_line(record: Mapping[str, Any]) -> str:
    """One line for people from :meth:`OnnxSpeed.to_dict`: the two medians, their ratio and the
    tables' prediction beside it ("onnxruntime: merged 3.10 ms vs original 4.20 ms → 1.35×
    (torch eager predicted 1.49×)")."""
    line = (
        f"onnxruntime: merged {record['compressed_ms']:.2f} ms vs original "
        f"{record['original_ms']:.2f} ms → {record['speedup']:.2f}×"
    )
    if record.get("predicted_speedup") is not None:
        backend = record.get("predicted_backend") or "torch"
        name = "torch eager" if backend == "torch" else backend
        line += f" ({name} predicted {record['predicted_speedup']:.2f}×)"
    return line


def onnx_speed_how(record: Mapping[str, Any]) -> str:
    """How :func:`onnx_speed_line`'s numbers were measured, for the line below it."""
    return (
        f"batch {record['batch']}, {record['threads']} thread(s), median of {record['rounds']} "
        f"alternating rounds; baseline: the {record['baseline']}, exported the same way"
    )


def onnx_speed_warning(record: Mapping[str, Any]) -> str | None:
    """A warning when the ONNX graph is slower than the original's (None: it is not)."""
    if record["speedup"] >= 1.0:
        return None
    return (
        f"warning: the compressed ONNX graph is slower than the original's in ONNX Runtime "
        f"({record['speedup']:.2f}×); large merged kernels can cost more there than in torch"
    )


def backend_warning(table_backend: str | None) -> str | None:
    """A warning for an ONNX export whose solution was chosen on another runtime's timings.

    Args:
        table_backend: meta.json's ``backend`` of the tables the solution came from; None when
            those tables are not known.
    """
    if table_backend == ONNX_BACKEND:
        return None
    if table_backend is None:
        return (
            "note: the tables this solution was solved on are not known (pass --tables DIR), so "
            "it cannot be told which runtime its speed predictions were made for"
        )
    return (
        f"warning: the solution's speed predictions were made with the {table_backend} latency "
        "backend, not onnxruntime; for an ONNX deployment, profile with "
        "`python -m core profile MODEL --backend onnxruntime` and solve on those tables"
    )


def _settings_note(settings: TimingSettings, batch: int, threads: int | None) -> str | None:
    """How this measurement's settings differ from the tables' (None: they agree)."""
    differences = []
    if batch != settings.batch:
        differences.append(f"batch {batch} (tables: {settings.batch})")
    if threads is not None and threads != settings.threads:
        differences.append(f"{threads} thread(s) (tables: {settings.threads})")
    if not settings.holds_here():
        differences.append(f"the {allocator_in_effect()} allocator (tables: {settings.allocator})")
    if not differences:
        return None
    return "measured with " + ", ".join(differences) + ": the prediction may not compare"
