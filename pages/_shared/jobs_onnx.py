"""The Export page's ONNX measurement: the ONNX file it offers timed against the original's export.

Like the other measurements a page asks for while the user waits (:mod:`jobs_measure`), this runs
in the script thread behind a spinner (seconds on the demo models). The work is core's measure
workflow (:func:`core.workflows.measure.measure_onnx`): the same bytes the download button gives
and the original's ONNX export alternate on ONNX Runtime at the tables' batch and thread count,
beside the tables' prediction. ONNX Runtime keeps its own memory arena, so the app's allocator
setting does not bias the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.solution import Solution
from core.workflows.measure import measure_onnx, times_onnx
from core.workflows.model import LoadedModel
from pages._shared import caches
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import TablesInUse

__all__ = ["ROUNDS", "offers_onnx_timing", "measure_onnx_export"]

ROUNDS = 9  # alternating rounds per graph: as the page's torch timing, a few seconds in all


def offers_onnx_timing(which: ModelChoice) -> bool:
    """Whether the model's family exports ONNX graphs that ONNX Runtime timing takes."""
    return times_onnx(_loaded(which))


def measure_onnx_export(
    which: ModelChoice, onnx: Callable[[], bytes], solution: Solution, used: TablesInUse
) -> dict[str, Any]:
    """The ONNX graph ``onnx()`` (what the download holds) timed against the original's export.

    Returns:
        :meth:`core.workflows.measure.OnnxSpeed.to_dict`: the medians, the speed-up, the
        settings, and the tables' prediction with the backend it was made for.
    """
    speed = measure_onnx(
        _loaded(which), onnx(), solution=solution, tables_meta=used.tables.meta, rounds=ROUNDS
    )
    return speed.to_dict()


def _loaded(which: ModelChoice) -> LoadedModel:
    """The session's cached model as the workflows take it (read only, as they promise)."""
    return LoadedModel(
        family=caches.family(which), bundle=caches.bundle(which), traced=caches.traced(which)
    )
