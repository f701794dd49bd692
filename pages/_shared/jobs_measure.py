"""Measurements a page asks for while the user waits: the merged network timed, its accuracy tested.

These run in the script thread behind a spinner (seconds on the demo models). The timing is core's
measure workflow (:func:`core.workflows.measure.measure`), the one ``python -m core bench`` runs,
for every family: the family names the fair baseline (a classifier's original with BN folded, a
UNet's module as built) and what one timed call is (a UNet: one denoising step); original and
merged alternate in one call, at the tables' batch and thread count, beside the one speed
model's prediction (:func:`core.speed.predict_speed` on the tables' meta.json), so the numbers
compare side by side. Nothing here asks which family a model is.
"""

from __future__ import annotations

from typing import Any

from core.solution import Solution
from core.workflows.measure import Measurement
from core.workflows.measure import measure as measure_workflow
from core.workflows.model import LoadedModel
from pages._shared import caches
from pages._shared.tables_in_use import TablesInUse

__all__ = ["measure", "ROUNDS"]

ROUNDS = 7  # alternating rounds per network: seconds on the demo models, medians that hold


def measure(solution: Solution, used: TablesInUse) -> dict[str, Any]:
    """The merged network of ``solution`` timed beside the family's baseline, on torch eager.

    Returns what the Budget page and the export view show: ``original_ms``, ``merged_ms``,
    ``measured_speedup``, ``predicted_speedup`` (the speed model on ``used``'s meta.json),
    ``predicted_merged_ms`` and ``table_network_ms`` (the measured original the prediction
    stands on, None without one), ``original_depth``/``merged_depth`` (main-path convs),
    ``original_convs``/``merged_convs`` (conv layers) and ``how`` (one line: the protocol).

    Raises:
        TableMismatchError: the tables in use belong to another network.
    """
    model = LoadedModel(caches.family(), caches.bundle(), caches.traced())
    done = measure_workflow(
        model,
        solution,
        compressed=caches.merged(solution),  # shared: the workflow only reads it
        backends=("torch",),
        rounds=ROUNDS,
        tables_meta=used.tables.meta,
    )
    return measurement_record(done, network=model.family.table_notes.network)


def measurement_record(done: Measurement, *, network: str = "network") -> dict[str, Any]:
    """The page's record of a torch measurement (see :func:`measure`), JSON-able."""
    timed = done.comparisons[0]
    predicted = done.predicted or {}
    how = (
        f"one {network} forward at batch {timed.batch}, {timed.threads} thread(s), torch eager, "
        f"median of {timed.rounds} alternating rounds; baseline: {done.baseline}"
    )
    if done.settings_note:
        how += f"; {done.settings_note}"
    return {
        "original_ms": timed.original_ms,
        "merged_ms": timed.compressed_ms,
        "measured_speedup": timed.speedup,
        "predicted_speedup": predicted.get("speedup"),
        "predicted_merged_ms": predicted.get("predicted_ms"),
        "table_network_ms": predicted.get("network_ms"),
        "original_depth": done.original["depth"],
        "merged_depth": done.compressed["depth"],
        "original_convs": done.original["conv_count"],
        "merged_convs": done.compressed["conv_count"],
        "how": how,
    }
