"""The solution file: which segments a method chose, with their kept convs and kept activations.

A solution is what the DP hands to surgery, merging, finetuning and export. Its JSON form is the
contract of DESIGN.md ("A solution file is JSON ..."); ``objective``, ``metric`` and the
``predicted_<metric>`` / ``original_<metric>`` figures were added beside the old keys (core.dp).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidSolutionError, LayerMergeError

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
# ε-prediction loss (diffusion UNets; lower is better, so the additive objective sums -Δloss).
METRICS = ("accuracy", "epsilon_loss")


class SolutionWriteError(LayerMergeError):
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
    def from_dict(cls, data: dict[str, Any]) -> SolutionSegment:
        try:
            return cls(
                start=int(data["start"]),
                end=int(data["end"]),
                kernel=int(data["kernel"]),
                depthwise=bool(data["depthwise"]),
                stride=int(data["stride"]),
                kept_convs=tuple(int(c) for c in data["kept_convs"]),
                latency_ms=float(data.get("latency_ms", 0.0)),
                importance=float(data.get("importance", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSolutionError(f"solution segment {data!r} is malformed: {exc}") from exc


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
    def from_dict(cls, data: dict[str, Any]) -> Solution:
        if not isinstance(data, dict):
            raise InvalidSolutionError(
                f"a solution must be a JSON object, got {type(data).__name__}"
            )
        try:
            segments = tuple(SolutionSegment.from_dict(s) for s in data["segments"])
            objective = str(data.get("objective", "paper"))
            metric = str(data.get("metric", ""))
            if objective not in OBJECTIVES:
                raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
            if metric and metric not in METRICS:
                raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
            return cls(
                method=str(data["method"]),
                budget_ms=float(data["budget_ms"]),
                latency_ms=float(data["latency_ms"]),
                importance=float(data["importance"]),
                segments=tuple(sorted(segments, key=lambda s: s.start)),
                kept_activations=tuple(sorted(int(p) for p in data["kept_activations"])),
                tables_digest=str(data.get("tables_digest", "")),
                version=int(data.get("version", SOLUTION_VERSION)),
                extra=dict(data.get("extra", {})),
                objective=objective,
                metric=metric,
                predicted=_optional_float(data.get(f"predicted_{metric}") if metric else None),
                original_metric=_optional_float(data.get(f"original_{metric}") if metric else None),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSolutionError(
                f"solution is malformed: missing or bad field {exc}"
            ) from exc


def save_solution(solution: Solution, path: str | Path) -> None:
    """Write ``solution`` as JSON, atomically: readers never see half a file.

    The JSON goes to a temporary file beside ``path`` that is then renamed over it, so a crash,
    a full disk or a read-only folder leaves ``path`` as it was and no temporary file behind. The
    folder must exist (a typo in it is refused, not silently created), and ``path`` may only
    replace a regular file: a directory, a device or a pipe is refused, never replaced. A symbolic
    link is followed, so the file it points to is updated.

    Raises:
        SolutionWriteError: the folder is missing, ``path`` is not a regular file, or the write
            fails; the message names the path and the reason.
    """
    target = Path(path).expanduser()
    with contextlib.suppress(OSError, RuntimeError):
        target = target.resolve()
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise SolutionWriteError(f"cannot write the solution to {path}: folder {folder} {what}")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise SolutionWriteError(f"cannot write the solution to {path}: {exc}") from exc
    if mode is not None and not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise SolutionWriteError(f"cannot write the solution to {path}: it is {what}")
    text = json.dumps(solution.to_dict(), indent=2)
    tmp: str | None = None
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        # mkstemp makes the file private (0600); keep a replaced file's mode, else rw-r--r--
        os.chmod(tmp, stat.S_IMODE(mode) if mode is not None else 0o644)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SolutionWriteError(f"cannot write the solution to {path}: {reason}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_solution(path: str | Path) -> Solution:
    """Read a solution file; a missing or malformed file raises :class:`InvalidSolutionError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSolutionError(f"solution file {str(path)!r} is not valid JSON: {exc}") from exc
    return Solution.from_dict(data)


def _optional_float(value: Any) -> float | None:
    """A recorded figure, or None when absent; a present one must be a finite number."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number
