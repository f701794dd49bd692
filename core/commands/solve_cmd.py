"""``python -m core solve --tables DIR (--budget F | --budget-ms MS)``: the DP's answer."""

from __future__ import annotations

import argparse
from typing import Any

from core.dp import list_methods, solve
from core.errors import LayerMergeError
from core.solution import save_solution
from core.tables import read_tables

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "solve",
        help="pick the best segments and kept convs under a latency budget",
        description="Solve the LayerMerge DP (or a baseline) on a table directory.",
    )
    parser.add_argument("--tables", required=True, metavar="DIR", help="table directory")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget",
        type=float,
        metavar="FRACTION",
        help="budget as a fraction of the original network's table latency (e.g. 0.5)",
    )
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="budget in milliseconds")
    parser.add_argument(
        "--method",
        default="layermerge",
        help=f"one of {', '.join(list_methods())} (default: layermerge)",
    )
    parser.add_argument(
        "--bin-ms", type=float, default=None, help="latency bin of the DP (default: automatic)"
    )
    parser.add_argument("--out", default=None, metavar="FILE", help="write the solution JSON here")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.budget is not None and not 0 < args.budget:
        raise LayerMergeError(f"--budget must be a positive fraction, got {args.budget}")
    tables = read_tables(args.tables)
    solution = solve(
        tables,
        budget_ms=args.budget_ms,
        budget_fraction=args.budget,
        method=args.method,
        bin_ms=args.bin_ms,
    )
    if args.out:
        save_solution(solution, args.out)
    result = solution.to_dict()
    result["original_table_latency_ms"] = tables.original_latency_ms
    result["out"] = args.out
    return result


def format_text(result: dict[str, Any]) -> str:
    original = result["original_table_latency_ms"]
    share = result["latency_ms"] / original if original else float("nan")
    kept = set(result["kept_convs"])
    pruned = [
        p for s in result["segments"] for p in range(s["start"] + 1, s["end"] + 1) if p not in kept
    ]
    lines = [
        f"{result['method']}: budget {result['budget_ms']:.3f} ms -> predicted "
        f"{result['latency_ms']:.3f} ms ({share:.0%} of {original:.3f} ms), "
        f"importance {result['importance']:.4f}",
        f"  {len(result['segments'])} merged convs; kept activations at "
        f"{result['kept_activations']}",
        f"  pruned convs: {pruned or 'none'}",
    ]
    for s in result["segments"]:
        lines.append(
            f"  ({s['start']:>3},{s['end']:>3}]  kernel {s['kernel']:>2}"
            f"{' dw' if s['depthwise'] else '   '} stride {s['stride']}  keeps {s['kept_convs']}"
            f"  {s['latency_ms']:.4f} ms"
        )
    if result.get("out"):
        lines.append(f"solution written to {result['out']}")
    return "\n".join(lines)
