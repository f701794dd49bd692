"""``python -m core frontier --tables DIR [--measure]``: the speed frontier, predicted and measured.

Lists every method's exact frontier (``core.dp.frontier``) with the speed model's predicted
speed-up of the whole network (``core.speed``); with ``--measure`` it builds and times the merged
network of every point (or ``--points N`` per method) against the original, alternating, with the
table's own settings (``core.workflows.frontier``), caches the results beside the tables
(``frontier_measured.json``), and shows predicted and measured side by side. The model is the one
meta.json names; ``--weights`` gives its weights when they were a file of yours (speed does not
depend on their values, but the merge needs a network).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from core.benchmark import TimingSettings
from core.commands.common import progress_printer, require_positive
from core.dp import DEFAULT_OBJECTIVE, DEFAULT_SEARCH, OBJECTIVES, SEARCHES, list_methods
from core.tables import read_meta
from core.workflows.frontier import (
    DEFAULT_PASSES,
    DEFAULT_ROUNDS,
    frontier_rows,
    measure_frontier,
)
from core.workflows.model import load_model

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "frontier",
        help="list the speed frontier with predicted speed-ups; --measure times every point",
        description="List each method's exact speed-accuracy frontier with the predicted "
        "speed-up of the whole network. With --measure, build the merged network of every "
        "point (or --points N per method) and time it against the original, alternating, with "
        "the table's own batch, threads and allocator; results are cached beside the tables.",
    )
    parser.add_argument("--tables", required=True, metavar="DIR", help="table directory")
    parser.add_argument(
        "--method",
        nargs="+",
        default=None,
        metavar="M",
        help=f"methods among {', '.join(list_methods())} (default: all)",
    )
    parser.add_argument(
        "--measure", action="store_true", help="time the merged network of every listed point"
    )
    parser.add_argument(
        "--points",
        type=int,
        default=None,
        metavar="N",
        help="only N points per method, spread along the frontier (default: every point)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"alternating timed rounds per point (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=DEFAULT_PASSES,
        help="split each point's rounds into this many passes over all points, minutes apart; "
        f"a point keeps its median pass (default {DEFAULT_PASSES}; 1: each point at once)",
    )
    parser.add_argument("--objective", choices=OBJECTIVES, default=DEFAULT_OBJECTIVE)
    parser.add_argument("--search", choices=SEARCHES, default=DEFAULT_SEARCH)
    parser.add_argument(
        "--weights",
        default=None,
        help="the model's weights file, when the tables were made with weights of yours",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_positive(args, ["points", "rounds", "passes"])
    if args.measure:
        meta = read_meta(args.tables)
        TimingSettings.from_meta(meta).apply()  # a CLI process takes the table's allocator
        model = load_model(
            str(meta.get("model")),
            weights=args.weights,
            width=float(meta.get("width") or 1.0),
            input_size=meta.get("input_size"),
        )
        result = measure_frontier(
            model,
            args.tables,
            methods=args.method,
            points=args.points,
            rounds=args.rounds,
            objective=args.objective,
            search=args.search,
            progress=progress_printer("frontier"),
            passes=args.passes,
        )
    else:
        result = frontier_rows(
            args.tables,
            methods=args.method,
            points=args.points,
            objective=args.objective,
            search=args.search,
        )
    if result.warning:
        print(result.warning, file=sys.stderr)
    return result.to_dict()


def format_text(result: dict[str, Any]) -> str:
    settings = result["settings"]
    network = result["network_ms"]
    base = f"original measured {network:.4g} ms" if network else "no network measured"
    lines = [
        f"frontier of {result['tables']}: batch {settings['batch']}, {settings['threads']} "
        f"thread(s), {settings['allocator']} allocator, {settings['backend']}; {base}",
    ]
    if result["status"] != "listed":
        lines.append(
            f"  measured now: {result['measured_now']} point(s), cached before: "
            f"{result['cached']}, in {result['seconds']:.1f} s ({result['status']})"
            + (
                f"; measured again (original in a slow phase): {result['remeasured']}"
                if result.get("remeasured")
                else ""
            )
        )
    method = None
    for row in result["rows"]:
        if row["method"] != method:
            method = row["method"]
            lines.append(f"{method}:")
            lines.append(
                f"  {'#':>4} {'table ms':>10} {'predicted ms':>13} {'predicted':>10} "
                f"{'measured':>9} {'error':>7}  objective"
            )
        measured = row["measured"]
        predicted_ms = row["predicted_ms"]
        lines.append(
            f"  {row['index']:>4} {row['latency_ms']:>10.4g} "
            f"{_number(predicted_ms, '{:>13.4g}', 13)} "
            f"{_number(row['predicted_speedup'], '{:>9.2f}x', 10)} "
            f"{_number(measured['speedup'] if measured else None, '{:>8.2f}x', 9)} "
            f"{_number(row['error'], '{:>+7.1%}', 7)}  {row['objective']:+.4g}"
        )
    if result["status"] == "listed" and not any(r["measured"] for r in result["rows"]):
        lines.append("  (predictions only: --measure times every point)")
    return "\n".join(lines)


def _number(value: float | None, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return spec.format(value)
