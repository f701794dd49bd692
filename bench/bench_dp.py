"""Benchmark of core/dp.py on a MobileNetV2-sized synthetic table, against plain Python loops.

The table follows MobileNetV2-1.0's chain as LAYERMERGE.md §1.1-1.3 lays it out: 50 positions,
breaks {5, 11, 20, 41}, ten residual blocks, 13 prunable depthwise convs; that gives 171 valid
segments and 391 kernel options, plus 13 removal entries. Each conv alone costs 0.3-1.3 ms, scaled so
that keeping everything (the length-1 entries, the base of the budget fraction) costs exactly
40 ms; a merged conv costs about its largest member, growing with the kernel area (0.05-2 ms). Δacc
is random but shaped like real tables: an unchanged conv 0, removed activations and pruned convs
cost accuracy; importance is exp(Δacc / 100).

Side by side in one run: ``core.dp.solve`` (the exact answer every entry point gives: the frontier,
then a binary search) and ``core.dp.solve_binned`` (numpy, vectorised over the budget axis) against
a dict-and-loop version of the same binned recurrence written here, and ``core.dp.frontier``
against a list-and-loop version of the same Pareto merge. Both pairs are checked to agree before
timing, on the default objective (additive) and search space (extended).

Run: ``.venv/bin/python bench/bench_dp.py``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import dp  # noqa: E402
from core.tables import TableEntry, Tables  # noqa: E402

BREAKS = {5, 11, 20, 41}
RESIDUAL_BLOCKS = (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)  # block b holds convs 3b, 3b+1, 3b+2
PRUNABLE = (1, 7, 13, 16, 22, 25, 28, 31, 34, 37, 43, 46, 49)  # stride-1 depthwise convs
LAST = 50
KEEP_EVERYTHING_MS = 40.0  # the base of --budget-fraction
COMMAND = ".venv/bin/python bench/bench_dp.py"


def mobilenet_v2_like_tables(seed: int = 0) -> Tables:
    """A synthetic MobileNetV2-sized table (see the module docstring); keep-everything is 40 ms."""
    rng = random.Random(seed)
    skips = [(3 * b - 1, 3 * b + 2) for b in RESIDUAL_BLOCKS]
    kernel = {p: 3 if (p in PRUNABLE or p % 3 == 1) else 1 for p in range(1, LAST + 1)}
    single = {p: rng.uniform(0.3, 1.2) for p in range(1, LAST + 1)}
    scale = KEEP_EVERYTHING_MS / sum(single.values())
    single = {p: v * scale for p, v in single.items()}  # each conv alone, as its length-1 entry
    entries: list[TableEntry] = []
    for end in range(1, LAST + 1):
        for start in range(end):
            if any(start < b < end for b in BREAKS) or any(
                start < s < end < t or s < start < t < end for s, t in skips
            ):
                continue
            convs = list(range(start + 1, end + 1))
            prunable = [p for p in convs if p in PRUNABLE]
            for pruned in range(0, min(len(prunable), len(convs) - 1) + 1):
                kept = [p for p in convs if p not in prunable[:pruned]]
                size = 1 + sum(kernel[p] - 1 for p in kept)
                if end - start == 1:
                    latency = single[end]  # the conv as it is: keep-everything sums to 40 ms
                else:
                    # one merged conv costs about its largest member, growing with the kernel area
                    largest = max(kept, key=lambda p: single[p])
                    growth = (0.55 + 0.02 * size * size) / (0.55 + 0.02 * kernel[largest] ** 2)
                    latency = single[largest] * growth * rng.uniform(0.9, 1.1)
                    latency = min(2.0, max(0.05, latency))
                delta_acc = -(0.4 * (end - start - 1) + 0.6 * pruned) * rng.uniform(0.5, 1.5)
                entries.append(
                    TableEntry(
                        start,
                        end,
                        size,
                        all(kernel[p] == 3 for p in kept),
                        1,
                        tuple(kept),
                        latency_ms=latency,
                        importance=math.exp(delta_acc / 100),
                        delta_acc=delta_acc,
                    )
                )
    for p in PRUNABLE:
        delta_acc = -rng.uniform(0.2, 2.0)
        entries.append(
            TableEntry(
                p - 1,
                p,
                0,
                True,
                1,
                (),
                latency_ms=0.0,
                importance=math.exp(delta_acc / 100),
                delta_acc=delta_acc,
            )
        )
    tables = Tables(
        entries=tuple(entries),
        meta={"original_table_latency_ms": KEEP_EVERYTHING_MS, "importance_base_accuracy": 72.0},
        digest="bench",
    )
    if abs(tables.original_latency_ms - KEEP_EVERYTHING_MS) > 1e-9:
        raise SystemExit(f"keep-everything is {tables.original_latency_ms} ms, not 40 ms")
    return tables


def python_solve(items: list[dp.Candidate], last: int, budget_ms: float, bin_ms: float) -> float:
    """The same binned recurrence in plain Python: dicts of lists and loops over every bin."""
    budget_bins = math.floor(budget_ms / bin_ms + 1e-9)
    by_end: dict[int, list[dp.Candidate]] = {}
    for item in items:
        by_end.setdefault(item.end, []).append(item)
    value: dict[int, list[float]] = {0: [0.0] * (budget_bins + 1)}
    pointer: dict[int, list[dp.Candidate | None]] = {0: [None] * (budget_bins + 1)}
    for j in range(1, last + 1):
        row = [-math.inf] * (budget_bins + 1)
        row_pointer: list[dp.Candidate | None] = [None] * (budget_bins + 1)
        for item in by_end.get(j, []):
            tau = max(0, math.ceil(item.latency_ms / bin_ms - 1e-9))
            source = value[item.start]
            for t in range(tau, budget_bins + 1):
                candidate = source[t - tau] + item.importance
                if candidate > row[t]:
                    row[t] = candidate
                    row_pointer[t] = item
        value[j] = row
        pointer[j] = row_pointer
    return value[last][budget_bins]


def python_frontier(items: list[dp.Candidate], last: int) -> list[tuple[float, float]]:
    """The same exact Pareto merge in plain Python: lists of tuples and loops."""
    fronts: dict[int, list[tuple[float, float, int]]] = {0: [(0.0, 0.0, -1)]}
    by_end: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        by_end.setdefault(item.end, []).append(index)
    for j in range(1, last + 1):
        merged = []
        for index in by_end.get(j, []):
            item = items[index]
            for lat, imp, _ in fronts.get(item.start, []):
                merged.append((lat + item.latency_ms, imp + item.importance, index))
        merged.sort(key=lambda p: (p[0], -p[1]))
        front: list[tuple[float, float, int]] = []
        best = -math.inf
        for point in merged:
            if point[1] > best + dp.TIE_TOLERANCE:
                front.append(point)
                best = point[1]
        fronts[j] = front
    return [(lat, imp) for lat, imp, _ in fronts[last]]


def median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--budget-fraction", type=float, default=0.5)
    parser.add_argument("--bin-ms", type=float, default=0.1)
    args = parser.parse_args()

    tables = mobilenet_v2_like_tables()
    budget = args.budget_fraction * tables.original_latency_ms
    items = dp.candidates(tables)
    binned = dp.solve_binned(tables, budget_ms=budget, bin_ms=args.bin_ms)
    reference = python_solve(items, tables.last_position, budget, args.bin_ms)
    if abs(binned.importance - reference) > 1e-9:
        raise SystemExit(f"numpy and Python DP disagree: {binned.importance} vs {reference}")
    points = dp.frontier(tables)
    reference_front = python_frontier(items, tables.last_position)
    if len(points) != len(reference_front) or any(
        abs(p.latency_ms - lat) > 1e-9 or abs(p.importance - imp) > 1e-9
        for p, (lat, imp) in zip(points, reference_front, strict=True)
    ):
        raise SystemExit("numpy and Python frontiers disagree")
    exact = dp.solve(tables, budget_ms=budget)
    if exact.importance < binned.importance - 1e-9 or exact.latency_ms > budget:
        raise SystemExit("the exact solve lost to the binned DP, or exceeded the budget")

    n_rep = args.repeats
    rows: list[tuple[str, float, float | None]] = []
    rows.append(
        (
            "solve layermerge (exact), first call on a table: frontier + pick",
            median_ms(lambda: dp.solve(replace(tables), budget_ms=budget), n_rep),
            None,
        )
    )
    rows.append(
        (
            "solve layermerge (exact), frontier cached",
            median_ms(lambda: dp.solve(tables, budget_ms=budget), n_rep),
            None,
        )
    )
    rows.append(
        (
            f"solve_binned layermerge, {args.bin_ms} ms bins",
            median_ms(lambda: dp.solve_binned(tables, budget_ms=budget, bin_ms=args.bin_ms), n_rep),
            median_ms(
                lambda: python_solve(items, tables.last_position, budget, args.bin_ms),
                max(3, n_rep // 4),
            ),
        )
    )
    rows.append(
        (
            "solve_binned layermerge, first call on a table (builds candidates)",
            median_ms(
                lambda: dp.solve_binned(replace(tables), budget_ms=budget, bin_ms=args.bin_ms),
                n_rep,
            ),
            None,
        )
    )
    rows.append(
        (
            "solve_binned layermerge, default bins (budget / 2000)",
            median_ms(lambda: dp.solve_binned(tables, budget_ms=budget), n_rep),
            median_ms(
                lambda: python_solve(items, tables.last_position, budget, budget / 2000),
                max(3, n_rep // 4),
            ),
        )
    )
    rows.append(
        (
            "frontier layermerge (exact; computed on a fresh table each time)",
            median_ms(lambda: dp.frontier(replace(tables)), n_rep),
            median_ms(lambda: python_frontier(items, tables.last_position), max(3, n_rep // 4)),
        )
    )
    for method in ("depth", "layer"):
        # a baseline's own budget: the midpoint of its frontier (layer-only cannot reach 50% here)
        own = dp.frontier(tables, method=method)
        at = (own[0].latency_ms + own[-1].latency_ms) / 2
        share = f"{at / tables.original_latency_ms:.0%}"
        rows.append(
            (
                f"solve {method} (exact) at {share}, first call on a table",
                median_ms(
                    lambda m=method, b=at: dp.solve(replace(tables), budget_ms=b, method=m), n_rep
                ),
                None,
            )
        )
        rows.append(
            (
                f"solve_binned {method} at {share}, {args.bin_ms} ms bins",
                median_ms(
                    lambda m=method, b=at: dp.solve_binned(
                        tables, budget_ms=b, bin_ms=args.bin_ms, method=m
                    ),
                    n_rep,
                ),
                None,
            )
        )
    rng = np.random.default_rng(0)
    budgets = rng.uniform(points[0].latency_ms, points[-1].latency_ms, size=200)
    pick_total = median_ms(lambda: [dp.pick(points, float(b)) for b in budgets], n_rep)
    rows.append(("pick (one slider move, frontier given)", pick_total / len(budgets), None))
    rows.append(
        (
            "compare_methods, 3 frontiers + 10 budgets (fresh table)",
            median_ms(
                lambda: dp.compare_methods(replace(tables), np.linspace(10, 40, 10).tolist()),
                n_rep,
            ),
            None,
        )
    )

    n_removal = sum(e.is_removal for e in tables.entries)
    print(f"command: {' '.join([COMMAND, *sys.argv[1:]])}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}; medians of {n_rep} runs "
        f"({max(3, n_rep // 4)} for plain Python)"
    )
    print(
        f"table: {tables.last_position} positions, {len(tables.entries) - n_removal} entries "
        f"+ {n_removal} removals, original {tables.original_latency_ms:.1f} ms; budget "
        f"{budget:.1f} ms ({args.budget_fraction:.0%}); frontier: {len(points)} points "
        f"({len(dp.frontier(tables, method='depth'))} depth, "
        f"{len(dp.frontier(tables, method='layer'))} layer)"
    )
    fine = dp.solve_binned(tables, budget_ms=budget)
    print(
        f"at the {budget:.1f} ms budget (additive objective, ΣΔacc): the exact solve gives "
        f"{exact.importance:.4f} at {exact.latency_ms:.3f} ms; the binned DP with "
        f"{args.bin_ms} ms bins {binned.importance:.4f} at {binned.latency_ms:.3f} ms, with the "
        f"default {fine.extra['bin_ms']:.4g} ms bins {fine.importance:.4f} at "
        f"{fine.latency_ms:.3f} ms"
    )
    print()
    print("| step | core.dp (median ms) | plain Python (median ms) | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, fast, slow in rows:
        slow_text = f"{slow:.2f}" if slow is not None else "—"
        ratio = f"{slow / fast:.1f}x" if slow is not None else "—"
        print(f"| {name} | {fast:.3f} | {slow_text} | {ratio} |")


if __name__ == "__main__":
    main()
