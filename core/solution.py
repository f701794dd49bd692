"""The solution file: which segments a method chose, with their kept convs and kept activations.

A solution is what the DP hands to surgery, merging, finetuning and export. Its JSON form is the
contract of DESIGN.md ("A solution file is JSON ..."); ``objective``, ``metric`` and the
``predicted_<metric>`` / ``original_<metric>`` figures were added beside the old keys (core.dp).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidSolutionError, OutputWriteError
from core.files import atomic_write_text

__all__ = [
    "SolutionSegment",
    "Solution",
    "SolutionWriteError",
    "load_solution",
    "save_solution",
    "OBJECTIVES",
    "METRICS",
]

SOLUTION_VERSION = 1
# What a solution's ``importance`` sums (core.dp): ``additive`` ΣΔ of the metric (higher is
# better), ``paper`` Σ exp(Δ/100) (LAYERMERGE.md §4). Files written before the field are ``paper``.
OBJECTIVES = ("additive", "paper")
# The metric a table's Δ columns measure: accuracy in percentage points (classifiers), or the
# ε-prediction loss (diffusion UNets; lower is better, so the additive objective sums -Δloss), or
# the logits' distortion (the data-light importance mode: it sums -distortion, predicts nothing).
METRICS = ("accuracy", "epsilon_loss", "distortion")


class SolutionWriteError(OutputWriteError):
    """A solution file cannot be written where asked (missing folder, a directory, a device...)."""


@dataclass(frozen=True)
class SolutionSegment:
    """One chosen segment (start, end] collapsed into one conv of size ``kernel``.

    ``kernel == 0`` with empty ``kept_convs`` is the removal of a single conv (layer-only baseline).
    """

    start: int
    end: int
    kernel: int
    depthwise: bool
    stride: int
    kept_convs: tuple[int, ...]
    latency_ms: float = 0.0
    importance: float = 0.0

    @property
    def key(self) -> tuple[int, int, int, bool, int]:
        return (self.start, self.end, self.kernel, self.depthwise, self.stride)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "kernel": self.kernel,
            "depthwise": self.depthwise,
            "stride": self.stride,
            "kept_convs": list(self.kept_convs),
            "latency_ms": self.latency_ms,
            "importance": self.importance,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SolutionSegment:
        """A segment of a solution file, parsed strictly: integers are integers (not bools or
        floats), ``depthwise`` is a bool, ``kept_convs`` a list of integers.

        Raises:
            InvalidSolutionError: naming the segment and the first bad field.
        """
        try:
            if not isinstance(data, dict):
                raise ValueError(f"is a {type(data).__name__}, not an object")
            return cls(
                start=_integer(data, "start", low=0),
                end=_integer(data, "end", low=1),
                kernel=_integer(data, "kernel", low=0),
                depthwise=_boolean(data, "depthwise"),
                stride=_integer(data, "stride", low=1),
                kept_convs=tuple(_integers(data, "kept_convs", low=0)),
                latency_ms=_number(data, "latency_ms", default=0.0),
                importance=_number(data, "importance", default=0.0),
            )
        except ValueError as exc:
            raise InvalidSolutionError(
                f"solution segment {_short(data)} is malformed: {exc}"
            ) from exc


@dataclass(frozen=True)
class Solution:
    """A method's answer for one budget.

    ``kept_activations`` are the boundaries that carry an activation (LAYERMERGE.md §1.2, set A).
    For LayerMerge and layer-only every segment end is in it; Kim23 (``depth``) may split an
    activation-free span into several separately executed convs, whose inner ends are not in it
    (so may LayerMerge's extended search, which contains Kim23's moves).

    ``importance`` is the value of ``objective`` (see :data:`OBJECTIVES`). ``predicted`` is the
    network's predicted ``metric`` (original + ΣΔ over the segments, whatever objective chose
    them), next to ``original_metric``, the original network's measured value; both are None when
    the tables do not record them.
    """

    method: str
    budget_ms: float
    latency_ms: float
    importance: float
    segments: tuple[SolutionSegment, ...]
    kept_activations: tuple[int, ...]
    tables_digest: str = ""
    version: int = SOLUTION_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    objective: str = "additive"
    metric: str = ""  # one of METRICS, or "" when the tables carry no Δ of any metric
    predicted: float | None = None
    original_metric: float | None = None

    @property
    def kept_convs(self) -> tuple[int, ...]:
        """Conv 0 (always kept) and every conv kept by some segment, in order."""
        return tuple(sorted({0, *(c for s in self.segments for c in s.kept_convs)}))

    @property
    def boundaries(self) -> tuple[int, ...]:
        return tuple(sorted({0, *(s.end for s in self.segments)}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": self.method,
            "budget_ms": self.budget_ms,
            "latency_ms": self.latency_ms,
            "importance": self.importance,
            "kept_activations": list(self.kept_activations),
            "kept_convs": list(self.kept_convs),
            "segments": [s.to_dict() for s in self.segments],
            "tables_digest": self.tables_digest,
            "objective": self.objective,
            "metric": self.metric,
            **self._metric_fields(),
            **({"extra": self.extra} if self.extra else {}),
        }

    def _metric_fields(self) -> dict[str, float]:
        if not self.metric:
            return {}
        fields = {}
        if self.predicted is not None:
            fields[f"predicted_{self.metric}"] = self.predicted
        if self.original_metric is not None:
            fields[f"original_{self.metric}"] = self.original_metric
        return fields

    @classmethod
    def from_dict(cls, data: Any) -> Solution:
        """A solution from its JSON form, parsed strictly (DESIGN.md's solution file).

        Integers are integers (not bools or floats), lists are lists, figures are finite
        numbers, and a ``version`` other than this one's is refused; a file without ``version``,
        ``objective`` or ``metric`` was written before those fields (version 1, ``paper``).

        Raises:
            InvalidSolutionError: naming the first bad field.
        """
        if not isinstance(data, dict):
            raise InvalidSolutionError(
                f"a solution must be a JSON object, got {type(data).__name__}"
            )
        try:
            version = _integer(data, "version", default=SOLUTION_VERSION)
            if version != SOLUTION_VERSION:
                raise ValueError(
                    f"version {version} is not supported (this version of LayerMerge Studio "
                    f"reads solution version {SOLUTION_VERSION})"
                )
            raw_segments = data.get("segments")
            if not isinstance(raw_segments, list) or not raw_segments:
                raise ValueError(f"segments must be a non-empty list, got {_short(raw_segments)}")
            objective = _string(data, "objective", default="paper")
            metric = _string(data, "metric", default="")
            if objective not in OBJECTIVES:
                raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
            if metric and metric not in METRICS:
                raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
            extra = data.get("extra", {})
            if not isinstance(extra, dict):
                raise ValueError(f"extra must be an object, got {_short(extra)}")
            fields = dict(
                method=_string(data, "method"),
                budget_ms=_number(data, "budget_ms"),
                latency_ms=_number(data, "latency_ms"),
                importance=_number(data, "importance"),
                kept_activations=tuple(sorted(_integers(data, "kept_activations", low=0))),
                tables_digest=_string(data, "tables_digest", default=""),
                version=version,
                extra=dict(extra),
                objective=objective,
                metric=metric,
                predicted=_number(data, f"predicted_{metric}", default=None) if metric else None,
                original_metric=(
                    _number(data, f"original_{metric}", default=None) if metric else None
                ),
            )
        except ValueError as exc:
            raise InvalidSolutionError(f"solution is malformed: {exc}") from exc
        segments = tuple(SolutionSegment.from_dict(s) for s in raw_segments)
        return cls(segments=tuple(sorted(segments, key=lambda s: s.start)), **fields)


def save_solution(solution: Solution, path: str | Path) -> None:
    """Write ``solution`` as JSON, atomically: readers never see half a file.

    The write policy of :mod:`core.files`: the JSON goes to a temporary file beside ``path`` that
    is then renamed over it, so a crash, a full disk or a read-only folder leaves ``path`` as it
    was and no temporary file behind. The folder must exist (a typo in it is refused, not
    silently created), and ``path`` may only replace a regular file: a directory, a device or a
    pipe is refused, never replaced. A symbolic link is followed, so the file it points to is
    updated.

    Raises:
        SolutionWriteError: the folder is missing, ``path`` is not a regular file, or the write
            fails; the message names the path and the reason.
    """
    text = json.dumps(solution.to_dict(), indent=2)
    try:
        atomic_write_text(path, text, what="the solution")
    except OutputWriteError as exc:
        raise SolutionWriteError(str(exc)) from exc


def load_solution(path: str | Path) -> Solution:
    """Read a solution file strictly (:meth:`Solution.from_dict`).

    Raises:
        InvalidSolutionError: the file is missing, unreadable, not JSON or malformed; the message
            names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} does not exist") from exc
    except IsADirectoryError as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} is a directory") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} is nested too deeply") from exc
    try:
        return Solution.from_dict(data)
    except InvalidSolutionError as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r}: {exc}") from exc


_MISSING = object()


def _value(data: dict[str, Any], name: str, default: Any) -> Any:
    value = data.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"it lacks {name!r}")
        return default
    return value


def _integer(data: dict[str, Any], name: str, *, low: int = 0, default: Any = _MISSING) -> int:
    value = _value(data, name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_short(value)}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return value


def _integers(data: dict[str, Any], name: str, *, low: int = 0) -> list[int]:
    value = _value(data, name, _MISSING)
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of integers, got {_short(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < low:
            raise ValueError(f"{name} must be a list of integers >= {low}, got {_short(value)}")
    return list(value)


def _boolean(data: dict[str, Any], name: str) -> bool:
    value = _value(data, name, _MISSING)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_short(value)}")
    return value


def _number(data: dict[str, Any], name: str, *, default: Any = _MISSING) -> Any:
    """A finite number (an int or a float, not a bool) as a float; ``default`` when absent."""
    value = _value(data, name, default)
    if value is default and default is not _MISSING:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _string(data: dict[str, Any], name: str, *, default: Any = _MISSING) -> str:
    value = _value(data, name, default)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
