"""``python -m core solve --tables DIR (--budget F | --budget-ms MS)``: the DP's answer.

The answer is read off the exact frontier (``core.dp.solve``), the same one the app's Budget page
picks from; ``--bin-ms`` selects the paper's binned DP instead, as a cross-check.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from core.dp import DEFAULT_OBJECTIVE, DEFAULT_SEARCH, OBJECTIVES, SEARCHES, list_methods, solve
from core.errors import LayerMergeError
from core.solution import save_solution
from core.speed import table_warning
from core.tables import read_tables

__all__ = ["add_parser", "run", "format_text"]

# metric -> (its name, the unit of its value, what the additive objective sums, that sum's unit)
_METRIC_TEXT = {
    "accuracy": ("accuracy", "%", "ΣΔacc", " points"),
    "epsilon_loss": ("ε-loss", "", "-ΣΔε-loss", ""),
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "solve",
        help="pick the best segments and kept convs under a latency budget",
        description="Solve the LayerMerge DP (or a baseline) on a table directory: the exact "
        "optimum within the budget, read off the whole speed-accuracy frontier.",
    )
    parser.add_argument("--tables", required=True, metavar="DIR", help="table directory")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget",
        type=float,
        metavar="FRACTION",
        help="budget as a fraction of the keep-everything table latency (e.g. 0.5; 1.0 admits "
        "the original network)",
    )
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="budget in milliseconds")
    parser.add_argument(
        "--method",
        default="layermerge",
        help=f"one of {', '.join(list_methods())} (default: layermerge)",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=DEFAULT_OBJECTIVE,
        help="additive: maximise ΣΔaccuracy (−ΣΔε-loss for a diffusion UNet), so predicted "
        "accuracy = original + ΣΔ on one scale for every method; paper: maximise Σ exp(Δ/100) "
        f"as the LayerMerge code does (default: {DEFAULT_OBJECTIVE})",
    )
    parser.add_argument(
        "--search",
        choices=SEARCHES,
        default=DEFAULT_SEARCH,
        help="LayerMerge's search space: extended adds the baselines' moves (removing a single "
        "conv, Kim23's split merges), so it scores at least as much as either; paper keeps "
        f"the paper's space (default: {DEFAULT_SEARCH}; the baselines ignore it)",
    )
    parser.add_argument(
        "--bin-ms",
        type=float,
        default=None,
        metavar="MS",
        help="solve with the paper's binned DP at this latency bin instead of the exact "
        "frontier (latencies round up to bins, so it answers at most as well; a cross-check)",
    )
    parser.add_argument("--out", default=None, metavar="FILE", help="write the solution JSON here")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    _require_positive("--budget", args.budget)
    _require_positive("--budget-ms", args.budget_ms)
    _require_positive("--bin-ms", args.bin_ms)
    tables = read_tables(args.tables)
    solution = solve(
        tables,
        budget_ms=args.budget_ms,
        budget_fraction=args.budget,
        method=args.method,
        objective=args.objective,
        search=args.search,
        bin_ms=args.bin_ms,
    )
    if args.out:
        save_solution(solution, args.out)
    result = solution.to_dict()
    result["original_table_latency_ms"] = tables.original_latency_ms
    result["out"] = args.out
    if warning := table_warning(tables.meta, args.tables):
        print(warning, file=sys.stderr)  # a speed prediction from this table may be far off
    return result


def format_text(result: dict[str, Any]) -> str:
    original = result["original_table_latency_ms"]
    share = result["latency_ms"] / original if original else float("nan")
    kept = set(result["kept_convs"])
    pruned = [
        p for s in result["segments"] for p in range(s["start"] + 1, s["end"] + 1) if p not in kept
    ]
    extra = result.get("extra", {})
    how = f"binned DP, {extra['bin_ms']:.4g} ms bins" if "bin_ms" in extra else "exact"
    search = f", {extra['search']} search" if result["method"] == "layermerge" else ""
    lines = [
        f"{result['method']} ({how}{search}): budget {result['budget_ms']:.3f} ms -> predicted "
        f"{result['latency_ms']:.3f} ms ({share:.0%} of {original:.3f} ms)",
        _objective_line(result),
        f"  {len(result['segments'])} merged convs; kept activations at "
        f"{result['kept_activations']}",
        f"  pruned convs: {pruned or 'none'}",
    ]
    for s in result["segments"]:
        lines.append(
            f"  ({s['start']:>3},{s['end']:>3}]  kernel {s['kernel']:>2}"
            f"{' dw' if s['depthwise'] else '   '} stride {s['stride']}  keeps {s['kept_convs']}"
            f"  {s['latency_ms']:.4f} ms  score {s['importance']:+.4f}"
        )
    if result.get("out"):
        lines.append(f"solution written to {result['out']}")
    return "\n".join(lines)


def _objective_line(result: dict[str, Any]) -> str:
    """The objective's value and, where the tables record it, the metric it predicts."""
    metric = result.get("metric", "")
    name, unit, summed, points = _METRIC_TEXT.get(metric, ("", "", "ΣΔ", ""))
    if result["objective"] == "paper":
        line = f"  objective (paper) Σ exp(Δ/100) = {result['importance']:.4f}"
    else:
        line = f"  objective (additive) {summed} = {result['importance']:+.4f}{points}"
    predicted = result.get(f"predicted_{metric}") if metric else None
    if predicted is None:
        return line
    line += f"; predicted {name} {predicted:.4g}{unit}"
    original = result.get(f"original_{metric}")
    if original is not None:
        line += f" (original {original:.4g}{unit})"
    return line


def _require_positive(flag: str, value: float | None) -> None:
    """Bad numbers are refused here in one line, naming the flag (argparse accepts inf, nan)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise LayerMergeError(f"{flag} must be a finite number > 0, got {value}")
