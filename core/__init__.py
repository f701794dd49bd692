"""LayerMerge Studio core: pure functions from a model to a compressed, merged network.

The flow (DESIGN.md): ``trace_chain`` -> ``find_segments`` -> ``measure_latency`` and
``estimate_importance`` -> ``solve`` -> ``merge`` -> ``export``; ``compress`` runs surgery, the DP
and merging in one call. Names are imported lazily so ``python -m core --help`` stays quick.

Example:
    >>> from core import compress, read_tables, build_model  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "trace_chain",
    "find_segments",
    "measure_latency",
    "estimate_importance",
    "solve",
    "frontier",
    "merge",
    "compress",
    "export",
    "build_model",
    "read_tables",
]

_HOMES = {
    "trace_chain": "core.chain",
    "find_segments": "core.segments",
    "measure_latency": "core.latency",
    "estimate_importance": "core.importance",
    "solve": "core.dp",
    "frontier": "core.dp",
    "merge": "core.merge",
    "compress": "core.flow",
    "build_model": "core.models",
    "read_tables": "core.tables",
}


def __getattr__(name: str) -> Any:
    if name == "export":
        return importlib.import_module("core.export")
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
