"""How the pages write numbers: thousands separators, sensible digits, and words for the missing.

Every number a person reads goes through one of these, so the same quantity reads the same on
every page (175,258 parameters; 98.33%; 35.35 ms; 1.39×) and nothing shows a literal "None".
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "NOT_MEASURED",
    "count",
    "ms",
    "percent",
    "speedup",
    "decimal",
    "duration",
    "cell",
]

NOT_MEASURED = "not measured"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def decimal(value: float | None, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits and thousands separators (1,235; 59.21)."""
    if _missing(value):
        return NOT_MEASURED
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def count(value: int | float | None) -> str:
    """A whole count with thousands separators: 175,258."""
    return NOT_MEASURED if _missing(value) else f"{round(value):,}"


def ms(value: float | None) -> str:
    """Milliseconds with four significant digits: 35.35 ms, 1,083 ms."""
    return NOT_MEASURED if _missing(value) else f"{decimal(value)} ms"


def percent(value: float | None) -> str:
    """An accuracy in percent, two decimals: 98.33%."""
    return NOT_MEASURED if _missing(value) else f"{value:.2f}%"


def speedup(value: float | None) -> str:
    """A speed-up ratio: 1.39×."""
    return NOT_MEASURED if _missing(value) else f"{value:.2f}×"


def duration(seconds: float | None) -> str:
    """A wait in words, rounded so that it does not jitter: 45 s, 3 min 20 s, 1 h 5 min."""
    if _missing(seconds):
        return "unknown"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{max(1, round(seconds / 5) * 5 if seconds >= 10 else round(seconds))} s"
    if seconds < 600:
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 300) * 5, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def cell(value: Any, kind: str = "decimal") -> str:
    """A table cell as text (``kind``: decimal, count, ms, percent, speedup); never "None"."""
    writers = {"decimal": decimal, "count": count, "ms": ms, "percent": percent, "speedup": speedup}
    return writers[kind](value)
