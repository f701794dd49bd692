"""The tables workflow: a model's latency table and importance table, for every model family.

``profile`` and ``importance`` are what ``python -m core profile`` / ``importance`` and the app's
Tables page run. Each finds MODEL's family, loads and traces the model through it, and runs the one
pipeline (:func:`core.latency.measure_latency`, :func:`core.importance.estimate_importance`):
resumable, cached by content, cancellable. They return frozen dataclasses; what a family words
differently (a UNet's "whole UNet (one denoising step)") travels in their ``notes``.

Example:
    >>> result = profile("digits_resnet", out="tables/digits", config=LatencyConfig(batch=64))
    >>> result.meta["additivity_error"]  # doctest: +SKIP
    -0.30
    >>> importance("digits_resnet", data="digits", out="tables/digits").complete  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Subset

from core.data import check_above_chance
from core.errors import DataError, LayerMergeError
from core.families import ModelFamily, TableNotes, family_for
from core.importance import estimate_importance
from core.latency import LatencyConfig, measure_latency
from core.models import check_finite_weights
from core.runner import ProgressCallback, Runner
from core.speed import table_warning
from core.tables import TableEntry

__all__ = [
    "TableResult",
    "LatencyResult",
    "ImportanceResult",
    "load_traced",
    "profile",
    "importance",
    "check_original",
    "check_data",
]

CHANCE_CHECK_IMAGES = 1000  # test images the original is scored on before importance starts
Weights = str | Path | Mapping[str, Any] | None


@dataclass(frozen=True)
class TableResult:
    """What a latency and an importance run both report: the model, its family, the table."""

    model: str
    family: str
    notes: TableNotes
    weights_note: str
    out: str | None
    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    computed: int
    cached: int
    seconds: float
    complete: bool
    cancelled: bool


@dataclass(frozen=True)
class LatencyResult(TableResult):
    """A latency table and what the run did (see :class:`core.latency.LatencyTable`).

    ``meta`` is the table directory's meta.json after the run (the run's own when ``out`` is
    None); ``complete`` is False when the run was cancelled (no table written).
    """

    measured_geometries: int

    @property
    def warning(self) -> str | None:
        """One line saying why the table is unreliable (:func:`core.speed.table_warning`), or
        None: what the Tables page and ``profile`` show."""
        return table_warning(self.meta, self.out) if self.complete else None

    @property
    def identity_entries(self) -> int:
        """Entries that run nothing (latency 0): removals the network may choose."""
        return sum(e.identity_segment for e in self.entries)

    def slowest(self, count: int = 5) -> tuple[TableEntry, ...]:
        return tuple(sorted(self.entries, key=lambda e: -e.latency_ms)[:count])


@dataclass(frozen=True)
class ImportanceResult(TableResult):
    """An importance table and what the run did (see :class:`core.importance.ImportanceTable`)."""

    networks_trained: int

    def least_important(self, count: int = 5) -> tuple[TableEntry, ...]:
        return tuple(sorted(self.entries, key=lambda e: e.importance)[:count])


def load_traced(
    model: str,
    *,
    weights: Weights = None,
    width: float = 1.0,
    input_size: int | None = None,
) -> tuple[ModelFamily, Any, Any]:
    """MODEL's family, the model loaded through it (weights read safely) and its traced form.

    Raises:
        LayerMergeError: an unknown model, bad weights, or a model that cannot run or be traced
            (torch and diffusers raise RuntimeError on shapes that do not fit: one line).
    """
    family = family_for(model)
    with _one_line(f"cannot build {model}"):
        bundle = family.load(model, weights=weights, width=width, input_size=input_size)
    check_finite_weights(bundle.model, source=bundle.weights_note)  # no table of NaNs
    with _one_line(f"cannot trace {model} at its input size"):
        traced = family.trace(bundle)
    return family, bundle, traced


def profile(
    model: str,
    *,
    weights: Weights = None,
    width: float = 1.0,
    input_size: int | None = None,
    out: str | Path | None = None,
    config: LatencyConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    remeasure_unreliable: bool = False,
) -> LatencyResult:
    """Measure MODEL's latency table on this machine (and the whole network, for the error).

    Args:
        model: a registry name, ``module:function``, or any spelling a family claims.
        weights, width, input_size: as the family's ``load`` takes them (weights do not change a
            timing, but meta.json records their digest).
        out: the table directory (``latency.csv``, meta.json, the partial store); None: memory.
        config: batch, backend, device, threads and timing settings.
        progress: ``progress(done, total, eta_s)`` in entries; raising stops the run (saved).
        cancel: when set, the run stops after the timing in progress.
        remeasure_unreliable: time a finished table again when its timings stayed slow.

    Raises:
        LayerMergeError: bad input (model, settings, device, directory); one clear line.
    """
    family, bundle, traced = load_traced(model, weights=weights, width=width, input_size=input_size)
    table = measure_latency(
        bundle,
        traced,
        config,
        family=family,
        out=out,
        progress=progress,
        cancel=cancel,
        remeasure_unreliable=remeasure_unreliable,
    )
    return LatencyResult(
        **_common_fields(family, bundle, out, table), measured_geometries=table.measured_geometries
    )


def importance(
    model: str,
    *,
    data: str,
    weights: Weights = None,
    width: float = 1.0,
    input_size: int | None = None,
    out: str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    runner: Runner | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ImportanceResult:
    """Score every entry of MODEL by the family's estimator on ``data``.

    The original is scored first (:func:`check_original`): a classifier at chance level on the
    data stops the run with one line before any entry is trained. A finished table's meta.json
    records the data as ``data_spec`` (:func:`core.data.data_record`).

    Args:
        model: a registry name, ``module:function``, or any spelling a family claims.
        data: the ``--data`` spec (``digits``, ``folder:PATH``, ``cifar10:PATH``).
        weights, width, input_size: as the family's ``load`` takes them.
        out: the table directory (``importance.csv``, meta.json, the partial store); None: memory.
        settings: generic importance options (``mode``, ``steps``, ``lr``, ``batch_size``,
            ``normalization``, ``reinit_single``, ``eval_images``, ``calibration_images``,
            ``seed``, ``data_seed``); None values take the family's defaults, and an option that
            does not apply to the family is refused.
        runner: where entries run (this process, local processes or a dask cluster).
        progress: ``progress(done, total, eta_s)`` in entries; raising stops the run (saved).
        cancel: when set, the run stops after the jobs in progress.

    Raises:
        LayerMergeError: bad input (model, settings, data, directory, cluster); one clear line.
        DataError: the data cannot train the model (:func:`check_data`), or the original scores
            no better than chance on it (its preprocessing or input size probably does not match
            how it was trained).
    """
    runner = runner or Runner()
    family, bundle, traced = load_traced(model, weights=weights, width=width, input_size=input_size)
    config = family.importance_config(**dict(settings or {}))
    check_data(family, bundle, data)
    splits = family.load_data(data, bundle, traced, seed=config.data_seed)
    check_original(family, bundle, splits)
    table = estimate_importance(
        bundle,
        traced,
        splits,
        config,
        family=family,
        out=out,
        jobs=runner.processes,
        cluster=runner.cluster,
        threads=runner.threads,
        progress=progress,
        cancel=cancel,
    )
    return ImportanceResult(
        **_common_fields(family, bundle, out, table), networks_trained=table.networks_trained
    )


def check_data(family: ModelFamily, bundle: Any, data: str) -> None:
    """Refuse data the model cannot be trained on, before anything is loaded or scored.

    The family says what does not fit (:meth:`ModelFamily.data_problem`: a UNet of RGB images
    and the only diffusion data, the 1-channel digits); the app's forms ask the same before a
    job starts.

    Raises:
        DataError: the family's one line.
    """
    problem = family.data_problem(data, bundle)
    if problem is not None:
        raise DataError(problem)


def check_original(family: ModelFamily, bundle: Any, splits: Any) -> None:
    """Refuse to score entries of a model that scores no better than chance on the data.

    A trained model at chance level on held-out images almost always means the data is not
    prepared as it was trained (normalisation, resize, input size): every entry would then be
    measured against noise, for an hour. The original is scored on up to
    :data:`CHANCE_CHECK_IMAGES` test images. Not checked: a task without classes, and seeded
    initial weights (untrained: at chance by construction, and the run already says so).

    Raises:
        DataError: the one line :func:`core.data.check_above_chance` gives.
    """
    classes = getattr(splits, "num_classes", None)
    if not classes or not dataclasses.is_dataclass(splits) or bundle.weights_source == "seeded":
        return
    count = min(CHANCE_CHECK_IMAGES, len(splits.test))
    sample = dataclasses.replace(splits, test=Subset(splits.test, range(count)))
    accuracy = family.evaluate(bundle.model, sample).get("accuracy")
    problem = None if accuracy is None else check_above_chance(accuracy, classes, count=count)
    if problem is not None:
        raise DataError(problem)


def _common_fields(family: Any, bundle: Any, out: str | Path | None, table: Any) -> dict[str, Any]:
    """What a latency and an importance result both say: the model, its family, the table."""
    return {
        "model": bundle.name,
        "family": family.name,
        "notes": family.table_notes,
        "weights_note": bundle.weights_note,
        "out": None if out is None else str(out),
        "entries": table.entries,
        "meta": table.meta,
        "computed": table.computed,
        "cached": table.cached,
        "seconds": table.seconds,
        "complete": table.complete,
        "cancelled": table.cancelled,
    }


@contextlib.contextmanager
def _one_line(what: str) -> Iterator[None]:
    """torch and diffusers raise RuntimeError (and friends) on models that do not fit their
    input or weights: that is bad input, so it becomes one LayerMergeError line."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, LayerMergeError):
            raise
        message = " ".join(str(exc).split())[:300]
        raise LayerMergeError(f"{what}: {type(exc).__name__}: {message}") from exc
