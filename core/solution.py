"""The solution file: which segments a method chose, with their kept convs and kept activations.

A solution is what the DP hands to surgery, merging, finetuning and export. Its JSON form is the
contract of DESIGN.md ("A solution file is JSON ...").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidSolutionError

__all__ = ["SolutionSegment", "Solution", "load_solution", "save_solution"]

SOLUTION_VERSION = 1


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
    activation-free span into several separately executed convs, whose inner ends are not in it.
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
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Solution:
        if not isinstance(data, dict):
            raise InvalidSolutionError(
                f"a solution must be a JSON object, got {type(data).__name__}"
            )
        try:
            segments = tuple(SolutionSegment.from_dict(s) for s in data["segments"])
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSolutionError(
                f"solution is malformed: missing or bad field {exc}"
            ) from exc


def save_solution(solution: Solution, path: str | Path) -> None:
    """Write ``solution`` as JSON (atomically, so a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(solution.to_dict(), indent=2))
    tmp.replace(path)


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
