"""Measurements a page asks for while the user waits: the merged network timed, its accuracy tested.

These run in the script thread behind a spinner (seconds on the demo models), and each is the single
place to swap for core's measure or evaluate workflow. The speed protocol is core's
(``core.benchmark.measure_side_by_side``): original and merged alternate in one call, at the
tables' batch and thread count, so the two numbers and the table's prediction compare side by side.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.benchmark import folded_original, measure_side_by_side, predicted_speedup
from core.families.unet.export import count_convs
from core.families.unet.latency import UNetForward
from core.finetune import evaluate
from core.merge import merge_model
from core.solution import Solution
from pages._shared import caches
from pages._shared.tables_in_use import TablesInUse

__all__ = ["measure_classifier", "measure_unet", "evaluate_accuracy"]


def measure_classifier(solution: Solution, used: TablesInUse) -> dict[str, Any]:
    """A classifier's merged network of ``solution`` timed beside the original (BN folded)."""
    model, traced = caches.bundle().model, caches.chain()
    merged = merge_model(model, traced, solution)  # a new module: the shared model is untouched
    batch, threads, network_ms = _settings(used)
    result = measure_side_by_side(
        folded_original(model, traced),
        merged,
        input_shape=traced.input_shape,
        batch=batch,
        threads=threads,
        rounds=9,
    )
    return {
        "original_ms": result.original_ms,
        "merged_ms": result.compressed_ms,
        "measured_speedup": result.speedup,
        "predicted_speedup": predicted_speedup(
            solution.latency_ms, used.original_ms, solution=solution, meta=used.tables.meta
        ),
        "original_depth": len(traced.convs),
        "merged_depth": merged.depth(),
        "how": (
            f"torch eager, batch {result.batch}, {result.threads} thread(s), median of "
            f"{result.rounds} alternating rounds; baseline with BN folded"
        ),
    }


def measure_unet(solution: Solution, used: TablesInUse) -> dict[str, Any]:
    """One denoising step of the original and the merged UNet of ``solution``, side by side."""
    original = caches.bundle().model
    merged = caches.merged(solution)
    batch, threads, network_ms = _settings(used)
    result = measure_side_by_side(
        UNetForward(original),
        UNetForward(merged),
        input_shape=caches.chain().input_shape,
        batch=batch,
        threads=threads,
        rounds=7,
    )
    speedup = predicted_speedup(
        solution.latency_ms, used.original_ms, solution=solution, meta=used.tables.meta
    )
    return {
        "original_ms": result.original_ms,
        "merged_ms": result.compressed_ms,
        "measured_speedup": result.speedup,
        "predicted_speedup": speedup,
        "predicted_merged_ms": network_ms / speedup if network_ms else None,
        "table_network_ms": network_ms,
        "original_convs": count_convs(original),
        "merged_convs": count_convs(merged),
        "how": (
            f"one UNet forward (a denoising step) at batch {result.batch}, {result.threads} "
            f"thread(s), torch eager, median of {result.rounds} alternating rounds"
        ),
    }


def evaluate_accuracy(network: nn.Module) -> dict[str, float]:
    """Test accuracy (%) of the original classifier and of ``network`` on the test split."""
    test = caches.data().test
    return {
        "before": evaluate(caches.bundle().model, test).accuracy,
        "after": evaluate(network, test).accuracy,
    }


def _settings(used: TablesInUse) -> tuple[int, int | None, float | None]:
    """The tables' batch, thread count and whole-network latency (what a fair timing reuses)."""
    meta = used.tables.meta
    threads = meta.get("threads")
    network_ms = meta.get("network_latency_ms")
    return (
        int(meta.get("batch") or 1),
        int(threads) if threads else None,
        float(network_ms) if network_ms else None,
    )
